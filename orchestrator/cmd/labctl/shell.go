package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"ldtlab/orchestrator/lab"
	"ldtlab/orchestrator/vm"
)

// The shell verb opens an interactive shell in a guest, or in a throwaway one.
func init() {
	var sh guestFlags
	var shShares shareFlags
	register(&command{
		name:    "shell",
		args:    "[NAME]",
		summary: "interactive shell in a guest; without NAME, boot a throwaway guest and remove it on exit",
		help: "With a terminal on stdin the shell runs on a pty (raw mode, window size\n" +
			"followed). Without one (`labctl shell x < script`, </dev/null, a pipe) no\n" +
			"pty is allocated, as with ssh: the shell reads its commands from stdin,\n" +
			"its stdout and stderr stay apart, and it ends at stdin's end with the\n" +
			"status of the last command. `labctl shell NAME CMD...` runs CMD the same way.",
		setup: func(fs *flag.FlagSet) {
			sh.register(fs)
			shShares.register(fs)
		},
		run: func(ctx context.Context, fs *flag.FlagSet, args []string) error {
			var code int
			if len(args) >= 1 {
				if len(shShares.shares) > 0 {
					return usagef(fs, "--share is for the throwaway guest (`labctl shell --share DIR`); a running guest's shares are set by `labctl up --share`")
				}
				c, err := connect(ctx, args[0])
				if err != nil {
					return err
				}
				defer c.Close()
				code, err = c.Shell(ctx, os.Stdin, os.Stdout, os.Stderr, remoteCommand(args[1:]))
				if err != nil {
					return err
				}
			} else {
				repo, err := repoRoot()
				if err != nil {
					return err
				}
				if err := shShares.check(&sh); err != nil {
					return err
				}
				o := sh.devOptions(repo, "throwaway")
				o.Shares = shShares.shares
				m, err := lab.Boot(ctx, o)
				if err != nil {
					return err
				}
				defer m.Close()
				c, err := m.Client(ctx)
				if err != nil {
					return err
				}
				// ctx ends on SIGTERM/SIGHUP (^C goes to the guest in raw
				// mode); the deferred Close then removes the guest.
				code, err = c.Shell(ctx, os.Stdin, os.Stdout, os.Stderr, "")
				if err != nil {
					return err
				}
				if reps := m.Reports(); len(reps) > 0 {
					fmt.Fprintf(os.Stderr, "labctl: the kernel reported %d problem(s) during the session:\n", len(reps))
					for _, r := range reps {
						fmt.Fprintf(os.Stderr, "  %s\n", vm.Headline(string(r.Type), r.Title))
					}
				}
			}
			if code != 0 {
				return exitError{code}
			}
			return nil
		},
	})
}
