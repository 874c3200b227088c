// Command ldt-check is the in-guest runner of the dirty-tracking checks
// (issue 4). It runs one cell of the scenario catalogue (scenario ×
// tracker) or the incremental checkpoint oracle and prints exactly one
// JSON object on stdout; progress goes to stderr.
//
//	ldt-check -list
//	ldt-check -scenario NAME -tracker NAME [-seed N] [-epochs N]
//	ldt-check -compare -scenario NAME [-seed N] [-epochs N]
//	ldt-check -checkpoint -tracker NAME -pid PID [-rounds N] [-interval D]
//	ldt-check -checkpoint-synthetic -tracker NAME [-rounds N] [-interval D] [-mb N]
//
// Exit status: 0 when the outcome is as expected (for naive: it failed
// exactly as the scenario declares; a skip counts as expected), 1
// otherwise, 2 on bad usage.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"ldtlab/guest/checkpoint"
	"ldtlab/guest/result"
	"ldtlab/guest/scenario"
	"ldtlab/guest/tracker"
)

func main() {
	scenario.MaybeChild()
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ldt-check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	list := fs.Bool("list", false, "list the scenarios with their naive expectation and trackers")
	name := fs.String("scenario", "", "scenario to run")
	trk := fs.String("tracker", "", "tracker: "+strings.Join(tracker.Names(), ", "))
	seed := fs.Uint64("seed", 1, "seed of the scenario's randomness")
	epochs := fs.Int("epochs", 0, "epochs (0: the scenario's default)")
	compare := fs.Bool("compare", false, "run the scenario under ldt and softdirty and print the per-epoch set differences")
	dataDir := fs.String("datadir", scenario.DefaultDataDir, "directory on a block-device file system")
	ckpt := fs.Bool("checkpoint", false, "incremental checkpoint oracle on -pid")
	synth := fs.Bool("checkpoint-synthetic", false, "incremental checkpoint oracle on a synthetic writer this program starts")
	pid := fs.Int("pid", 0, "checkpoint target")
	rounds := fs.Int("rounds", 5, "checkpoint rounds")
	interval := fs.Duration("interval", 500*time.Millisecond, "time the target runs between rounds")
	mb := fs.Int("mb", 32, "synthetic writer's memory, MiB")
	writer := fs.Bool("synthetic-writer", false, "internal: be the synthetic writer")
	quiet := fs.Bool("q", false, "no progress on stderr")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var progress io.Writer = stderr
	if *quiet {
		progress = nil
	}
	usage := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "ldt-check: "+format+"\n", a...)
		return 2
	}
	if fs.NArg() > 0 {
		return usage("unexpected arguments %q", fs.Args())
	}
	// The mutants are accepted too (not listed): the catalogue's proof.
	trackerOK := func() bool { return tracker.Known(*trk) }
	switch {
	case *writer:
		err := checkpoint.RunWriter(*mb, *seed, func() { fmt.Fprintln(stdout, "ready") })
		fmt.Fprintln(stderr, err)
		return 1
	case *list:
		return printJSON(stdout, listing())
	case *ckpt || *synth:
		if !trackerOK() {
			return usage("-checkpoint needs -tracker (%s)", strings.Join(tracker.Names(), ", "))
		}
		o := checkpoint.Options{Tracker: *trk, Pid: *pid, Rounds: *rounds, Interval: *interval, Progress: progress}
		if *synth {
			p, stop, err := startWriter(*mb, *seed)
			if err != nil {
				fmt.Fprintln(stderr, "ldt-check: synthetic writer:", err)
				return 1
			}
			defer stop()
			o.Pid, o.Strict = p, true
		} else if *pid <= 0 {
			return usage("-checkpoint needs -pid")
		}
		res := checkpoint.Run(o)
		if *synth {
			res.Mode = "checkpoint-synthetic"
		}
		if printJSON(stdout, res) != 0 || !res.AsExpected {
			return 1
		}
		return 0
	case *compare:
		s, ok := scenario.Lookup(*name)
		if !ok {
			return usage("unknown scenario %q (have %s)", *name, strings.Join(scenario.Names(), ", "))
		}
		cmp := compareRun(s, scenario.Config{Seed: *seed, Epochs: *epochs, DataDir: *dataDir, Progress: progress})
		if printJSON(stdout, cmp) != 0 {
			return 1
		}
		for _, r := range cmp.Results {
			if !r.AsExpected {
				return 1
			}
		}
		return 0
	case *name != "":
		s, ok := scenario.Lookup(*name)
		if !ok {
			return usage("unknown scenario %q (have %s)", *name, strings.Join(scenario.Names(), ", "))
		}
		if !trackerOK() {
			return usage("unknown tracker %q (have %s)", *trk, strings.Join(tracker.Names(), ", "))
		}
		res := scenario.RunCell(s, scenario.Config{Tracker: *trk, Seed: *seed, Epochs: *epochs, DataDir: *dataDir, Progress: progress})
		if progress != nil {
			fmt.Fprintf(progress, "[%s/%s] %s: %s (missed %d, corrupted %d, extra %d)\n", res.Scenario, res.Tracker, res.Outcome, res.Reason, res.Missed, res.Corrupted, res.Extra)
		}
		if printJSON(stdout, res) != 0 {
			return 1
		}
		return res.ExitCode()
	}
	return usage("give -list, -scenario, -compare, -checkpoint or -checkpoint-synthetic")
}

func printJSON(w io.Writer, v any) int {
	b, err := json.Marshal(v)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ldt-check:", err)
		return 1
	}
	fmt.Fprintln(w, string(b))
	return 0
}

func listing() []result.Entry {
	var out []result.Entry
	for _, s := range scenario.Catalogue() {
		out = append(out, result.Entry{Name: s.Name, Paths: s.Paths, Doc: s.Doc, Naive: s.Naive, Trackers: s.Trackers(), NotFor: s.NotFor, Child: s.Child != nil})
	}
	return out
}

// startWriter starts this program as the synthetic writer and waits
// until it has populated its memory.
func startWriter(mb int, seed uint64) (int, func(), error) {
	cmd := exec.Command("/proc/self/exe", "-synthetic-writer", "-mb", strconv.Itoa(mb), "-seed", strconv.FormatUint(seed, 10))
	cmd.Stderr = os.Stderr
	// No garbage collection, so no scavenger handing pages back with
	// MADV_DONTNEED: the writer never discards memory, and the oracle
	// holds it to that (a page of zeros is a miss).
	cmd.Env = append(os.Environ(), "GOGC=off")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return 0, nil, err
	}
	if err := cmd.Start(); err != nil {
		return 0, nil, err
	}
	stop := func() { cmd.Process.Kill(); cmd.Wait() }
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		stop()
		return 0, nil, fmt.Errorf("writer did not get ready: %q %v", line, err)
	}
	return cmd.Process.Pid, stop, nil
}
