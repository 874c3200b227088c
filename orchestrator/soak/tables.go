package soak

import (
	"fmt"
	"sort"
	"strings"
)

// table is one section of the report, rendered alike in Markdown and HTML.
type table struct {
	Title string
	Note  string // under the title
	Head  []string
	Rows  [][]string
	Empty string // said instead of an empty table
}

// envLines are the report's header lines from the run's environment.
func envLines(first, last *Start, endLoad string) []string {
	if first == nil {
		return nil
	}
	e := first.Env
	if e == nil {
		return []string{"environment: not recorded (a journal from before the soak recorded it)"}
	}
	series := "vanilla kernel (no LDT patches)"
	if e.Patches > 0 {
		series = fmt.Sprintf("%d patches of kmod/patches, sha256 of the series in order `%s`", e.Patches, e.SeriesSHA256)
		if len(e.Omitted) > 0 {
			series += fmt.Sprintf(" (without %s)", strings.Join(e.Omitted, ", "))
		}
	}
	load := "load average at the start " + e.LoadAtStart
	if endLoad != "" {
		load += ", at the end " + endLoad
	}
	out := []string{
		"ldtlab commit: `" + e.Commit + "`",
		"patch series: " + series,
		fmt.Sprintf("kernel config: %s; build key `%s`; source %s", e.Config, e.BuildKey, e.Source),
		"QEMU: " + orDash(e.QEMU),
		fmt.Sprintf("accelerator: %s (%s)", e.Accel, e.AccelReason),
		fmt.Sprintf("host: %s, %d cores, %s; %s", e.HostCPU, e.HostCores, e.HostMemory, load),
	}
	if last != nil && last != first && last.Env != nil && (last.Env.Commit != e.Commit || last.Env.BuildKey != e.BuildKey || last.Env.SeriesSHA256 != e.SeriesSHA256) {
		out = append(out, fmt.Sprintf("the last session ran ldtlab `%s`, build key `%s`, series `%s`: not the first session's", last.Env.Commit, last.Env.BuildKey, last.Env.SeriesSHA256))
	}
	return out
}

func orDash(s string) string {
	if s == "" {
		return "–"
	}
	return s
}

// trackerTable: per tracker, not one total over all of them.
func trackerTable(s Summary) table {
	t := table{Title: "Per tracker", Note: "Finished rounds only. Fuzz sequences: sequences run under the tracker (each fuzz sequence runs under every tracker that can run it); pages verified: checked against ground truth (scenario pages written, stress pages copied into the shadow, fuzz pages checked, checkpoint and migration pages compared).",
		Head: []string{"tracker", "scenario cells", "stress runs", "fuzz sequences", "checkpoint runs", "migrations", "pages verified", "failures"}, Empty: "No tracker ran."}
	for _, tr := range orderTrackers(sortedKeys(s.Trackers)) {
		x := s.Trackers[tr]
		t.Rows = append(t.Rows, []string{tr, itoa(x.Scenarios), itoa(x.Stress), itoa(x.FuzzSeqs), itoa(x.Checkpoints), itoa(x.Migrations), human(x.Pages), itoa(x.Failures)})
	}
	if s.FuzzNoSummary > 0 {
		t.Note += fmt.Sprintf(" %d of %d fuzz steps gave no summary (see Failures): their sequences are not counted.", s.FuzzNoSummary, s.FuzzSteps)
	}
	return t
}

// orderTrackers puts ldt and the references first, then the rest.
func orderTrackers(ts []string) []string {
	var out []string
	seen := map[string]bool{}
	for _, t := range Trackers {
		for _, x := range ts {
			if x == t {
				out = append(out, t)
				seen[t] = true
			}
		}
	}
	for _, x := range ts {
		if !seen[x] {
			out = append(out, x)
		}
	}
	return out
}

func agitatorTable(s Summary) table {
	t := table{Title: "Stress agitators", Note: "How often each agitator acted over the soak's stress runs and what it achieved, as ldt-stress counts it (effects marked \"all causes\" are vmstat deltas during the agitator's run, shared with the other agitators).",
		Head: []string{"agitator", "stress runs", "actions", "what it did"}, Empty: "No stress run recorded its agitators."}
	for _, a := range sortedKeys(s.Agitators) {
		x := s.Agitators[a]
		t.Rows = append(t.Rows, []string{a, itoa(x.Runs), itoa(x.Actions), effectsText(x.Effects)})
	}
	if s.StressNoDetail > 0 {
		t.Note += fmt.Sprintf(" %d of %d stress runs recorded no agitators (an error before its result, or an older journal).", s.StressNoDetail, s.StressSteps)
	}
	return t
}

func effectsText(m map[string]int) string {
	if len(m) == 0 {
		return "–"
	}
	var p []string
	for _, k := range sortedKeys(m) {
		p = append(p, fmt.Sprintf("%s %s", human(int64(m[k])), k))
	}
	return strings.Join(p, "; ")
}

func fuzzOpTable(s Summary) table {
	t := table{Title: "Fuzz operations", Note: "Over every tracker's run of every fuzz sequence: done is what did what it says (an operation with a parenthesis counts its effect: pages merged, pages moved to the target node, pages not resident right after a pageout, hinting faults), refused is what the kernel declined (EBUSY, EINVAL, a collapse it would not make).",
		Head: []string{"operation", "done", "refused by the kernel"}, Empty: "No fuzz step gave a summary."}
	for _, op := range sortedKeys(s.FuzzOps) {
		x := s.FuzzOps[op]
		t.Rows = append(t.Rows, []string{op, itoa(x.Done), itoa(x.Failed)})
	}
	return t
}

// vmstatColumns are the counters the per-round table shows, whether or
// not they moved (a zero says the path never ran); every other counter
// that moved is in the totals table.
var vmstatColumns = []string{"pswpin", "pswpout", "thp_fault_alloc", "thp_collapse_alloc", "thp_split_pmd", "thp_migration_success",
	"numa_hint_faults", "numa_pages_migrated", "pgmigrate_success", "compact_isolated", "sys_ksm_full_scans", "cow_ksm"}

func vmstatRoundTable(s Summary) table {
	t := table{Title: "Kernel activity per round (the guest's vmstat deltas)", Note: "Sampled by the soak on the guest before and after every step; a round's delta is the sum of its steps' (cells: steps with both samples / steps).",
		Head: append([]string{"round", "worker", "steps", "cells"}, vmstatColumns...), Empty: "No round has a vmstat sample."}
	recs := append([]RoundRecord(nil), s.RoundRecs...)
	sort.SliceStable(recs, func(i, j int) bool { return recs[i].Round < recs[j].Round })
	any := false
	for _, r := range recs {
		row := []string{itoa(r.Round), itoa(r.Worker), kindsText(s.RoundKinds[r.Round]), fmt.Sprintf("%d/%d", r.VMStatCells, r.Cells)}
		for _, k := range vmstatColumns {
			row = append(row, i64(r.VMStat[k]))
		}
		any = any || r.VMStat != nil
		t.Rows = append(t.Rows, row)
	}
	if !any {
		t.Rows = nil
		return t
	}
	total := []string{"all", "", "", ""}
	for _, k := range vmstatColumns {
		total = append(total, i64(s.VMStat[k]))
	}
	t.Rows = append(t.Rows, total)
	return t
}

func vmstatTotalTable(s Summary) table {
	t := table{Title: "Every counter that moved (sum over the finished rounds)", Head: []string{"counter", "total", "rounds in which it moved"}, Empty: "None."}
	moved := map[string]int{}
	for _, r := range s.RoundRecs {
		for k, v := range r.VMStat {
			if v != 0 {
				moved[k]++
			}
		}
	}
	for _, k := range s.VMStat.Keys() {
		if s.VMStat[k] == 0 && moved[k] == 0 {
			continue
		}
		t.Rows = append(t.Rows, []string{k, i64(s.VMStat[k]), itoa(moved[k])})
	}
	return t
}

// kindsText is a round's steps: "3 scenario, stress, fuzz".
func kindsText(m map[string]int) string {
	var p []string
	for _, k := range []string{"scenario", "stress", "fuzz", "checkpoint", "migrate", "selftest", "inject"} {
		switch n := m[k]; {
		case n == 1:
			p = append(p, k)
		case n > 1:
			p = append(p, fmt.Sprintf("%d %s", n, k))
		}
	}
	return strings.Join(p, ", ")
}

// dumpTable lists the steps that hung or ran out of time, with where
// their console and sysrq-t/w dump are.
func dumpTable(s Summary) table {
	t := table{Title: "Hung or timed-out steps (console and sysrq-t/w dump kept)", Head: []string{"round", "worker", "step", "verdict", "directory"},
		Empty: "None: no step hung or ran out of its time limit."}
	for _, c := range s.Dumps {
		t.Rows = append(t.Rows, []string{itoa(c.Round), itoa(c.Worker), c.Step.String(), c.Verdict, c.Dump})
	}
	return t
}

func itoa(n int) string  { return fmt.Sprint(n) }
func i64(n int64) string { return fmt.Sprint(n) }
