package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	guestbench "ldtlab/guest/bench"
	"ldtlab/images/kernel"
	"ldtlab/images/rootfs"
	"ldtlab/orchestrator/accel"
	"ldtlab/orchestrator/lab"
	"ldtlab/orchestrator/paper"
)

func init() {
	var g guestFlags
	var n int
	var out, suite, checkSecs, paperOut, paperFrom, plan, kernels, figs string
	var quick bool
	var reps int
	var seed uint64
	register(&command{
		name:    "bench",
		args:    "[paper]",
		summary: "measure build, image and boot times (docs/benchmarks.md); `bench paper`: the LDT paper's four figures and a GUP figure for every tracker (docs/paper/)",
		setup: func(fs *flag.FlagSet) {
			g.register(fs)
			fs.IntVar(&n, "n", 5, "boots to measure")
			fs.StringVar(&out, "o", "docs/benchmarks.md", "report file (relative to the repository)")
			fs.StringVar(&suite, "suite-seconds", "", "measured e2e suite wall time to record (from `time make test`)")
			fs.StringVar(&checkSecs, "check-seconds", "", "measured full `make check` wall time to record (from `time make check`)")
			fs.BoolVar(&quick, "quick", false, "paper: same as --plan quick (tiny sizes, one repetition; checks only that every figure is produced and sane)")
			fs.StringVar(&plan, "plan", "full", "paper: quick, short (every claim at 7 repetitions, the least work per figure), reduced (every figure and claim at 7 repetitions, smaller working sets) or full")
			fs.StringVar(&kernels, "kernels", "", "paper: A/B these kernels in one run, one guest each, repetitions interleaved in random kernel order: comma-separated, each vanilla, all, or a selection of kmod/patches/series with + for its comma (0001-0009,0001-0010; vanilla,all); the figures and claims are the last kernel's, every kernel is compared with the first")
			fs.StringVar(&figs, "figures", "", "paper: only these figures, comma-separated ("+strings.Join(paper.Figures(), ", ")+"); default all")
			fs.IntVar(&reps, "reps", 0, "paper: repetitions of every figure (0: the plan's; verdicts need 7)")
			fs.Uint64Var(&seed, "seed", 0, "paper: seed of the random order of cells in every repetition (0: from the clock; recorded in paper.json)")
			fs.StringVar(&paperOut, "out", "", "paper: output directory (default docs/paper for the full report; a quick, reduced, --figures or --kernels run goes to the state directory)")
			fs.StringVar(&paperFrom, "from", "", "paper: render the tables and plots again from this paper.json, measuring nothing")
		},
		run: func(ctx context.Context, fs *flag.FlagSet, args []string) error {
			repo, err := repoRoot()
			if err != nil {
				return err
			}
			switch {
			case len(args) == 1 && args[0] == "paper" && paperFrom != "":
				res, err := paper.Load(paperFrom)
				if err != nil {
					return err
				}
				if paperOut == "" {
					paperOut = filepath.Dir(paperFrom)
				}
				return paper.Write(res, paperOut)
			case len(args) == 1 && args[0] == "paper":
				set := map[string]bool{}
				fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
				if _, ok := guestbench.Plans[plan]; !ok {
					return usageError{fmt.Errorf("--plan must be quick, short, reduced or full, not %q", plan)}
				}
				if quick {
					plan = "quick"
				}
				po := paper.Options{Plan: plan, Reps: reps, Seed: seed}
				if kernels != "" {
					if set["vanilla"] || set["patches"] || set["without"] || set["ldt"] {
						return usageError{errors.New("--kernels selects every kernel of the run: drop --vanilla, --patches, --without and --ldt")}
					}
					if po.Kernels, err = paper.ParseKernels(repo, kernels); err != nil {
						return usageError{err}
					}
				}
				if figs != "" {
					po.Figures = strings.Split(figs, ",")
				}
				return benchPaper(ctx, g, set, repo, po, paperOut)
			case len(args) > 0:
				return fmt.Errorf("unknown bench %q (want no argument or \"paper\")", strings.Join(args, " "))
			case quick || paperOut != "" || paperFrom != "" || plan != "full" || reps != 0 || seed != 0 || kernels != "" || figs != "":
				return usageError{errors.New("--quick, --plan, --reps, --seed, --kernels, --figures, --out and --from belong to `labctl bench paper`")}
			}
			return bench(ctx, g.options(repo, "bench"), n, repo+"/"+out, suite, checkSecs)
		},
	})
}

type stats struct{ xs []time.Duration }

func (s *stats) add(d time.Duration) { s.xs = append(s.xs, d) }
func (s stats) summary() string {
	if len(s.xs) == 0 {
		return "-"
	}
	x := append([]time.Duration(nil), s.xs...)
	sort.Slice(x, func(i, j int) bool { return x[i] < x[j] })
	f := func(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }
	return fmt.Sprintf("median %s (min %s, max %s, n=%d)", f(x[len(x)/2]), f(x[0]), f(x[len(x)-1]), len(x))
}

func bench(ctx context.Context, o lab.Options, n int, out, suite, checkSecs string) error {
	o.Log = io.Discard
	choice, err := accel.ResolveHost(o.Accel)
	if err != nil {
		return err
	}
	// Cached lookups (what every command pays on a warm cache).
	var kHit, iHit stats
	var kb *kernel.Build
	var img *rootfs.Image
	for i := 0; i < 3; i++ {
		t := time.Now()
		b, hit, err := kernel.Ensure(ctx, o.KernelOptions())
		if err != nil {
			return err
		}
		if !hit && i == 0 {
			fmt.Fprintf(os.Stderr, "bench: kernel was not cached; built it in %s\n", time.Since(t).Round(time.Second))
			continue
		}
		kHit.add(time.Since(t))
		kb = b
		t = time.Now()
		im, _, err := rootfs.Ensure(ctx, rootfs.Options{Repo: o.Repo, Kernel: kb, Log: io.Discard})
		if err != nil {
			return err
		}
		iHit.add(time.Since(t))
		img = im
	}
	// A full image build, into a scratch directory.
	var iBuild stats
	for i := 0; i < 3; i++ {
		dir, err := os.MkdirTemp("", "ldtlab-bench-img-")
		if err != nil {
			return err
		}
		t := time.Now()
		err = rootfs.BuildTo(ctx, rootfs.Options{Repo: o.Repo, Kernel: kb, Log: io.Discard}, dir)
		iBuild.add(time.Since(t))
		os.RemoveAll(dir)
		if err != nil {
			return err
		}
	}
	// Boot to first command, and the warm path of `labctl check` (lookups
	// + boot + first command) measured in-process.
	var boot, first, warm stats
	for i := 0; i < n; i++ {
		t := time.Now()
		kb2, img2, err := lab.Prepare(ctx, o)
		if err != nil {
			return err
		}
		m, err := lab.BootBuilt(ctx, o, kb2, img2)
		if err != nil {
			return err
		}
		if _, err := m.Run(ctx, "true"); err != nil {
			m.Close()
			return err
		}
		warm.add(time.Since(t))
		boot.add(m.BootTime)
		t2 := time.Now()
		m.Run(ctx, "true")
		first.add(time.Since(t2))
		m.Close()
		fmt.Fprintf(os.Stderr, "bench: boot %d/%d: ready in %s\n", i+1, n, m.BootTime.Round(time.Millisecond))
	}
	_ = img

	cpu := paper.HostCPU()
	qv, _ := exec.Command("qemu-system-x86_64", "--version").Output()
	var sb strings.Builder
	fmt.Fprintf(&sb, "# Benchmarks\n\nMeasured by `labctl bench` on %s. Figures, not assertions: rerun on your machine.\n\n", time.Now().UTC().Format("2006-01-02"))
	fmt.Fprintf(&sb, "- ldtlab commit: `%s`\n- machine: %s, %d cores, %s; load average at the end: %s\n- accelerator: %s (%s)\n- QEMU: %s\n- kernel: %s %s (%s config, build key `%s`), %d MiB guest, %d vCPUs\n\n",
		paper.GitCommit(o.Repo), cpu, runtime.NumCPU(), paper.HostRAM(), paper.LoadAvg(), choice.Kind, choice.Reason, strings.SplitN(string(qv), "\n", 2)[0],
		kb.Meta.SourcePackage, kb.Meta.SourceVersion, kb.Meta.Config, kb.Meta.Key, o.MemoryMiB, o.CPUs)
	fmt.Fprintf(&sb, "| what | figure | target |\n|---|---|---|\n")
	kind := "incremental (object directory reused)"
	if kb.Meta.Cold {
		kind = "cold (empty object directory)"
	}
	fmt.Fprintf(&sb, "| last kernel build of this entry (%s, %s; from its meta.json) | %.0f s | – |\n", o.KernelOptions().Variant(), kind, kb.Meta.BuildSeconds)
	for _, extra := range []kernel.Options{{Repo: o.Repo, Config: "perf"}, {Repo: o.Repo, Config: "perf", Vanilla: true}, {Repo: o.Repo, Config: "debug", Vanilla: true}} {
		if b, ok, _ := kernel.Find(extra); ok && b.Meta.Cold {
			fmt.Fprintf(&sb, "| cold kernel build (%s, empty object directory; from its meta.json) | %.0f s | – |\n", extra.Variant(), b.Meta.BuildSeconds)
		}
	}
	fmt.Fprintf(&sb, "| cached kernel lookup | %s | < 1 s |\n", kHit.summary())
	fmt.Fprintf(&sb, "| cached image lookup | %s | < 1 s |\n", iHit.summary())
	fmt.Fprintf(&sb, "| image build (compile guest programs with a warm Go build cache + assemble initramfs) | %s | – |\n", iBuild.summary())
	fmt.Fprintf(&sb, "| boot: QEMU start → guest agent ready | %s | – |\n", boot.summary())
	fmt.Fprintf(&sb, "| warm `check` path: lookups + boot + first guest command | %s | ≤ 5 s |\n", warm.summary())
	fmt.Fprintf(&sb, "| one more guest command (ssh session over virtio-serial) | %s | – |\n", first.summary())
	if suite != "" {
		fmt.Fprintf(&sb, "| `make test` wall time from a fresh clone (warm build cache) | %s s | – |\n", suite)
	}
	if checkSecs != "" {
		fmt.Fprintf(&sb, "| full `make check` (64 cells, comparison, checkpoint oracle; warm cache) | %s s | < 15 min |\n", checkSecs)
	}
	sb.WriteString("\nBoot to first command is the sum of the boot row and one command; the\nwarm `check` row includes both plus cache lookups.\n")
	if err := os.WriteFile(out, []byte(sb.String()), 0o644); err != nil {
		return err
	}
	fmt.Print(sb.String())
	return nil
}

// paperOutDir is where a run writes without --out: docs/paper only for
// the full report (plan full, every figure, one kernel), which it
// replaces; a quick, reduced, figure-limited or A/B run goes to the state
// directory, so that it never overwrites the committed report with part
// of one.
func paperOutDir(repo string, po paper.Options) (string, error) {
	plan := po.Plan
	if plan == "" {
		plan = "full"
	}
	if plan == "full" && len(po.Figures) == 0 && len(po.Kernels) == 0 {
		return filepath.Join(repo, "docs", "paper"), nil
	}
	state, err := lab.EnsureStateDir()
	if err != nil {
		return "", err
	}
	name := "bench-paper-" + plan
	if len(po.Kernels) > 0 {
		name += "-ab"
	}
	if len(po.Figures) > 0 {
		name += "-" + strings.Join(po.Figures, "+")
	}
	return filepath.Join(state, name), nil
}

// benchPaper runs `labctl bench paper`: the figures are reported, never
// judged by their times; insane samples or kernel reports fail the run.
func benchPaper(ctx context.Context, g guestFlags, set map[string]bool, repo string, po paper.Options, out string) error {
	o := g.options(repo, "paper")
	// The --config default is the debug lab's; unless given, let the
	// paper package choose (perf kernel; 2 GiB and no swap unless given).
	if !set["config"] {
		o.Config = ""
	}
	if out == "" {
		var err error
		if out, err = paperOutDir(repo, po); err != nil {
			return err
		}
	}
	po.Guest, po.Progress = o, os.Stderr
	res, err := paper.Run(ctx, po)
	if res != nil {
		if werr := paper.Write(res, out); werr != nil {
			return errors.Join(err, werr)
		}
		fmt.Printf("wrote %s (README.md, paper.json, writeonly.png, timeline.png, redis.png, collect.png)\n", out)
	}
	if err != nil {
		return err
	}
	for _, p := range append(res.Problems, res.Reports...) {
		fmt.Printf("PROBLEM: %s\n", p)
	}
	if n := len(res.Problems) + len(res.Reports); n > 0 {
		return fmt.Errorf("%d problem(s) in the measurements", n)
	}
	fmt.Printf("every figure produced, samples sane, no kernel report (%.0f s)\n", res.Meta.Seconds)
	return nil
}
