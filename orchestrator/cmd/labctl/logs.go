package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"ldtlab/internal/secfs"
	"ldtlab/internal/termsafe"
	"ldtlab/orchestrator/lab"
	"ldtlab/orchestrator/report"
	"ldtlab/orchestrator/vm"
)

// The logs verb prints a guest's console and the kernel reports in it.
func init() {
	var follow, reportsOnly bool
	register(&command{
		name:    "logs",
		args:    "NAME",
		summary: "print a guest's console and the kernel reports found in it",
		setup: func(fs *flag.FlagSet) {
			fs.BoolVar(&follow, "f", false, "keep following the console while the guest runs")
			fs.BoolVar(&reportsOnly, "reports", false, "print only the kernel reports")
		},
		run: func(ctx context.Context, fs *flag.FlagSet, args []string) error {
			if len(args) != 1 {
				return usagef(fs, "need a VM name")
			}
			dir, err := lab.VMDir(args[0])
			if err != nil {
				return err
			}
			path := filepath.Join(dir, "console.log")
			// A regular file of bounded size, never through a symlink.
			data, err := secfs.ReadFile(path, maxLogRead)
			if err != nil {
				return fmt.Errorf("no console log for %q (%v): is it a VM from `labctl ls`?", args[0], err)
			}
			// The guest's text: control characters shown escaped (the
			// file keeps the raw bytes).
			out := termsafe.NewWriter(os.Stdout)
			if !reportsOnly {
				out.Write(data)
				out.Flush()
			}
			if follow {
				return followFile(ctx, path, int64(len(data)), dir)
			}
			reps := report.Parse(data)
			fmt.Printf("\n=== %d kernel report(s) in %s\n", len(reps), path)
			for i, r := range reps {
				fmt.Printf("--- report %d: %s%s\n%s\n", i+1, termsafe.Line(vm.Headline(string(r.Type), r.Title)), map[bool]string{true: " (truncated)"}[r.Truncated], termsafe.String(strings.TrimRight(r.Text, "\n")))
			}
			return nil
		},
	})
}

func followFile(ctx context.Context, path string, off int64, dir string) error {
	f, err := secfs.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	f.Seek(off, io.SeekStart)
	out := termsafe.NewWriter(os.Stdout)
	defer out.Flush()
	buf := make([]byte, 32<<10)
	for {
		n, _ := f.Read(buf)
		if n > 0 {
			out.Write(buf[:n])
			continue
		}
		st, err := lab.ReadState(dir)
		if err != nil || !st.Alive() {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
	}
}
