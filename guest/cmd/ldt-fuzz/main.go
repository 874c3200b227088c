// Command ldt-fuzz draws sequences of memory operations on a few small
// regions, runs each under every tracker (a fresh process per run) against
// a ground-truth model, and minimizes what fails into a replay file
// (guest/fuzz).
//
//	ldt-fuzz [-for 60s] [-seed N] [-trackers ldt,naive,softdirty,pagemap-scan]
//	         [-data /mnt/data] [-out /tmp/ldt-fuzz] [-until CLASS,...] [-max-seqs N]
//	ldt-fuzz -replay FILE|- [-trackers ...] [-minimize]
//	ldt-fuzz -print SEED        the sequence a seed draws
//
// It prints the summary as JSON on stdout and progress on stderr. Exit
// status: 0 every tracker held (naive CAUGHT), 1 a finding (or naive not
// caught, or a tracker error), 2 the command line or setup was wrong.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"ldtlab/guest/fuzz"
)

func main() {
	fuzz.MaybeHelper()
	fuzz.MaybeExec()
	var (
		dur      = flag.Duration("for", 60*time.Second, "draw sequences for this long")
		seed     = flag.Uint64("seed", uint64(time.Now().UnixNano()), "base seed (sequence i draws from a seed derived from it)")
		trackers = flag.String("trackers", strings.Join(fuzz.DefaultTrackers, ","), "comma-separated trackers")
		data     = flag.String("data", "/mnt/data", "directory on a block device (the data disk)")
		out      = flag.String("out", "/tmp/ldt-fuzz", "directory for replay files")
		replay   = flag.String("replay", "", "run this replay file (- = stdin) instead of drawing")
		minimize = flag.Bool("minimize", true, "minimize failures (with -replay: minimize it)")
		minFor   = flag.Duration("minimize-for", 4*time.Minute, "time allowed to minimize one failure")
		until    = flag.String("until", "", "stop once findings of every class named are in ("+strings.Join(fuzz.Classes, ", ")+")")
		maxSeqs  = flag.Int("max-seqs", 0, "stop after this many sequences (0: until -for)")
		print    = flag.Uint64("print", 0, "print the sequence this seed draws and exit")
		timeout  = flag.Duration("exec-timeout", 2*time.Minute, "time allowed for one run of one sequence")
	)
	flag.Parse()
	if *print != 0 {
		b, _ := json.MarshalIndent(fuzz.Generate(*print), "", "  ")
		fmt.Println(string(b))
		return
	}
	o := fuzz.Options{Duration: *dur, Seed: *seed, Trackers: split(*trackers), DataDir: *data, OutDir: *out,
		Minimize: *minimize, MinimizeFor: *minFor, Until: split(*until), MaxSeqs: *maxSeqs, ExecTimeout: *timeout, Progress: os.Stderr}
	if *replay != "" {
		var r io.Reader = os.Stdin
		if *replay != "-" {
			f, err := os.Open(*replay)
			if err != nil {
				fmt.Fprintln(os.Stderr, "ldt-fuzz:", err)
				os.Exit(2)
			}
			defer f.Close()
			r = f
		}
		var seq fuzz.Sequence
		if err := json.NewDecoder(r).Decode(&seq); err != nil {
			fmt.Fprintln(os.Stderr, "ldt-fuzz: reading the replay:", err)
			os.Exit(2)
		}
		if err := seq.Validate(); err != nil {
			fmt.Fprintln(os.Stderr, "ldt-fuzz:", err)
			os.Exit(2)
		}
		o.Replay = &seq
	}
	for _, t := range o.Trackers {
		if why := fuzz.NotFor(t, &fuzz.Sequence{}); strings.HasPrefix(why, "unknown") {
			fmt.Fprintln(os.Stderr, "ldt-fuzz:", why)
			os.Exit(2)
		}
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	fmt.Fprintf(os.Stderr, "ldt-fuzz: seed %d, trackers %s, for %s\n", o.Seed, strings.Join(o.Trackers, ","), o.Duration)
	sum, err := fuzz.Run(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ldt-fuzz:", err)
		os.Exit(2)
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	enc.Encode(sum)
	for _, f := range sum.Findings {
		fmt.Fprintf(os.Stderr, "FINDING %s\n  %d→%d ops, found after %.0fs, seen %d×; replay: %s\n", f.Title, f.OrigOps, f.MinOps, f.FoundS, f.Count, f.Command)
	}
	if sum.Failed() {
		os.Exit(1)
	}
}

func split(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
