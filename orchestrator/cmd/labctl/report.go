package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"ldtlab/internal/secfs"
	"ldtlab/internal/termsafe"
	"ldtlab/orchestrator/report"
	"ldtlab/orchestrator/vm"
)

// jsonReport is one kernel report of `labctl report --json`.
type jsonReport struct {
	File      string `json:"file"`
	Type      string `json:"type"`
	Title     string `json:"title"`
	Start     int    `json:"start"` // byte offsets of the report in the file
	End       int    `json:"end"`
	Truncated bool   `json:"truncated"`
	// Corrupted: the stack is unreliable or missing, so the title may
	// name the wrong code ("... in corrupted" when it names none).
	Corrupted bool   `json:"corrupted"`
	Text      string `json:"text"`
}

func init() {
	var asJSON bool
	register(&command{
		name:    "report",
		args:    "FILE...",
		summary: "find kernel reports (WARNING, BUG, oops, KASAN, lockdep, ...) in console logs; exit 1 if there are any (- reads stdin)",
		setup: func(fs *flag.FlagSet) {
			fs.BoolVar(&asJSON, "json", false, "print the reports as a JSON array")
		},
		run: func(ctx context.Context, fs *flag.FlagSet, args []string) error {
			if len(args) == 0 {
				return usagef(fs, "need at least one FILE")
			}
			return reportFiles(os.Stdout, args, asJSON)
		},
	})
}

// reportFiles parses every file and prints its reports. The result is nil
// when no file holds a report, exit status 1 when one does, and an
// InfraError (status 3) when a file could not be read; readable files are
// still reported then.
func reportFiles(w io.Writer, files []string, asJSON bool) error {
	all := []jsonReport{}
	var failed []string
	for _, f := range files {
		data, err := readLog(f)
		if err != nil {
			fmt.Fprintf(os.Stderr, "labctl report: %v\n", err)
			failed = append(failed, f)
			continue
		}
		reps := report.Parse(data)
		for _, r := range reps {
			all = append(all, jsonReport{File: f, Type: string(r.Type), Title: r.Title,
				Start: r.Start, End: r.End, Truncated: r.Truncated, Corrupted: r.Corrupted, Text: r.Text})
		}
		if !asJSON {
			printReports(w, f, reps)
		}
	}
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if err := enc.Encode(all); err != nil {
			return &vm.InfraError{Op: "writing the reports", Err: err}
		}
	}
	if len(failed) > 0 {
		return &vm.InfraError{Op: "reading console logs", Err: fmt.Errorf("cannot read %s", strings.Join(failed, ", "))}
	}
	if len(all) > 0 {
		return exitError{1}
	}
	return nil
}

// maxLogRead bounds a console log labctl reads whole (a guest's console
// rotates at 64 MiB; `tail -c` gives a longer log's end).
const maxLogRead = 1 << 30

// readLog reads a console log: a regular file (a FIFO, /dev/zero or a
// device is refused, not read without end) or stdin, at most maxLogRead
// bytes either way.
func readLog(f string) ([]byte, error) {
	if f == "-" {
		data, err := secfs.ReadLimited(os.Stdin, "stdin", maxLogRead)
		if err != nil {
			return nil, fmt.Errorf("reading stdin: %w", err)
		}
		return data, nil
	}
	fh, err := secfs.OpenRegular(f)
	if err != nil {
		return nil, fmt.Errorf("%w: give a console log, or - for stdin", err)
	}
	defer fh.Close()
	return secfs.ReadAll(fh, maxLogRead)
}

// printReports prints the reports; their titles and text come from the
// guest, so control characters are shown escaped.
func printReports(w io.Writer, file string, reps []report.Report) {
	fmt.Fprintf(w, "=== %s: %d kernel report(s)\n", file, len(reps))
	for i, r := range reps {
		trunc := ""
		if r.Truncated {
			trunc = " (truncated)"
		}
		if r.Corrupted {
			trunc += " (corrupted)"
		}
		fmt.Fprintf(w, "--- report %d: %s%s\n%s\n", i+1, termsafe.Line(r.String()), trunc, termsafe.String(strings.TrimRight(r.Text, "\n")))
	}
}
