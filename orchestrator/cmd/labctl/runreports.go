package main

import (
	"context"
	"io"
	"os"
	"time"

	"ldtlab/orchestrator/report"
)

// consoleSize is the console log's current length (0 when absent), the
// mark `run` takes before the command.
func consoleSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}

// maxRunConsole bounds what `run` reads of the console written during one
// command: a flood keeps only its newest part.
const maxRunConsole = 8 << 20

// reportsSince returns the kernel reports that began in the console log
// after off. A command that printed nothing to the console costs one stat
// after a short grace (the console reaches the file through the
// supervisor); when a report began, it waits for the console to fall quiet
// (at most settle) so that the report is read whole.
func reportsSince(ctx context.Context, path string, off int64, settle time.Duration) []report.Report {
	sleep := func(d time.Duration) bool {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(d):
			return true
		}
	}
	if consoleSize(path) == off && (!sleep(50*time.Millisecond) || consoleSize(path) == off) {
		return nil
	}
	reps := readReports(path, off)
	if len(reps) == 0 {
		return nil
	}
	// Quiet: no growth for half a second, the stream's own end rule.
	deadline := time.Now().Add(settle)
	last := consoleSize(path)
	for quietSince := time.Now(); time.Since(quietSince) < 500*time.Millisecond && time.Now().Before(deadline); {
		if !sleep(100 * time.Millisecond) {
			break
		}
		if n := consoleSize(path); n != last {
			last, quietSince = n, time.Now()
		}
	}
	return readReports(path, off)
}

func readReports(path string, off int64) []report.Report {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || st.Size() < off {
		return nil // rotated meanwhile: nothing to attribute
	}
	if st.Size()-off > maxRunConsole {
		off = st.Size() - maxRunConsole
	}
	data, err := io.ReadAll(io.NewSectionReader(f, off, st.Size()-off))
	if err != nil {
		return nil
	}
	return report.Parse(data)
}
