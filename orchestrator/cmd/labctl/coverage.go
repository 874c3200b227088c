package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"ldtlab/images/kernel"
	"ldtlab/internal/secfs"
	"ldtlab/internal/termsafe"
	"ldtlab/orchestrator/coverage"
	"ldtlab/orchestrator/lab"
	"ldtlab/orchestrator/paper"
	"ldtlab/orchestrator/preset"
)

func init() {
	var g guestFlags
	var f struct {
		quick   bool
		out     string
		seed    uint64
		analyze string
		reasons string
		merge   string
	}
	register(&command{
		name:    "coverage",
		args:    "[-- JOB...]",
		summary: "line coverage of the LDT series: boot the coverage kernel, reset its gcov counters, run the catalogue, ldt-selftest, stress and fuzz (or the JOBs named), and map what ran onto the lines the series adds or changes (DIR/coverage.json, DIR/coverage.md)",
		help: "JOBs: check (every scenario; --quick: under ldt only), selftest (ldt-selftest), stress (--quick: ldt for 10 s; else ldt, pagemap-scan, naive for 30 s, ldt again with THP), fuzz (--quick: ldt for 90 s; else every tracker for 5 min), sh:COMMAND (a guest command, e.g. a scenario being written: sh:'ldt-check -scenario fork -tracker ldt').\n" +
			"A job that fails is reported (exit 1) but what it ran still counts. --quick fits in 15 minutes warm under TCG.",
		setup: func(fs *flag.FlagSet) {
			g.register(fs)
			g.config = "coverage"
			fs.Lookup("config").DefValue = "coverage"
			fs.BoolVar(&f.quick, "quick", false, "the short form (about 10 minutes under TCG with the kernel built)")
			fs.StringVar(&f.out, "out", "", "output directory (default: coverage-<date> in the state directory)")
			fs.Uint64Var(&f.seed, "seed", uint64(time.Now().Unix()), "seed of the catalogue, stress and fuzz (printed)")
			fs.StringVar(&f.reasons, "reasons", "", "why lines do not run, `FILE` (default: docs/coverage.reasons of the repository)")
			fs.StringVar(&f.merge, "merge", "", "do not boot: the union of earlier runs of the same kernel (`DIRS`, comma-separated: labctl coverage output or soak directories), written to --out as coverage.json and coverage.md")
			fs.StringVar(&f.analyze, "analyze", "", "do not boot: map the counters an earlier run left in `DIR`/gcda again (after a change to the mapping), rewriting DIR's coverage.json and coverage.md")
		},
		run: func(ctx context.Context, fs *flag.FlagSet, args []string) error {
			for _, a := range args {
				if err := coverage.ValidJob(a); err != nil {
					return usageError{err}
				}
			}
			if g.vanilla {
				return usageError{errors.New("--vanilla: the vanilla kernel has no series to cover")}
			}
			if g.config != "coverage" {
				return usageError{fmt.Errorf("--config %s: coverage needs the coverage config (gcov counters)", g.config)}
			}
			repo, err := repoRoot()
			if err != nil {
				return err
			}
			if f.merge != "" {
				var rs []*coverage.Report
				for _, d := range splitList(f.merge) {
					b, err := secfs.ReadFile(filepath.Join(d, "coverage.json"), 64<<20)
					if err != nil {
						return usageError{fmt.Errorf("--merge: %w", err)}
					}
					var r coverage.Report
					if err := json.Unmarshal(b, &r); err != nil {
						return fmt.Errorf("--merge: reading %s/coverage.json: %w", d, err)
					}
					rs = append(rs, &r)
				}
				r, err := coverage.Merge(rs)
				if err != nil {
					return fmt.Errorf("--merge: %w", err)
				}
				dir, err := runDir(f.out, "coverage")
				if err != nil {
					return err
				}
				return finishCoverage(dir, r, f.reasons, repo)
			}
			lo := g.options(repo, "coverage")
			preset.Pressure(&lo)
			lo.Name = "coverage"
			start := time.Now()
			r := &coverage.Report{Started: start.UTC(), Quick: f.quick, Commit: paper.GitCommit(repo),
				Host: fmt.Sprintf("%s, %d CPUs, %s, load %s", paper.HostCPU(), runtime.NumCPU(), paper.HostRAM(), paper.LoadAvg())}
			var kb *kernel.Build
			dir := f.out
			if f.analyze != "" {
				dir = f.analyze
				old, err := secfs.ReadFile(filepath.Join(dir, "coverage.json"), 64<<20)
				if err != nil {
					return usageError{fmt.Errorf("--analyze: %w", err)}
				}
				if err := json.Unmarshal(old, r); err != nil {
					return fmt.Errorf("--analyze: reading %s/coverage.json: %w", dir, err)
				}
				b, ok, err := kernel.Find(lo.KernelOptions())
				if err != nil {
					return err
				}
				if !ok || b.Meta.Key != r.KernelKey {
					return fmt.Errorf("--analyze: the kernel %s that ran is no longer the cached one for these flags", r.KernelKey)
				}
				kb = b
			} else {
				if dir, err = runDir(dir, "coverage"); err != nil {
					return err
				}
				m, err := lab.Boot(ctx, lo)
				if err != nil {
					return err
				}
				defer m.Close()
				kb = m.Kernel
				r.Accel = string(m.Accel.Kind)
				fmt.Printf("coverage: kernel %s (key %s) under %s, seed %d; output in %s\n", kb.Meta.KernelRelease, kb.Meta.Key, m.Accel.Kind, f.seed, dir)
				tw := termsafe.NewWriter(os.Stdout)
				jobs, problems, cerr := coverage.Collect(ctx, m, coverage.Options{Quick: f.quick, Jobs: args, Seed: f.seed, Log: tw}, dir)
				tw.Flush()
				r.Jobs, r.Problems = jobs, problems
				for _, rep := range m.Reports() {
					r.Problems = append(r.Problems, "kernel report: "+rep.String())
				}
				if cerr != nil {
					return fmt.Errorf("coverage run: %w (console: %s)", cerr, m.ConsolePath())
				}
			}
			r.KernelKey, r.KernelRelease, r.KernelConfig = kb.Meta.Key, kb.Meta.KernelRelease, kb.Meta.Config
			fmt.Printf("coverage: mapping the counters onto the series (gcov)\n")
			if err := coverage.Analyze(ctx, kb, filepath.Join(dir, "gcda"), r); err != nil {
				return fmt.Errorf("coverage: %w", err)
			}
			if f.analyze == "" {
				r.Seconds = time.Since(start).Seconds()
			}
			return finishCoverage(dir, r, f.reasons, repo)
		},
	})
}

// finishCoverage explains r's unexecuted lines (reasonsFlag, else the
// repository's docs/coverage.reasons), writes DIR/coverage.json and
// coverage.md and prints the summary; exit 1 when the run had problems.
func finishCoverage(dir string, r *coverage.Report, reasonsFlag, repo string) error {
	rf := reasonsFlag
	if rf == "" {
		rf = filepath.Join(repo, "docs", "coverage.reasons")
	}
	reasons, err := coverage.LoadReasons(rf, reasonsFlag != "")
	if err != nil {
		return fmt.Errorf("--reasons: %w", err)
	}
	if err := coverage.WriteReport(dir, r, reasons); err != nil {
		return err
	}
	fmt.Printf("\ncoverage: %d of %d executable series lines ran (%.1f%%), %d unexecuted (%d without a reason) listed in %s\n",
		r.Executed, r.SeriesLines, r.Percent, len(r.Unexecuted), r.Unexplained, filepath.Join(dir, "coverage.md"))
	for _, p := range r.PerPatch {
		fmt.Printf("  %-70s %4d / %4d\n", p.Name, p.Executed, p.SeriesLines)
	}
	if len(r.Problems) > 0 {
		for _, p := range r.Problems {
			fmt.Printf("PROBLEM: %s\n", termsafe.Line(p))
		}
		return exitError{1}
	}
	return nil
}
