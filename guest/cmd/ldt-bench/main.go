// Command ldt-bench runs one figure of the LDT paper's evaluation inside
// the guest and prints it as one JSON object on stdout (progress on
// stderr). The host side is `labctl bench paper` (orchestrator/paper).
//
//	ldt-bench -figure writeonly|timeline|redis|collect|gup [-plan quick|short|reduced|full] [-reps N | -rep N] [-seed N] [-trackers a,b]
//	ldt-bench -checkpointer -tracker NAME -pid PID -interval D   (internal)
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"ldtlab/guest/bench"
	"ldtlab/guest/checkpoint"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ldt-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	figure := fs.String("figure", "", "writeonly, timeline, redis, collect or gup")
	quick := fs.Bool("quick", false, "same as -plan quick")
	plan := fs.String("plan", "full", "quick (plumbing and sanity), short (every claim at 7 repetitions, least work), reduced (every figure, smaller sizes) or full")
	seed := fs.Uint64("seed", 0, "seed of the random order of the cells in every repetition (0: the plan's)")
	trackers := fs.String("trackers", "", "comma-separated subset of "+strings.Join(bench.Trackers, ", "))
	reps := fs.Int("reps", 0, "repetitions (0: the plan's)")
	rep := fs.Int("rep", -1, "run only this repetition (its number and random order), as a host interleaving kernels does")
	ckpt := fs.Bool("checkpointer", false, "internal: checkpoint -pid every -interval until killed")
	trk := fs.String("tracker", "", "checkpointer's tracker")
	pid := fs.Int("pid", 0, "checkpointer's target")
	interval := fs.Duration("interval", time.Second, "checkpointer's interval")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "ldt-bench: unexpected arguments %q\n", fs.Args())
		return 2
	}
	if *ckpt {
		if *pid <= 0 || *trk == "" {
			fmt.Fprintln(stderr, "ldt-bench: -checkpointer needs -tracker and -pid")
			return 2
		}
		// Runs until the parent kills it at the end of its window.
		r := checkpoint.Run(checkpoint.Options{Tracker: *trk, Pid: *pid, Rounds: 1 << 30, Interval: *interval, Progress: stderr})
		fmt.Fprintf(stderr, "ldt-bench: checkpointer: stopped early: %s %s\n", r.Outcome, r.Reason)
		return 1
	}
	if *quick {
		*plan = "quick"
	}
	mk, ok := bench.Plans[*plan]
	if !ok {
		fmt.Fprintf(stderr, "ldt-bench: -plan must be quick, short, reduced or full (got %q)\n", *plan)
		return 2
	}
	p := mk()
	if *seed != 0 {
		p.Seed = *seed
	}
	if *reps > 0 {
		p.Reps, p.RedisReps = *reps, *reps
	}
	if *rep >= 0 {
		p.FirstRep, p.Reps, p.RedisReps = *rep, 1, 1
	}
	if *trackers != "" {
		p.Trackers = nil
		for _, t := range strings.Split(*trackers, ",") {
			if !slices.Contains(bench.Trackers, t) {
				fmt.Fprintf(stderr, "ldt-bench: unknown tracker %q (have %s)\n", t, strings.Join(bench.Trackers, ", "))
				return 2
			}
			p.Trackers = append(p.Trackers, t)
		}
	}
	var res any
	var err error
	switch *figure {
	case "writeonly":
		res, err = bench.RunWriteOnly(p, stderr)
	case "timeline":
		res, err = bench.RunTimeline(p, stderr)
	case "collect":
		res, err = bench.RunCollect(p, stderr)
	case "gup":
		res, err = bench.RunGUP(p, stderr)
	case "redis":
		self, serr := os.Executable()
		if serr != nil {
			err = serr
			break
		}
		res, err = bench.RunRedis(p, self, stderr)
	default:
		fmt.Fprintf(stderr, "ldt-bench: -figure must be writeonly, timeline, redis, collect or gup (got %q)\n", *figure)
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "ldt-bench: %s: %v\n", *figure, err)
		return 1
	}
	b, err := json.Marshal(res)
	if err != nil {
		fmt.Fprintf(stderr, "ldt-bench: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "%s\n", b)
	return 0
}
