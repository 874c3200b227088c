// Package check is the host side of the correctness catalogue (`labctl
// check`): it boots a guest sized for real memory pressure, runs every
// scenario of guest/cmd/ldt-check under every tracker, the LDT vs
// soft-dirty comparison and the incremental checkpoint oracle, watches the
// console for kernel reports after each cell, and judges the outcomes.
package check

import (
	"context"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"

	"ldtlab/guest/result"
	"ldtlab/internal/termsafe"
	"ldtlab/orchestrator/cell"
	"ldtlab/orchestrator/lab"
	"ldtlab/orchestrator/preset"
	"ldtlab/orchestrator/stress"
	"ldtlab/orchestrator/vm"
)

// Trackers in display order.
var Trackers = []string{"ldt", "naive", "softdirty", "pagemap-scan"}

// Mutants are the deliberately broken trackers (not run by default;
// `--tracker mutant-all,...`): each must be caught by at least one cell.
var Mutants = result.Mutants

// Cell is one scenario under one tracker.
type Cell = result.Cell

// Checkpoint is one run of the incremental checkpoint oracle.
type Checkpoint = cell.Checkpoint

// Options filter and size the run.
type Options struct {
	Guest      lab.Options
	Scenarios  []string // empty = all
	Trackers   []string // empty = all
	Seed       uint64
	Epochs     int  // 0 = each scenario's default
	Compare    bool // run the LDT vs soft-dirty comparison
	Checkpoint bool // run the checkpoint oracle (synthetic + redis)
	// Migrate runs the short migration of redis (issue 21): pre-copy
	// driven by ldt, softdirty and naive under memory pressure, CRIU
	// restore from the tracker-built image on the same guest.
	Migrate bool
	// Stress runs the race hunt (orchestrator/stress) for this long per
	// tracker after the other phases; 0 skips it.
	Stress   time.Duration
	Progress io.Writer
}

// Result is the whole run, written as JSON.
type Result struct {
	Started    time.Time            `json:"started"`
	Kernel     string               `json:"kernel"`
	Variant    string               `json:"variant"`
	Patches    []string             `json:"patches,omitempty"`         // the series' patches the kernel has
	Omitted    []string             `json:"omitted_patches,omitempty"` // those it was built without (--patches/--without)
	Accel      string               `json:"accel"`
	Seed       uint64               `json:"seed"`
	Cells      []*Cell              `json:"cells"`
	Compare    []*result.Comparison `json:"compare,omitempty"`
	Checkpoint []*Checkpoint        `json:"checkpoint,omitempty"`
	Migrate    []*cell.Migrate      `json:"migrate,omitempty"`
	Stress     []stress.Run         `json:"stress,omitempty"`
	Reports    []string             `json:"kernel_reports,omitempty"`
	// Problems are failures outside the cells: a comparison that did not
	// run, a kernel report between phases, a mutant no cell caught.
	Problems []string `json:"problems,omitempty"`
	Seconds  float64  `json:"seconds"`
	Failures int      `json:"failures"`
}

type runner struct {
	o     Options
	m     *lab.Machine
	res   *Result
	start time.Time
	mark  int // console position after the last phase
}

func (r *runner) logf(format string, args ...any) {
	if r.o.Progress != nil {
		fmt.Fprintf(r.o.Progress, format, args...)
	}
}

// Run executes the catalogue: a policy over the cell executor that boots a
// fresh guest whenever a cell leaves it crashed, hung or dead, and goes on.
// The returned error is for failures of the lab itself; unexpected
// outcomes are counted in Result.Failures.
func Run(ctx context.Context, o Options) (*Result, error) {
	preset.Pressure(&o.Guest)
	if o.Checkpoint || o.Migrate {
		files, err := preset.RedisFiles()
		if err != nil {
			return nil, err
		}
		o.Guest.Extra = append(o.Guest.Extra, files...)
	}
	r := &runner{o: o, res: &Result{Started: time.Now().UTC(), Seed: o.Seed}, start: time.Now()}
	defer func() {
		if r.m != nil {
			r.m.Close()
		}
	}()
	if err := r.boot(ctx); err != nil {
		return nil, err
	}
	r.res.Kernel = r.m.Kernel.Meta.KernelRelease
	r.res.Variant = o.Guest.KernelOptions().Variant()
	r.res.Patches, r.res.Omitted = r.m.Kernel.Meta.Patches, r.m.Kernel.Meta.Omitted
	r.res.Accel = string(r.m.Accel.Kind)

	all, err := cell.List(ctx, r.m)
	if err != nil {
		return nil, err
	}
	scen := filter(all, o.Scenarios)
	if len(scen) == 0 {
		var names []string
		for _, s := range all {
			names = append(names, s.Name)
		}
		return nil, fmt.Errorf("no scenario matches %v; have: %s", o.Scenarios, strings.Join(names, ", "))
	}
	trackers := Trackers
	if len(o.Trackers) > 0 {
		trackers = o.Trackers
	}
	total := len(scen) * len(trackers)
	n := 0
	// A kernel without /dev/ldt (vanilla, a part of the series before
	// mm/ldt.c, CONFIG_LDT=n): the LDT trackers' skips are N/A there.
	noDevice := !r.m.Kernel.Meta.HasDevice()
	for i := range scen {
		s := &scen[i]
		for _, t := range trackers {
			n++
			c, err := r.run(ctx, cell.Spec{Kind: cell.KindScenario, Scenario: s, Tracker: t, Seed: o.Seed, Epochs: o.Epochs, Vanilla: noDevice})
			if err != nil && !vm.IsGuestFault(err) {
				return nil, err
			}
			sc := c.Scenario
			sc.Repro = r.repro(s.Name, t)
			r.res.Cells = append(r.res.Cells, sc)
			r.logf("[%3d/%d] %-20s %-13s %-9s missed %-5d corrupted %-5d extra %-6d %5.1fs%s\n",
				n, total, s.Name, t, sc.Verdict, sc.Missed, sc.Corrupted, sc.Extra, sc.Took, suffix(sc))
		}
	}
	if o.Compare {
		for i := range scen {
			s := &scen[i]
			// A scenario that shows LDT's own documented gap has nothing
			// for LDT to report: no comparison to make.
			if !s.Allows("ldt") || !s.Allows("softdirty") || result.KnownGap(s.Name, "ldt") != "" {
				continue
			}
			c, err := r.run(ctx, cell.Spec{Kind: cell.KindCompare, Scenario: s, Seed: o.Seed, Epochs: o.Epochs})
			if err != nil && !vm.IsGuestFault(err) {
				return nil, err
			}
			r.res.Reports = append(r.res.Reports, c.ReportTitles...)
			if c.Failed() {
				why := c.Error
				if len(c.ReportTitles) > 0 {
					why = fmt.Sprintf("kernel reports: %v", c.ReportTitles)
				}
				r.logf("compare %s: %v\n", s.Name, why)
				r.res.Problems = append(r.res.Problems, fmt.Sprintf("compare %s: %v", s.Name, why))
				continue
			}
			r.res.Compare = append(r.res.Compare, c.Compare)
		}
	}
	if o.Checkpoint {
		for _, target := range []string{"synthetic", "redis"} {
			// naive is the negative control: it must miss pages.
			for _, t := range []string{"ldt", "softdirty", "naive"} {
				if len(o.Trackers) > 0 && !slices.Contains(o.Trackers, t) {
					continue
				}
				c, err := r.run(ctx, cell.Spec{Kind: cell.KindCheckpoint, Target: target, Tracker: t, Seed: o.Seed})
				if err != nil && !vm.IsGuestFault(err) {
					return nil, err
				}
				cp := c.Checkpoint
				r.res.Checkpoint = append(r.res.Checkpoint, cp)
				r.logf("[checkpoint] %-10s %-10s %-6s missed %d of %d pages compared (%d swapped at end) %.1fs %s\n",
					target, t, cp.Verdict, cp.Missed, cp.Compared, cp.Swapped, cp.Took, cp.Error)
			}
		}
	}
	if o.Migrate {
		for _, t := range []string{"ldt", "softdirty", "naive"} {
			if len(o.Trackers) > 0 && !slices.Contains(o.Trackers, t) {
				continue
			}
			c, err := r.run(ctx, cell.Spec{Kind: cell.KindMigrate, Tracker: t, Seed: o.Seed, Migrate: preset.MigrateShort})
			if err != nil && !vm.IsGuestFault(err) {
				return nil, err
			}
			r.res.Migrate = append(r.res.Migrate, c.Migrate)
			r.logf("[migrate] %s %.1fs\n", c.Migrate.Line(), c.Took)
		}
	}
	if o.Stress > 0 {
		if err := r.stress(ctx, trackers); err != nil {
			return nil, err
		}
	}
	// Whatever the kernel printed after the last phase fails the run too.
	for _, rep := range r.m.ReportsSince(ctx, r.mark) {
		r.res.Reports = append(r.res.Reports, rep.String())
		r.res.Problems = append(r.res.Problems, "kernel report after the last phase: "+rep.String())
	}
	r.res.tally(trackers)
	r.res.Seconds = time.Since(r.start).Seconds()
	return r.res, nil
}

// tally adds the run's own problems (a mutant among trackers that no cell
// CAUGHT) and counts the failures: every problem, and every cell,
// checkpoint run, stress run and migration whose verdict failed.
func (res *Result) tally(trackers []string) {
	for _, m := range Mutants {
		if !slices.Contains(trackers, m) {
			continue
		}
		caught := false
		for _, c := range res.Cells {
			caught = caught || (c.Tracker == m && c.Verdict == result.VCaught)
		}
		if !caught {
			res.Problems = append(res.Problems, fmt.Sprintf("mutant %s survived: no cell of the catalogue failed it", m))
		}
	}
	res.Failures += len(res.Problems)
	for _, c := range res.Cells {
		if c.Failed() {
			res.Failures++
		}
	}
	for _, cp := range res.Checkpoint {
		if cp.Failed() {
			res.Failures++
		}
	}
	for _, sr := range res.Stress {
		if sr.Failed() {
			res.Failures++
		}
	}
	for _, mg := range res.Migrate {
		if mg.Failed() {
			res.Failures++
		}
	}
}

// run is the policy around one cell: the cell's error is kept in the cell;
// a guest fault gets a fresh guest (the next cell must not inherit a
// wedged one), and a guest that cannot be booted again ends the run.
func (r *runner) run(ctx context.Context, s cell.Spec) (*cell.Cell, error) {
	c, err := cell.RunCell(ctx, r.m, s)
	r.mark = r.m.ReportMark()
	if ctx.Err() != nil {
		return c, ctx.Err()
	}
	if err != nil && vm.IsGuestFault(err) {
		if berr := r.boot(ctx); berr != nil {
			return c, fmt.Errorf("booting a fresh guest after %s failed (%v): %w", s.Name(), firstLine(err.Error()), berr)
		}
	}
	return c, err
}

func suffix(c *Cell) string {
	switch {
	case c.Error != "":
		return "  " + firstLine(c.Error)
	case len(c.KernelReport) > 0:
		return "  kernel: " + c.KernelReport[0]
	case c.Verdict == result.VFail || c.Verdict == result.VNoTeeth || c.Verdict == result.VKnownGap || c.Verdict == result.VSkip:
		return "  " + firstLine(c.Reason)
	}
	return ""
}

func firstLine(s string) string { return cell.FirstLine(s) }

func filter(all []cell.Scenario, names []string) []cell.Scenario {
	if len(names) == 0 {
		return all
	}
	var out []cell.Scenario
	for _, s := range all {
		if slices.Contains(names, s.Name) {
			out = append(out, s)
		}
	}
	return out
}

func (r *runner) boot(ctx context.Context) error {
	if r.m != nil {
		r.m.Close()
	}
	m, err := lab.Boot(ctx, r.o.Guest)
	if err != nil {
		return err
	}
	r.m = m
	r.mark = m.ReportMark()
	r.logf("guest %s: kernel %s (%s), %s, %d MiB, %d vCPUs, booted in %.2fs\n", m.Name, m.Kernel.Meta.KernelRelease,
		r.o.Guest.KernelOptions().Variant(), m.Accel.Kind, r.o.Guest.MemoryMiB, r.o.Guest.CPUs, m.BootTime.Seconds())
	return nil
}

// stress runs the race hunt under the trackers asked for that it supports
// (softdirty is N/A there; mutants are judged by the catalogue).
func (r *runner) stress(ctx context.Context, trackers []string) error {
	o := stress.Options{Duration: r.o.Stress, Pages: 8192, THP: true, Seed: r.o.Seed}
	for _, t := range stress.DefaultTrackers {
		if slices.Contains(trackers, t) {
			o.Trackers = append(o.Trackers, t)
		}
	}
	if len(o.Trackers) == 0 {
		return nil
	}
	for _, p := range stress.Plan(o) {
		if r.o.Progress != nil {
			fmt.Fprintf(r.o.Progress, "[stress] %s\n", stress.Command(p.Tracker, p.THP, o))
		}
		c, err := r.run(ctx, cell.Spec{Kind: cell.KindStress, Tracker: p.Tracker, THP: p.THP, Stress: o, Seed: r.o.Seed})
		if err != nil && !vm.IsGuestFault(err) {
			return err
		}
		sr := *c.Stress
		r.res.Stress = append(r.res.Stress, sr)
		r.logf("[stress] %s thp=%v: %s (lost %d, %d writes, %d collections)\n", p.Tracker, p.THP, sr.Verdict, sr.LostPages, sr.Writes, sr.Collections)
	}
	return nil
}

// repro is the command that reruns one cell.
func (r *runner) repro(scenario, tracker string) string {
	sp := cell.Spec{Kind: cell.KindScenario, Scenario: &cell.Scenario{Name: scenario}, Tracker: tracker, Seed: r.o.Seed, Epochs: r.o.Epochs}
	return sp.Repro() + r.o.Guest.KernelOptions().Flags()
}

// Table renders the scenario × tracker matrix.
func Table(w io.Writer, res *Result) {
	// Scenario names, reasons and kernel report titles come from the
	// guest: control characters shown escaped.
	tw := termsafe.NewWriter(w)
	defer tw.Flush()
	w = tw
	fmt.Fprintf(w, "\nldtlab check: kernel %s (%s), %s, seed %d, %.0fs\n\n", res.Kernel, res.Variant, res.Accel, res.Seed, res.Seconds)
	fmt.Fprintf(w, "%-20s %-13s %-9s %7s %7s %9s %7s %6s\n", "SCENARIO", "TRACKER", "VERDICT", "MISSED", "EXTRA", "CORRUPTED", "REPORTS", "TIME")
	for _, c := range res.Cells {
		if c.Verdict == result.VNA {
			fmt.Fprintf(w, "%-20s %-13s %-9s %s\n", c.Scenario, c.Tracker, c.Verdict, firstLine(c.Reason))
			continue
		}
		fmt.Fprintf(w, "%-20s %-13s %-9s %7d %7d %9d %7d %5.1fs\n", c.Scenario, c.Tracker, c.Verdict, c.Missed, c.Extra, c.Corrupted, len(c.KernelReport), c.Took)
	}
	if len(res.Compare) > 0 {
		fmt.Fprintf(w, "\nLDT vs soft-dirty (pages reported per epoch; ldt∖sd and sd∖ldt)\n")
		for _, v := range res.Compare {
			var parts []string
			for _, e := range v.Epochs {
				parts = append(parts, fmt.Sprintf("%d/%d (+%d/-%d)", e.LDT, e.SoftDirty, e.LDTOnly, e.SoftDirtyOnl))
			}
			fmt.Fprintf(w, "  %-20s %s\n", v.Scenario, strings.Join(parts, "  "))
		}
	}
	if len(res.Checkpoint) > 0 {
		fmt.Fprintf(w, "\nincremental checkpoint oracle\n")
		for _, cp := range res.Checkpoint {
			fmt.Fprintf(w, "  %-10s %-10s %-5s missed %d of %d pages (%d in swap at the end) %.1fs %s\n", cp.Target, cp.Tracker, cp.Verdict, cp.Missed, cp.Compared, cp.Swapped, cp.Took, firstLine(cp.Error))
		}
	}
	if len(res.Migrate) > 0 {
		fmt.Fprintf(w, "\nmigration of redis (pre-copy by the tracker, CRIU restore from its image, under pressure)\n")
		for _, mg := range res.Migrate {
			fmt.Fprintf(w, "  %s\n", mg.Line())
			if mg.Failed() {
				fmt.Fprintf(w, "    reproduce: %s\n", preset.MigrateShort.Repro(mg.Tracker))
			}
		}
	}
	if len(res.Stress) > 0 {
		fmt.Fprintf(w, "\nstress (writers + collector copying into a shadow + agitators)\n")
		for _, sr := range res.Stress {
			fmt.Fprintf(w, "  %-13s thp=%-5v %-9s lost %d pages (%d writes, %d collections) %s\n", sr.Tracker, sr.THP, sr.Verdict, sr.LostPages, sr.Writes, sr.Collections, firstLine(sr.Error+sr.Known))
		}
	}
	var fails []*Cell
	for _, c := range res.Cells {
		if c.Failed() {
			fails = append(fails, c)
		}
	}
	sort.SliceStable(fails, func(i, j int) bool { return fails[i].Scenario < fails[j].Scenario })
	if len(fails) > 0 {
		fmt.Fprintf(w, "\n%d unexpected outcome(s):\n", len(fails))
		for _, c := range fails {
			fmt.Fprintf(w, "  %s × %s: %s\n    %s\n    reproduce: %s\n", c.Scenario, c.Tracker, c.Verdict, firstLine(c.Reason+" "+c.Error), c.Repro)
			for _, k := range c.KernelReport {
				fmt.Fprintf(w, "    kernel: %s\n", k)
			}
		}
	}
	if len(res.Problems) > 0 {
		fmt.Fprintf(w, "\n%d problem(s) outside the cells:\n", len(res.Problems))
		for _, p := range res.Problems {
			fmt.Fprintf(w, "  %s\n", firstLine(p))
		}
	}
	verdicts := map[result.Verdict]int{}
	for _, c := range res.Cells {
		verdicts[c.Verdict]++
	}
	var keys []result.Verdict
	for k := range verdicts {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%d %s", verdicts[k], k))
	}
	fmt.Fprintf(w, "\n%d cells: %s; %d failure(s)\n", len(res.Cells), strings.Join(parts, ", "), res.Failures)
}
