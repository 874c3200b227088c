package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"ldtlab/internal/fileutil"
	"ldtlab/orchestrator/cell"
	"ldtlab/orchestrator/lab"
	"ldtlab/orchestrator/preset"
	"ldtlab/orchestrator/stress"
	"ldtlab/orchestrator/vm"
)

func init() {
	var g guestFlags
	var f struct {
		trackers, jsonOut string
		dur               time.Duration
		pages             int
		thp               bool
		mthp, agitators   string
		seed              uint64
	}
	register(&command{
		name:    "stress",
		summary: "hunt races: writers, a collector copying reported pages into a shadow, and every agitator at once (guest/stress)",
		setup: func(fs *flag.FlagSet) {
			g.register(fs)
			fs.StringVar(&f.trackers, "tracker", "ldt,pagemap-scan,naive", "comma-separated trackers (softdirty is N/A: its read and clear are not atomic)")
			fs.DurationVar(&f.dur, "for", 30*time.Second, "how long each tracker runs")
			fs.IntVar(&f.pages, "pages", 16384, "working set in 4 KiB pages (the guest has --mem MiB; more than fits makes it swap)")
			fs.BoolVar(&f.thp, "thp", true, "run ldt a second time with transparent huge pages")
			fs.StringVar(&f.mthp, "mthp", "", "enable this anonymous mTHP size for every run (16kB, 32kB, 64kB, ...)")
			fs.StringVar(&f.agitators, "agitators", "", "comma-separated agitators, or none (default: every one available; `ldt-stress -list` in a guest lists them)")
			fs.Uint64Var(&f.seed, "seed", uint64(time.Now().Unix()), "random seed (printed; rerun with it)")
			fs.StringVar(&f.jsonOut, "json", "", "write the runs here (default: stress-last.json in the state directory)")
		},
		run: func(ctx context.Context, fs *flag.FlagSet, args []string) error {
			repo, err := repoRoot()
			if err != nil {
				return err
			}
			o := g.options(repo, "stress")
			preset.Pressure(&o)
			o.Name = "stress"
			m, err := lab.Boot(ctx, o)
			if err != nil {
				return err
			}
			defer m.Close()
			fmt.Printf("stress: %s kernel %s under %s, seed %d\n", o.KernelOptions().Variant(), m.Kernel.Meta.KernelRelease, m.Accel.Kind, f.seed)
			runs, err := stress.Job(ctx, m, stress.Options{
				Trackers: splitList(f.trackers), Duration: f.dur, Pages: f.pages, THP: f.thp, Seed: f.seed,
				MTHP: f.mthp, Agitators: agitatorList(f.agitators),
			}, os.Stdout)
			out := f.jsonOut
			if out == "" {
				state, serr := lab.EnsureStateDir()
				if serr != nil {
					return &vm.InfraError{Op: "writing the stress result", Err: serr}
				}
				out = filepath.Join(state, "stress-last.json")
			}
			b, _ := json.MarshalIndent(map[string]any{"seed": f.seed, "accel": m.Accel.Kind, "runs": runs,
				"kernel": m.Kernel.Meta.KernelRelease, "variant": o.KernelOptions().Variant(), "kernel_key": m.Kernel.Meta.Key,
				"patches": m.Kernel.Meta.Patches, "omitted_patches": m.Kernel.Meta.Omitted}, "", "  ")
			if werr := fileutil.WriteFileAtomic(out, b, 0o644); werr != nil {
				return &vm.InfraError{Op: "writing the stress result", Err: werr}
			}
			fmt.Printf("full result: %s\n", out)
			if err != nil {
				return err
			}
			bad := 0
			for _, r := range runs {
				if r.Known != "" {
					fmt.Printf("  %s thp=%v: KNOWN-GAP: %s\n", r.Tracker, r.THP, r.Known)
				}
				if r.Failed() {
					bad++
					sp := cell.Spec{Kind: cell.KindStress, Tracker: r.Tracker, THP: r.THP, Seed: f.seed,
						Stress: stress.Options{Duration: f.dur, Pages: f.pages, MTHP: f.mthp, Agitators: agitatorList(f.agitators)}}
					fmt.Printf("  %s thp=%v: %s %s\n    reproduce: %s%s\n", r.Tracker, r.THP, r.Verdict, r.Error, sp.Repro(), o.KernelOptions().Flags())
				}
				for _, t := range r.Reports {
					title, _, _ := strings.Cut(t, "\n")
					fmt.Printf("    kernel report: %s (text in %s)\n", title, out)
				}
			}
			if bad > 0 {
				return fmt.Errorf("%d unexpected outcome(s)", bad)
			}
			return nil
		},
	})
}

// agitatorList: "" = the defaults (nil), "none" = none (empty).
func agitatorList(s string) []string {
	switch s {
	case "":
		return nil
	case "none":
		return []string{}
	}
	return splitList(s)
}
