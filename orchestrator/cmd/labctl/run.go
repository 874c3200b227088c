package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/term"

	"ldtlab/internal/shquote"
	"ldtlab/orchestrator/channel"
	"ldtlab/orchestrator/lab"
)

// The run verb runs one command in a running guest.
func init() {
	var failOnReport bool
	register(&command{
		name:    "run",
		args:    "NAME [--] CMD [ARGS...]",
		summary: "run a command in a guest; its exit status becomes labctl's, and kernel reports it caused are printed on stderr",
		help: "stdin is passed to the command when it is not a terminal (a file, a pipe:\n" +
			"`labctl run x -- sh -s < script`); from a terminal the command reads an\n" +
			"empty stdin (it never waits for your keyboard) and no pty is allocated:\n" +
			"use `labctl shell NAME [CMD]` for an interactive program.",
		verbatimAfter: 1,
		setup: func(fs *flag.FlagSet) {
			fs.BoolVar(&failOnReport, "fail-on-report", false, "exit 1 when the kernel printed a report (WARNING, BUG, KASAN...) during the command, whatever the command's status")
		},
		run: func(ctx context.Context, fs *flag.FlagSet, args []string) error {
			if len(args) < 2 {
				return usagef(fs, "need a VM name and a command (labctl run NAME -- CMD [ARGS...])")
			}
			c, err := connect(ctx, args[0])
			if err != nil {
				return err
			}
			defer c.Close()
			dir, _ := lab.VMDir(args[0])
			console := filepath.Join(dir, "console.log")
			mark := consoleSize(console)
			opts := channel.RunOptions{Stdout: os.Stdout, Stderr: os.Stderr}
			if !term.IsTerminal(int(os.Stdin.Fd())) {
				opts.Stdin = os.Stdin
			}
			code, err := c.Run(ctx, remoteCommand(args[1:]), opts)
			if err != nil {
				if ctx.Err() != nil {
					return err // interrupted: the remote command was killed
				}
				return explainVM(args[0], err)
			}
			reps := reportsSince(ctx, console, mark, 5*time.Second)
			if len(reps) > 0 {
				printReports(os.Stderr, "labctl run "+args[0]+": the kernel reported during the command", reps)
			}
			if failOnReport && len(reps) > 0 {
				fmt.Fprintf(os.Stderr, "labctl run: --fail-on-report: %d kernel report(s) (command exit status %d)\n", len(reps), code)
				return exitError{exitGuest}
			}
			if code != 0 {
				return exitError{code}
			}
			return nil
		},
	})
}

// remoteCommand joins argv for the guest shell. A single argument is a
// shell snippet as typed; several are quoted word by word.
func remoteCommand(args []string) string {
	if len(args) == 1 {
		return args[0]
	}
	return shquote.Join(args)
}
