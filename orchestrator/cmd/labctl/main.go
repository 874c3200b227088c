// Command labctl is the lab's CLI: build the kernel and image, boot guests
// in the background or throwaway, run commands and shells in them, copy
// files, read their console and kernel reports, and tear them down.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"ldtlab/images/kernel"
	"ldtlab/internal/termsafe"
	"ldtlab/orchestrator/lab"
	"ldtlab/orchestrator/vm"
)

type command struct {
	name    string
	args    string
	summary string
	help    string // more for `labctl COMMAND --help`, after the summary
	run     func(ctx context.Context, fs *flag.FlagSet, args []string) error
	setup   func(fs *flag.FlagSet)
	hidden  bool
	// verbatimAfter > 0: after that many positional arguments the rest is
	// kept verbatim (`labctl run x uname -r` needs no "--").
	verbatimAfter int
	// hangupEnds: SIGHUP is how this verb is normally ended (the proxy,
	// when ssh closes): exit 0 quietly.
	hangupEnds bool
	// keepDash passes "--" on among the arguments, so that run can tell
	// `run NAME -- CMD` from `run -- CMD` (a throwaway guest).
	keepDash bool
}

var commands []*command

func register(c *command) { commands = append(commands, c) }

func usage() {
	fmt.Fprintf(os.Stderr, `labctl — the LDT test lab

Usage: labctl COMMAND [flags] [args]

Commands:
`)
	sorted := append([]*command(nil), commands...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].name < sorted[j].name })
	for _, c := range sorted {
		if !c.hidden {
			fmt.Fprintf(os.Stderr, "  %-11s %s\n", c.name, c.summary)
		}
	}
	fmt.Fprintf(os.Stderr, "\n`labctl COMMAND --help` describes each command.\n")
}

// exitError carries a specific exit status (a guest command's).
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// Exit statuses (README): a guest command's own for run/shell; otherwise
// 1 the guest or kernel failed, 2 bad usage, 3 the lab failed, 128+N
// killed by signal N (130 for ^C).
const (
	exitGuest = 1
	exitUsage = 2
	exitLab   = 3
)

// exitStatus maps an error to labctl's exit status.
func exitStatus(err error, sig os.Signal) int {
	var ee exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	if s, ok := sig.(syscall.Signal); ok {
		return 128 + int(s)
	}
	var ue usageError
	var ne *lab.NameError
	var nv *lab.NoVMError
	var se *kernel.SelectionError
	if errors.As(err, &ue) || errors.As(err, &ne) || errors.As(err, &nv) || errors.As(err, &se) {
		return exitUsage
	}
	var ie *vm.InfraError
	if errors.As(err, &ie) {
		return exitLab
	}
	return exitGuest
}

func main() {
	if len(os.Args) < 2 || os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "help" {
		usage()
		if len(os.Args) < 2 {
			os.Exit(2)
		}
		return
	}
	name := os.Args[1]
	var cmd *command
	for _, c := range commands {
		if c.name == name {
			cmd = c
		}
	}
	if cmd == nil {
		fmt.Fprintf(os.Stderr, "labctl: unknown command %q\n\n", name)
		usage()
		os.Exit(2)
	}
	fs := flag.NewFlagSet("labctl "+name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: labctl %s [flags] %s\n\n%s\n", name, cmd.args, cmd.summary)
		if cmd.help != "" {
			fmt.Fprintf(os.Stderr, "\n%s\n", cmd.help)
		}
		var n int
		fs.VisitAll(func(*flag.Flag) { n++ })
		if n > 0 {
			fmt.Fprintf(os.Stderr, "\nFlags:\n")
			fs.PrintDefaults()
		}
	}
	if cmd.setup != nil {
		cmd.setup(fs)
	}
	positional, err := parseInterspersed(fs, os.Args[2:], cmd.verbatimAfter, cmd.keepDash)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		os.Exit(2)
	}
	// The first SIGINT/SIGTERM/SIGHUP cancels the command, which cleans up
	// (kills the remote command, stops a throwaway guest) and exits with
	// 128+signal, as a shell would report it.
	ctx, cancel := context.WithCancel(context.Background())
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	var got atomic.Value
	go func() {
		s, ok := <-sigc
		if !ok {
			return
		}
		got.Store(s)
		cancel()
		first := time.Now()
		// A second signal means "now": whatever cleanup is waiting (a
		// guest powering off, a lock) is abandoned. QEMU dies with us
		// (parent-death signal); temp directories are swept next time.
		// The same signal again within a second is one event delivered
		// twice (timeout(1) signals the child, then its process group).
		for s2 := range sigc {
			if s2 == s && time.Since(first) < time.Second {
				continue
			}
			fmt.Fprintf(os.Stderr, "labctl %s: %v again: exiting without cleanup\n", name, s2)
			os.Exit(exitStatus(errors.New("interrupted"), s2))
		}
	}()
	err = cmd.run(ctx, fs, positional)
	signal.Stop(sigc)
	cancel()
	sig, _ := got.Load().(os.Signal)
	if cmd.hangupEnds && sig == syscall.SIGHUP {
		return
	}
	if err == nil && sig == nil {
		return
	}
	if err == nil {
		err = errors.New("interrupted")
	}
	var ee exitError
	var qe quietError
	if !errors.As(err, &ee) && !errors.As(err, &qe) {
		// Errors carry guest text (a report's title, the console's
		// tail): control characters shown escaped.
		msg := termsafe.String(err.Error())
		if sig != nil {
			fmt.Fprintf(os.Stderr, "labctl %s: interrupted by %v (%s)\n", name, sig, msg)
		} else {
			fmt.Fprintf(os.Stderr, "labctl %s: %s\n", name, msg)
		}
	}
	os.Exit(exitStatus(err, sig))
}

// parseInterspersed lets flags follow positional arguments (`labctl up x
// --vanilla`), as users type them. Everything after "--" is positional and
// kept verbatim (the guest command of `labctl run NAME -- CMD`); with
// keepDash the "--" itself is kept too.
func parseInterspersed(fs *flag.FlagSet, args []string, verbatimAfter int, keepDash bool) ([]string, error) {
	var pos []string
	dash := []string{}
	if keepDash {
		dash = []string{"--"}
	}
	for {
		if verbatimAfter > 0 && len(pos) == verbatimAfter {
			if len(args) > 0 && args[0] == "--" {
				args = args[1:]
				pos = append(pos, dash...)
			}
			return append(pos, args...), nil
		}
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(args) > 0 && len(rest) < len(args) && args[len(args)-len(rest)-1] == "--" {
			return append(append(pos, dash...), rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		if rest[0] == "--" {
			return append(append(pos, dash...), rest[1:]...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// repoRoot finds the ldtlab checkout: $LDTLAB_REPO, the working directory
// or one of its parents, or the directory above the labctl binary.
func repoRoot() (string, error) {
	if r := os.Getenv("LDTLAB_REPO"); r != "" {
		return r, nil
	}
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if exe, err := os.Executable(); err == nil {
		starts = append(starts, filepath.Dir(exe))
	}
	for _, s := range starts {
		for d := s; ; d = filepath.Dir(d) {
			if b, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil && strings.HasPrefix(string(b), "module ldtlab\n") {
				return d, nil
			}
			if d == filepath.Dir(d) {
				break
			}
		}
	}
	return "", errors.New("cannot find the ldtlab repository: run labctl inside it or set LDTLAB_REPO")
}
