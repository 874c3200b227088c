package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	gfuzz "ldtlab/guest/fuzz"
	"ldtlab/guest/result"
	"ldtlab/images/kernel"
	"ldtlab/internal/fileutil"
	"ldtlab/internal/secfs"
	"ldtlab/internal/shquote"
	"ldtlab/internal/termsafe"
	"ldtlab/orchestrator/fuzz"
	"ldtlab/orchestrator/lab"
	"ldtlab/orchestrator/preset"
	"ldtlab/orchestrator/soak"
	"ldtlab/orchestrator/vm"
)

func init() {
	var g guestFlags
	var f struct {
		dur, minFor          time.Duration
		seed                 uint64
		trackers, until, out string
		expect               string
		replay, jsonOut      string
		maxSeqs              int
		minimize             bool
	}
	register(&command{
		name:    "fuzz",
		summary: "model-based search: random sequences of memory operations under every tracker, failures minimized into replay files (guest/fuzz)",
		setup: func(fs *flag.FlagSet) {
			g.register(fs)
			fs.DurationVar(&f.dur, "for", 5*time.Minute, "draw sequences for this long (the guest's clock; minimizing what was found comes on top)")
			fs.Uint64Var(&f.seed, "seed", uint64(time.Now().Unix()), "base seed (printed; the same seed draws the same sequences)")
			fs.StringVar(&f.trackers, "trackers", strings.Join(gfuzz.DefaultTrackers, ","), "comma-separated trackers (naive is the negative control: it must be CAUGHT)")
			fs.StringVar(&f.until, "until", "", "stop once findings of every class named are in: "+strings.Join(gfuzz.Classes, ", ")+" (the teeth test)")
			fs.StringVar(&f.expect, "expect", "", "the teeth test: stop once a finding of every class named is in, and exit 0 only if all were found (each with its minimized reproducer); classes as for --until")
			fs.IntVar(&f.maxSeqs, "max-seqs", 0, "stop after this many sequences (0: until --for)")
			fs.BoolVar(&f.minimize, "minimize", true, "minimize each finding (drop operations while it still fails)")
			fs.DurationVar(&f.minFor, "minimize-for", 3*time.Minute, "time allowed to minimize one finding")
			fs.StringVar(&f.replay, "replay", "", "run this replay file (a finding's replay.json) instead of drawing")
			fs.StringVar(&f.out, "out", "", "crash store directory: each finding under its title, with replay.json (default: fuzz-<date> in the state directory)")
			fs.StringVar(&f.jsonOut, "json", "", "write the run here too (default: fuzz.json in --out)")
		},
		run: func(ctx context.Context, fs *flag.FlagSet, args []string) error {
			if len(args) > 0 {
				return usageError{fmt.Errorf("fuzz takes no arguments (got %q)", args)}
			}
			if f.expect != "" && f.until != "" {
				return usageError{errors.New("--expect implies --until: give one of them")}
			}
			until := splitList(f.until)
			if f.expect != "" {
				until = splitList(f.expect)
			}
			for _, c := range until {
				if !slices.Contains(gfuzz.Classes, c) {
					return usageError{fmt.Errorf("unknown finding class %q (have %s)", c, strings.Join(gfuzz.Classes, ", "))}
				}
			}
			o := fuzz.Options{Duration: f.dur, Seed: f.seed, Trackers: splitList(f.trackers), Until: until,
				MaxSeqs: f.maxSeqs, NoMinimize: !f.minimize, MinimizeFor: f.minFor}
			for _, t := range o.Trackers {
				if why := gfuzz.NotFor(t, &gfuzz.Sequence{}); why != "" {
					return usageError{fmt.Errorf("--trackers: %s", why)}
				}
			}
			if f.replay != "" {
				b, err := secfs.ReadFile(f.replay, 16<<20)
				if err != nil {
					return usageError{fmt.Errorf("--replay: %w", err)}
				}
				var seq gfuzz.Sequence
				if err := json.Unmarshal(b, &seq); err != nil {
					return usageError{fmt.Errorf("--replay %s: %w", f.replay, err)}
				}
				if err := seq.Validate(); err != nil {
					return usageError{fmt.Errorf("--replay %s: %w", f.replay, err)}
				}
				o.Replay = &seq
			}
			repo, err := repoRoot()
			if err != nil {
				return err
			}
			lo := g.options(repo, "fuzz")
			preset.Pressure(&lo)
			lo.Name = "fuzz"
			dir := f.out
			if dir, err = runDir(dir, "fuzz"); err != nil {
				return err
			}
			store, err := soak.OpenStore(dir)
			if err != nil {
				return &vm.InfraError{Op: "opening the crash store", Err: err}
			}
			m, err := lab.Boot(ctx, lo)
			if err != nil {
				return err
			}
			defer m.Close()
			fmt.Printf("fuzz: %s kernel %s under %s, seed %d, trackers %s, for %s; findings go to %s\n",
				lo.KernelOptions().Variant(), m.Kernel.Meta.KernelRelease, m.Accel.Kind, f.seed, strings.Join(o.Trackers, ","), f.dur, dir)
			// The guest's progress lines are guest text: escaped.
			tw := termsafe.NewWriter(os.Stdout)
			run, rerr := fuzz.RunOne(ctx, m, o, tw)
			tw.Flush()
			kflags := kernelFlags(&g)
			var titles []string
			for _, fd := range run.Findings() {
				occ := soak.Occurrence{Title: fd.Title, Type: fd.Type, Kind: fd.Kind, At: time.Now().UTC(), Seed: f.seed,
					Kernel: m.Kernel.Meta.KernelRelease, KernelKey: m.Kernel.Meta.Key, Span: fd.Span, Log: m.ConsoleLog()}
				if fd.Replay != nil {
					occ.Files = map[string][]byte{"replay.json": fd.Replay}
					occ.Repro = fmt.Sprintf("labctl fuzz --replay %s --trackers %s%s",
						shquote.Word(filepath.Join(store.TitleDir(fd.Title), "replay.json")), shquote.Word(fd.Fuzz.Tracker), kflags)
				} else {
					occ.Repro = fmt.Sprintf("labctl fuzz --seed %d --for %s --trackers %s%s", f.seed, f.dur, shquote.Word(strings.Join(o.Trackers, ",")), kflags)
				}
				c, err := store.Record(occ)
				if err != nil {
					fmt.Fprintf(os.Stderr, "labctl: crash store: %v\n", err)
					continue
				}
				titles = append(titles, fd.Title)
				fmt.Printf("\nFINDING %s\n", termsafe.Line(fd.Title))
				if fd.Class != "" {
					fmt.Printf("  class: %s (issue 19)\n", fd.Class)
				}
				if fd.Fuzz != nil {
					ff := fd.Fuzz
					fmt.Printf("  found after %.0f s in sequence %d, seen %d×; minimized %d → %d operations in %.0f s (reproduced alone: %v)\n",
						ff.FoundS, ff.Seq, ff.Count, ff.OrigOps, ff.MinOps, ff.MinimizeS, ff.Reproduced)
					fmt.Print(indent(termsafe.String(ff.Replay.Describe()), "    "))
				}
				fmt.Printf("  kept in %s\n  reproduce: %s\n", c.Dir, occ.Repro)
			}
			printFuzzSummary(run)
			out := f.jsonOut
			if out == "" {
				out = filepath.Join(dir, "fuzz.json")
			}
			b, _ := json.MarshalIndent(map[string]any{"seed": f.seed, "accel": m.Accel.Kind, "kernel": m.Kernel.Meta.KernelRelease,
				"kernel_key": m.Kernel.Meta.Key, "variant": lo.KernelOptions().Variant(), "run": run, "findings": titles}, "", "  ")
			if werr := fileutil.WriteFileAtomic(out, b, 0o644); werr != nil {
				return &vm.InfraError{Op: "writing the fuzz result", Err: werr}
			}
			fmt.Printf("full result: %s\n", out)
			if rerr != nil {
				return rerr
			}
			if f.expect != "" {
				return expectClasses(run, splitList(f.expect))
			}
			if run.Verdict == result.VError {
				return errors.New(termsafe.Line(run.Error))
			}
			if run.Verdict != result.VPass {
				if len(titles) == 0 {
					return errors.New("a tracker did not hold (see above)")
				}
				return fmt.Errorf("%d finding(s): %s", len(titles), termsafe.Line(strings.Join(titles, "; ")))
			}
			return nil
		},
	})
}

// expectClasses is the teeth test's verdict: every class expected was
// found, minimized (reproduced on its own) — how long each took is printed.
func expectClasses(run fuzz.Run, want []string) error {
	if run.Summary == nil {
		return fmt.Errorf("no summary: %s", termsafe.Line(run.Error))
	}
	var missing []string
	for _, c := range want {
		var hit *gfuzz.Finding
		for _, f := range run.Summary.Findings {
			if gfuzz.ClassMatches(f.Class, c) && (hit == nil || f.FoundS < hit.FoundS) {
				hit = f
			}
		}
		if hit == nil {
			missing = append(missing, c)
			fmt.Printf("expected %-15s NOT FOUND\n", c)
			continue
		}
		fmt.Printf("expected %-15s found after %4.0f s, minimized %d → %d ops in %.0f s (reproduced alone: %v): %s\n",
			c, hit.FoundS, hit.OrigOps, hit.MinOps, hit.MinimizeS, hit.Reproduced, termsafe.Line(hit.Title))
		if !hit.Reproduced {
			missing = append(missing, c+" (its minimized sequence did not fail again)")
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("the fuzzer did not find: %s", strings.Join(missing, ", "))
	}
	return nil
}

// kernelFlags are the flags that select the guest's kernel, for a
// reproduction command: config, --vanilla, and the part of the series
// (--patches, --ldt=n).
func kernelFlags(g *guestFlags) string {
	o := kernel.Options{Repo: g.kernelSelection.repo, Config: g.config, Vanilla: g.vanilla}
	g.kernelSelection.apply(&o)
	return o.Flags()
}

func printFuzzSummary(run fuzz.Run) {
	s := run.Summary
	if s == nil {
		fmt.Printf("\nfuzz: no summary: %s\n", termsafe.Line(run.Error))
		return
	}
	fmt.Printf("\nfuzz: %d sequences, %d runs, %d pages checked in %.0f s (stopped: %s)\n", s.Sequences, s.Runs, s.Checked, s.TookS, s.Stopped)
	var ts []string
	for t := range s.Trackers {
		ts = append(ts, t)
	}
	sort.Strings(ts)
	for _, t := range ts {
		st := s.Trackers[t]
		var vs []string
		for v, n := range st.Verdicts {
			vs = append(vs, fmt.Sprintf("%s %d", v, n))
		}
		sort.Strings(vs)
		fmt.Printf("  %-13s %-10s runs %d (%s), pages checked %d\n", t, st.Verdict, st.Runs, strings.Join(vs, ", "), st.Checked)
	}
	type tm struct {
		k  string
		ms int64
	}
	var tms []tm
	var in int64
	for k, ms := range s.TimeMS {
		tms = append(tms, tm{k, ms})
		in += ms
	}
	sort.Slice(tms, func(i, j int) bool { return tms[i].ms > tms[j].ms })
	if len(tms) > 8 {
		tms = tms[:8]
	}
	var parts []string
	for _, t := range tms {
		parts = append(parts, fmt.Sprintf("%s %.0fs", t.k, float64(t.ms)/1000))
	}
	if len(parts) > 0 {
		fmt.Printf("  time in runs %.0f s (in the program %.0f s: %s)\n", float64(s.ExecMS)/1000, float64(in)/1000, strings.Join(parts, ", "))
	}
	var gaps []string
	for k := range s.KnownGaps {
		gaps = append(gaps, k)
	}
	sort.Strings(gaps)
	for _, k := range gaps {
		t, class, _ := strings.Cut(k, " ")
		fmt.Printf("  KNOWN-GAP %s %s: %d pages: %s\n", t, class, s.KnownGaps[k], result.FuzzGap(class, t))
	}
	for _, r := range run.ReportTitles {
		fmt.Printf("  kernel report during the run: %s\n", termsafe.Line(r))
	}
}
