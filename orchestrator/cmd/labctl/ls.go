package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"ldtlab/orchestrator/lab"
)

// The ls verb lists the guests under the state directory.
func init() {
	register(&command{
		name:    "ls",
		summary: "list guests and their status",
		run: func(ctx context.Context, fs *flag.FlagSet, args []string) error {
			names, err := lab.List()
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			var reasons []string
			fmt.Fprintln(tw, "NAME\tSTATUS\tKERNEL\tVARIANT\tACCEL\tUP\tDIR")
			for _, n := range names {
				dir, _ := lab.VMDir(n)
				st, err := lab.ReadState(dir)
				if err != nil {
					fmt.Fprintf(tw, "%s\tunknown\t-\t-\t-\t-\t%s\n", n, dir)
					continue
				}
				status := st.Status
				if !st.Alive() && (status == lab.StatusRunning || status == lab.StatusBooting) {
					status = "dead"
				}
				if st.Held && st.Alive() {
					// Panicked, kept for gdb (up --gdb): say how to get at it.
					status = "held"
					// A gdb that detaches or continues resumes the CPUs
					// (QEMU's gdbstub does): they spin in panic() again.
					how := "paused where it panicked until gdb resumes it"
					if !st.HeldPaused {
						how = "not paused: spinning in panic()"
					}
					reasons = append(reasons, fmt.Sprintf("%s held for gdb (%s): %s\n  %s\n  labctl dump %s   (its memory)\n  labctl down %s   (ends it)", n, how, firstLine(st.Error), st.GDBCommand(), n, n))
				}
				upFor := "-"
				if st.Alive() {
					upFor = time.Since(st.Started).Round(time.Second).String()
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", n, status, dash(st.Kernel), dash(st.KernelVariant), dash(st.Accel), upFor, dir)
				if st.Error != "" && !st.Alive() {
					reasons = append(reasons, fmt.Sprintf("%s %s: %s", n, status, st.Error))
				}
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			for _, r := range reasons {
				fmt.Println(r)
			}
			return nil
		},
	})
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
