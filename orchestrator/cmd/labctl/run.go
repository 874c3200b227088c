package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/term"

	"ldtlab/internal/shquote"
	"ldtlab/orchestrator/channel"
	"ldtlab/orchestrator/lab"
	"ldtlab/orchestrator/vm"
)

// The run verb runs one command in a running guest, or in a throwaway
// guest of the kernel the flags select.
func init() {
	var g guestFlags
	var copies copyList
	var timeout time.Duration
	var failOnReport bool
	register(&command{
		name:    "run",
		args:    "NAME [--] CMD [ARGS...]   or   [flags] [--copy HOST:GUEST]... -- CMD [ARGS...]",
		summary: "run a command in a guest; its exit status becomes labctl's, and kernel reports it caused are printed on stderr. Without NAME: boot a throwaway guest of the kernel the flags select (--patches 0001-0005...), copy files in, run, remove it",
		help: "stdin is passed to the command when it is not a terminal (a file, a pipe:\n" +
			"`labctl run x -- sh -s < script`); from a terminal the command reads an\n" +
			"empty stdin (it never waits for your keyboard) and no pty is allocated:\n" +
			"use `labctl shell NAME [CMD]` for an interactive program.",
		verbatimAfter: 1,
		keepDash:      true,
		setup: func(fs *flag.FlagSet) {
			fs.BoolVar(&failOnReport, "fail-on-report", false, "exit 1 when the kernel printed a report (WARNING, BUG, KASAN...) during the command, whatever the command's status")
			g.register(fs)
			fs.Var(&copies, "copy", "throwaway guest only: copy the host file or directory HOST to GUEST before the command (repeatable; GUEST ending in / (made if missing) or an existing directory: into it)")
			fs.DurationVar(&timeout, "timeout", 0, "throwaway guest only: kill the command after this long (0 = no limit)")
		},
		run: func(ctx context.Context, fs *flag.FlagSet, args []string) error {
			name, cmd, err := splitRunArgs(args)
			if err != nil {
				return usagef(fs, "%v", err)
			}
			if name == "" {
				repo, err := repoRoot()
				if err != nil {
					return err
				}
				o := g.devOptions(repo, "run")
				code, reps, err := throwawayRun(ctx, o, copies, remoteCommand(cmd), timeout, runIO{stdout: os.Stdout, stderr: os.Stderr, stdin: pipedStdin()})
				if err != nil {
					return err
				}
				return runStatus(code, reps, failOnReport)
			}
			var set []string
			fs.Visit(func(f *flag.Flag) {
				if f.Name != "fail-on-report" {
					set = append(set, "--"+f.Name)
				}
			})
			if len(set) > 0 {
				return usageError{fmt.Errorf("%s: only for a throwaway guest (`labctl run [flags] -- CMD`); %s runs its own kernel", strings.Join(set, " "), name)}
			}
			c, err := connect(ctx, name)
			if err != nil {
				return err
			}
			defer c.Close()
			dir, _ := lab.VMDir(name)
			console := filepath.Join(dir, "console.log")
			mark := consoleSize(console)
			opts := channel.RunOptions{Stdout: os.Stdout, Stderr: os.Stderr, Stdin: pipedStdin()}
			code, err := c.Run(ctx, remoteCommand(cmd), opts)
			if err != nil {
				if ctx.Err() != nil {
					return err // interrupted: the remote command was killed
				}
				return explainVM(name, err)
			}
			reps := reportsSince(ctx, console, mark, 5*time.Second)
			if len(reps) > 0 {
				printReports(os.Stderr, "labctl run "+name+": the kernel reported during the command", reps)
			}
			return runStatus(code, len(reps), failOnReport)
		},
	})
}

// runStatus is labctl run's exit: the command's status, or 1 with
// --fail-on-report when the kernel reported something.
func runStatus(code, reports int, failOnReport bool) error {
	if failOnReport && reports > 0 {
		fmt.Fprintf(os.Stderr, "labctl run: --fail-on-report: %d kernel report(s) (command exit status %d)\n", reports, code)
		return exitError{exitGuest}
	}
	if code != 0 {
		return exitError{code}
	}
	return nil
}

// pipedStdin is labctl's stdin when it is not a terminal (a pipe or a
// file goes to the command); nil otherwise.
func pipedStdin() io.Reader {
	if term.IsTerminal(int(os.Stdin.Fd())) {
		return nil
	}
	return os.Stdin
}

// splitRunArgs reads `NAME -- CMD...`, `NAME CMD...` and `-- CMD...` (no
// NAME: a throwaway guest). The arguments carry the separating "--"
// (keepDash) first or right after NAME; any later "--" is the command's.
func splitRunArgs(args []string) (name string, cmd []string, err error) {
	switch {
	case len(args) > 0 && args[0] == "--":
		cmd = args[1:]
	case len(args) > 1 && args[1] == "--":
		name, cmd = args[0], args[2:]
	case len(args) >= 2:
		name, cmd = args[0], args[1:]
	default:
		return "", nil, errors.New("need a VM name and a command (labctl run NAME -- CMD [ARGS...]), or -- CMD for a throwaway guest")
	}
	if len(cmd) == 0 {
		return "", nil, errors.New("no command after --")
	}
	return name, cmd, nil
}

// remoteCommand joins argv for the guest shell. A single argument is a
// shell snippet as typed; several are quoted word by word.
func remoteCommand(args []string) string {
	if len(args) == 1 {
		return args[0]
	}
	return shquote.Join(args)
}

// copyList is the repeatable --copy HOST:GUEST flag.
type copyList []hostCopy

type hostCopy struct{ host, guest string }

func (c *copyList) String() string {
	if c == nil {
		return ""
	}
	var s []string
	for _, x := range *c {
		s = append(s, x.host+":"+x.guest)
	}
	return strings.Join(s, " ")
}

// Set splits at the first colon: HOST may not contain one, GUEST may.
func (c *copyList) Set(v string) error {
	host, guest, ok := strings.Cut(v, ":")
	if !ok || host == "" || guest == "" {
		return fmt.Errorf("%q: want HOST:GUEST (a host path, a colon, a guest path)", v)
	}
	if _, err := os.Stat(host); err != nil {
		return fmt.Errorf("%q: %w", v, err)
	}
	*c = append(*c, hostCopy{host, guest})
	return nil
}

// args gives the flags back, for a reproduction command.
func (c copyList) args() string {
	var s string
	for _, x := range c {
		s += " --copy " + shquote.Word(x.host+":"+x.guest)
	}
	return s
}

type runIO struct {
	stdout, stderr io.Writer
	stdin          io.Reader
}

// throwawayRun boots a guest of o's kernel, copies files in, runs cmd and
// removes the guest. It returns the command's exit status; an error is a
// guest that failed (did not boot, crashed, hung) or a lab failure.
func throwawayRun(ctx context.Context, o lab.Options, copies copyList, cmd string, timeout time.Duration, rio runIO) (code, reports int, err error) {
	m, err := lab.Boot(ctx, o)
	if err != nil {
		return 0, 0, err
	}
	defer m.Close()
	c, err := m.Client(ctx)
	if err != nil {
		return 0, 0, err
	}
	for _, cp := range copies {
		isDir := false
		if strings.HasSuffix(cp.guest, "/") {
			// A throwaway guest has nothing to protect: GUEST/ is made
			// the way the user wrote it, like cp into a new directory.
			code, err := c.Run(ctx, "mkdir -p -- "+shquote.Always(cp.guest), channel.RunOptions{})
			if err != nil {
				return 0, 0, err
			}
			if code != 0 {
				return 0, 0, &vm.InfraError{Op: "creating guest directory " + cp.guest, Err: fmt.Errorf("mkdir exited %d", code)}
			}
		} else {
			code, err := c.Run(ctx, "test -d "+shquote.Always(cp.guest), channel.RunOptions{})
			if err != nil {
				return 0, 0, err
			}
			isDir = code == 0
		}
		if err := c.Upload(ctx, cp.host, copyTarget(cp.guest, isDir, cp.host), channel.CopyOptions{}); err != nil {
			return 0, 0, &vm.InfraError{Op: "copying " + cp.host + " into the guest", Err: err}
		}
	}
	// RunWith's default limit is for the lab's own commands; a user's
	// command runs as long as it needs unless --timeout says otherwise.
	rctx, cancel := context.WithTimeout(ctx, 100*365*24*time.Hour)
	if timeout > 0 {
		cancel()
		rctx, cancel = context.WithTimeout(ctx, timeout)
	}
	defer cancel()
	r, err := m.RunWith(rctx, cmd, channel.RunOptions{Stdout: rio.stdout, Stderr: rio.stderr, Stdin: rio.stdin})
	if err != nil && timeout > 0 && rctx.Err() == context.DeadlineExceeded && ctx.Err() == nil {
		err = &vm.HangError{Phase: "the command (--timeout)", After: timeout}
	}
	reps := m.Reports()
	if len(reps) > 0 {
		printReports(rio.stderr, "labctl run: the kernel reported during boot or the command", reps)
	}
	if err != nil {
		return 0, len(reps), err
	}
	return r.Code, len(reps), nil
}
