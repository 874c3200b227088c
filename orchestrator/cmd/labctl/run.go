package main

import (
	"context"
	"errors"
	"flag"
	"os"

	"golang.org/x/term"

	"ldtlab/internal/shquote"
	"ldtlab/orchestrator/channel"
)

// The run verb runs one command in a running guest.
func init() {
	register(&command{
		name:    "run",
		args:    "NAME -- CMD [ARGS...]",
		summary: "run a command in a guest; its exit status becomes labctl's",
		run: func(ctx context.Context, fs *flag.FlagSet, args []string) error {
			if len(args) < 2 {
				fs.Usage()
				return errors.New("need a VM name and a command")
			}
			c, err := connect(ctx, args[0])
			if err != nil {
				return err
			}
			defer c.Close()
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
