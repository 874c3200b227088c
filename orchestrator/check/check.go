// Package check is the host side of the correctness catalogue (`labctl
// check`): it boots a guest sized for real memory pressure, runs every
// scenario of guest/cmd/ldt-check under every tracker, the LDT vs
// soft-dirty comparison and the incremental checkpoint oracle, watches the
// console for kernel reports after each cell, and judges the outcomes.
package check

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"ldtlab/images/rootfs"
	"ldtlab/orchestrator/lab"
	"ldtlab/orchestrator/report"
	"ldtlab/orchestrator/stress"
)

// Trackers in display order.
var Trackers = []string{"ldt", "naive", "softdirty", "pagemap-scan"}

// Mutants are the deliberately broken trackers of guest/tracker (not run
// by default; `--tracker mutant-all,...`): each must be caught by at least
// one cell, or the catalogue has no teeth against that class of bug.
var Mutants = []string{"mutant-all", "mutant-noswapin", "mutant-pfn"}

// IsMutant tells a deliberately broken tracker.
func IsMutant(t string) bool { return slices.Contains(Mutants, t) }

// Scenario is one entry of `ldt-check -list`.
type Scenario struct {
	Name     string            `json:"name"`
	Paths    string            `json:"paths"`
	Doc      string            `json:"doc"`
	Naive    string            `json:"naive_expectation"`
	Trackers []string          `json:"trackers"`
	NotFor   map[string]string `json:"not_for,omitempty"`
}

// Cell is one scenario under one tracker, as ldt-check reports it, plus
// what the host saw.
type Cell struct {
	Scenario         string         `json:"scenario"`
	Tracker          string         `json:"tracker"`
	Seed             uint64         `json:"seed"`
	Epochs           int            `json:"epochs"`
	Outcome          string         `json:"outcome"` // pass | fail | skip | n/a
	AsExpected       bool           `json:"as_expected"`
	Reason           string         `json:"reason"`
	Missed           int            `json:"missed"`
	Extra            int            `json:"extra"`
	ExtraClassified  map[string]int `json:"extra_classified,omitempty"`
	Corrupted        int            `json:"corrupted"`
	QuietEpochs      int            `json:"quiet_epochs"`
	QuietReported    int            `json:"quiet_reported"`
	Unexplained      int            `json:"unexplained_extra"`
	NaiveExpectation string         `json:"naive_expectation"`
	DurationMS       int64          `json:"duration_ms"`
	Notes            []string       `json:"notes,omitempty"`
	Samples          []string       `json:"samples,omitempty"`

	// Host side.
	Verdict      string   `json:"verdict"` // PASS, FAIL, CAUGHT, NO-TEETH, KNOWN-GAP, SKIP, N/A, SURVIVED (a mutant passed this cell)
	KernelReport []string `json:"kernel_reports,omitempty"`
	Error        string   `json:"error,omitempty"`
	Repro        string   `json:"repro,omitempty"`
	Took         float64  `json:"took_s"`
}

// Failed tells whether the cell is an unexpected outcome.
func (c *Cell) Failed() bool {
	switch c.Verdict {
	case "FAIL", "NO-TEETH", "SKIP": // a check that did not run is not a pass
		return true
	}
	return false
}

// KnownGap is a documented kernel limitation of a tracker (a reference
// tracker's, or one LDT declares out of scope in kmod/README): the cell is
// shown, with its counts, and does not fail the run. It excuses missed
// pages only, never corruption.
type KnownGap struct {
	Scenario, Tracker, Why string
}

// KnownGaps of the reference trackers found by this lab. Each must name
// the kernel code responsible.
var KnownGaps = []KnownGap{
	{"ksm", "softdirty", "KSM replaces a merged PTE with one that has no soft-dirty bit (mm/ksm.c replace_page), so writes made before the merge are lost to soft-dirty"},
	// LDT's own documented limit (kmod/README rows 2 and 7): file and shmem
	// mappings lose tracker state when their PTEs are zapped.
	{"shmem-thp-split", "ldt", "splitting a shmem THP zaps the PMD (mm/huge_memory.c __split_huge_pmd_locked, non-anonymous branch); the pages refault clean from the page cache, so writes not yet collected are not reported (kmod/README row 7; the kernel's own dirtiness is kept)"},
	{"shmem-thp-split", "softdirty", "the same zap: the refaulted PTEs carry no soft-dirty bit once clear_refs cleared VM_SOFTDIRTY"},
}

func knownGap(scenario, tracker string) string {
	for _, g := range KnownGaps {
		if g.Scenario == scenario && g.Tracker == tracker {
			return g.Why
		}
	}
	return ""
}

// Options filter and size the run.
type Options struct {
	Guest      lab.Options
	Scenarios  []string // empty = all
	Trackers   []string // empty = all
	Seed       uint64
	Epochs     int  // 0 = each scenario's default
	Compare    bool // run the LDT vs soft-dirty comparison
	Checkpoint bool // run the checkpoint oracle (synthetic + redis)
	// Stress runs the race hunt (orchestrator/stress) for this long per
	// tracker after the other phases; 0 skips it.
	Stress   time.Duration
	Progress io.Writer
}

// Result is the whole run, written as JSON.
type Result struct {
	Started    time.Time         `json:"started"`
	Kernel     string            `json:"kernel"`
	Variant    string            `json:"variant"`
	Accel      string            `json:"accel"`
	Seed       uint64            `json:"seed"`
	Cells      []*Cell           `json:"cells"`
	Compare    []json.RawMessage `json:"compare,omitempty"`
	Checkpoint []*Checkpoint     `json:"checkpoint,omitempty"`
	Stress     []stress.Run      `json:"stress,omitempty"`
	Reports    []string          `json:"kernel_reports,omitempty"`
	// Problems are failures outside the cells: a comparison that did not
	// run, a kernel report between phases, a mutant no cell caught.
	Problems []string `json:"problems,omitempty"`
	Seconds  float64  `json:"seconds"`
	Failures int      `json:"failures"`
}

// Checkpoint is one run of the incremental checkpoint oracle.
type Checkpoint struct {
	Target   string          `json:"target"`
	Tracker  string          `json:"tracker"`
	Verdict  string          `json:"verdict"`
	Missed   int             `json:"missed"`
	Compared int             `json:"compared_pages"`
	Swapped  int             `json:"swapped_pages_at_end"`
	Reason   string          `json:"reason"`
	Raw      json.RawMessage `json:"raw,omitempty"`
	Reports  []string        `json:"kernel_reports,omitempty"`
	Error    string          `json:"error,omitempty"`
	Took     float64         `json:"took_s"`
}

// GuestDefaults sizes the guest for real pressure: little RAM, zram and a
// disk swap device, a data disk for writeback, two fake NUMA nodes for
// migration, 2 vCPUs for the concurrency scenario.
func GuestDefaults(o *lab.Options) {
	if o.MemoryMiB == 0 || o.MemoryMiB == 1024 {
		o.MemoryMiB = 768
	}
	if o.CPUs < 2 {
		o.CPUs = 2
	}
	if o.SwapMiB == 0 {
		o.SwapMiB = 1024
	}
	if o.DataMiB <= 0 {
		o.DataMiB = 256
	}
	if !strings.Contains(o.Cmdline, "numa=fake") {
		o.Cmdline = strings.TrimSpace(o.Cmdline + " numa=fake=2")
	}
	if o.Name == "" {
		o.Name = "check"
	}
}

// Redis is shipped into the image for the checkpoint oracle.
func RedisFiles() ([]rootfs.File, error) {
	var files []rootfs.File
	for _, p := range []string{"/usr/bin/redis-server", "/usr/bin/redis-benchmark", "/usr/bin/redis-cli"} {
		fs, err := rootfs.HostProgram(p, map[bool]string{true: "redis-server", false: "redis-tools"}[p == "/usr/bin/redis-server"])
		if err != nil {
			return nil, err
		}
		files = append(files, fs...)
	}
	// Deduplicate shared libraries.
	seen := map[string]bool{}
	var out []rootfs.File
	for _, f := range files {
		if !seen[f.Path] {
			seen[f.Path] = true
			out = append(out, f)
		}
	}
	return out, nil
}

type runner struct {
	o     Options
	m     *lab.Machine
	res   *Result
	start time.Time
	// console offset already scanned for reports
	scanned int
}

func (r *runner) logf(format string, args ...any) {
	if r.o.Progress != nil {
		fmt.Fprintf(r.o.Progress, format, args...)
	}
}

// Run executes the catalogue. The returned error is for failures of the
// lab itself; unexpected outcomes are counted in Result.Failures.
func Run(ctx context.Context, o Options) (*Result, error) {
	GuestDefaults(&o.Guest)
	if o.Checkpoint {
		files, err := RedisFiles()
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
	r.res.Accel = string(r.m.Accel.Kind)

	out, err := r.m.Run(ctx, "ldt-check -list")
	if err != nil {
		return nil, err
	}
	if out.Code != 0 {
		return nil, fmt.Errorf("ldt-check -list failed: %s", out.Stderr)
	}
	var all []Scenario
	if err := json.Unmarshal(out.Stdout, &all); err != nil {
		return nil, fmt.Errorf("parsing ldt-check -list: %w", err)
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
	for _, s := range scen {
		for _, t := range trackers {
			n++
			c := r.cell(ctx, s, t)
			r.res.Cells = append(r.res.Cells, c)
			r.logf("[%3d/%d] %-20s %-13s %-9s missed %-5d corrupted %-5d extra %-6d %5.1fs%s\n",
				n, total, s.Name, t, c.Verdict, c.Missed, c.Corrupted, c.Extra, c.Took, suffix(c))
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
		}
	}
	if o.Compare {
		for _, s := range scen {
			// A scenario that shows LDT's own documented gap has nothing
			// for LDT to report: no comparison to make.
			if !allows(s, "ldt") || !allows(s, "softdirty") || knownGap(s.Name, "ldt") != "" {
				continue
			}
			raw, err := r.compare(ctx, s)
			if err != nil {
				r.logf("compare %s: %v\n", s.Name, err)
				r.res.Problems = append(r.res.Problems, fmt.Sprintf("compare %s: %v", s.Name, err))
				continue
			}
			r.res.Compare = append(r.res.Compare, raw)
		}
	}
	if o.Checkpoint {
		for _, target := range []string{"synthetic", "redis"} {
			// naive is the negative control: it must miss pages.
			for _, t := range []string{"ldt", "softdirty", "naive"} {
				if len(o.Trackers) > 0 && !slices.Contains(o.Trackers, t) {
					continue
				}
				cp := r.checkpoint(ctx, target, t)
				r.res.Checkpoint = append(r.res.Checkpoint, cp)
				r.logf("[checkpoint] %-10s %-10s %-6s missed %d of %d pages compared (%d swapped at end) %.1fs %s\n",
					target, t, cp.Verdict, cp.Missed, cp.Compared, cp.Swapped, cp.Took, cp.Error)
			}
		}
	}
	if o.Stress > 0 {
		r.stress(ctx, trackers)
	}
	// Whatever the kernel printed after the last phase fails the run too.
	if reps := r.newReports(); len(reps) > 0 {
		r.res.Reports = append(r.res.Reports, reps...)
		for _, rep := range reps {
			r.res.Problems = append(r.res.Problems, "kernel report after the last phase: "+rep)
		}
	}
	for _, m := range Mutants {
		if !slices.Contains(trackers, m) {
			continue
		}
		caught := false
		for _, c := range r.res.Cells {
			caught = caught || (c.Tracker == m && c.Verdict == "CAUGHT")
		}
		if !caught {
			r.res.Problems = append(r.res.Problems, fmt.Sprintf("mutant %s survived: no cell of the catalogue failed it", m))
		}
	}
	r.res.Failures += len(r.res.Problems)
	for _, c := range r.res.Cells {
		if c.Failed() {
			r.res.Failures++
		}
	}
	for _, cp := range r.res.Checkpoint {
		if cp.Verdict != "PASS" && cp.Verdict != "CAUGHT" && cp.Verdict != "NOT-CAUGHT" {
			r.res.Failures++
		}
	}
	for _, sr := range r.res.Stress {
		if sr.Failed() {
			r.res.Failures++
		}
	}
	r.res.Seconds = time.Since(r.start).Seconds()
	return r.res, nil
}

func suffix(c *Cell) string {
	switch {
	case c.Error != "":
		return "  " + firstLine(c.Error)
	case len(c.KernelReport) > 0:
		return "  kernel: " + c.KernelReport[0]
	case c.Verdict == "FAIL" || c.Verdict == "NO-TEETH" || c.Verdict == "KNOWN-GAP" || c.Verdict == "SKIP":
		return "  " + firstLine(c.Reason)
	}
	return ""
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 110 {
		s = s[:107] + "..."
	}
	return s
}

func filter(all []Scenario, names []string) []Scenario {
	if len(names) == 0 {
		return all
	}
	var out []Scenario
	for _, s := range all {
		if slices.Contains(names, s.Name) {
			out = append(out, s)
		}
	}
	return out
}

// allows tells whether scenario s runs under tracker t; a mutant runs
// wherever ldt does.
func allows(s Scenario, t string) bool {
	if IsMutant(t) {
		t = "ldt"
	}
	return slices.Contains(s.Trackers, t)
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
	r.scanned = 0
	r.logf("guest %s: kernel %s (%s), %s, %d MiB, %d vCPUs, booted in %.2fs\n", m.Name, m.Kernel.Meta.KernelRelease,
		r.o.Guest.KernelOptions().Variant(), m.Accel.Kind, r.o.Guest.MemoryMiB, r.o.Guest.CPUs, m.BootTime.Seconds())
	return nil
}

// newReports returns the kernel reports printed since the last call.
// stress runs the race hunt under the trackers asked for that it supports
// (softdirty is N/A there; mutants are judged by the catalogue).
func (r *runner) stress(ctx context.Context, trackers []string) {
	var ts []string
	for _, t := range []string{"ldt", "pagemap-scan", "naive"} {
		if slices.Contains(trackers, t) {
			ts = append(ts, t)
		}
	}
	if len(ts) == 0 {
		return
	}
	runs, err := stress.Job(ctx, r.m, stress.Options{
		Trackers: ts, Duration: r.o.Stress, Pages: 8192, THP: true, Seed: r.o.Seed,
	}, r.o.Progress)
	r.res.Stress = runs
	if err != nil {
		r.res.Problems = append(r.res.Problems, "stress: "+err.Error())
	}
	// The stress job judged the reports of its runs itself.
	r.newReports()
}

func (r *runner) newReports() []string {
	log := r.m.ConsoleLog()
	if r.scanned > len(log) {
		r.scanned = 0
	}
	var out []string
	for _, rep := range report.Parse(log[r.scanned:]) {
		out = append(out, rep.String())
	}
	r.scanned = len(log)
	return out
}

// Repro is the command that reruns one cell.
func (r *runner) repro(scenario, tracker string) string {
	cmd := fmt.Sprintf("labctl check --scenario %s --tracker %s --seed %d", scenario, tracker, r.o.Seed)
	if r.o.Epochs > 0 {
		cmd += fmt.Sprintf(" --epochs %d", r.o.Epochs)
	}
	if r.o.Guest.Vanilla {
		cmd += " --vanilla"
	}
	if r.o.Guest.Config != "" && r.o.Guest.Config != "debug" {
		cmd += " --config " + r.o.Guest.Config
	}
	return cmd
}

func (r *runner) cell(ctx context.Context, s Scenario, tracker string) *Cell {
	c := &Cell{Scenario: s.Name, Tracker: tracker, Seed: r.o.Seed, NaiveExpectation: s.Naive}
	if !allows(s, tracker) {
		c.Outcome, c.Verdict, c.AsExpected = "n/a", "N/A", true
		c.Reason = s.NotFor[tracker]
		if c.Reason == "" {
			c.Reason = "the scenario does not support this tracker"
		}
		return c
	}
	start := time.Now()
	cmd := fmt.Sprintf("ldt-check -q -scenario %s -tracker %s -seed %d", s.Name, tracker, r.o.Seed)
	if r.o.Epochs > 0 {
		cmd += fmt.Sprintf(" -epochs %d", r.o.Epochs)
	}
	res, err := r.m.Run(ctx, cmd)
	c.Took = time.Since(start).Seconds()
	c.KernelReport = r.newReports()
	c.Repro = r.repro(s.Name, tracker)
	if err != nil {
		c.Verdict, c.Error = "FAIL", err.Error()
		if lab.IsGuestFault(err) {
			// The guest is gone or wedged: continue on a fresh one.
			if berr := r.boot(ctx); berr != nil {
				c.Error += "\nreboot failed: " + berr.Error()
			}
		}
		return c
	}
	if jerr := json.Unmarshal(lastJSON(res.Stdout), c); jerr != nil {
		c.Verdict = "FAIL"
		c.Error = fmt.Sprintf("ldt-check exited %d without a result (%v): %s", res.Code, jerr, firstLine(string(res.Stderr)))
		return c
	}
	c.Verdict = Judge(c, knownGap(s.Name, tracker))
	if IsMutant(tracker) {
		c.Verdict = judgeMutant(c)
	}
	if c.Verdict == "SKIP" && r.o.Guest.Vanilla && (tracker == "ldt" || tracker == "naive" || IsMutant(tracker)) {
		c.Verdict, c.Reason = "N/A", "the vanilla kernel has no /dev/ldt"
	}
	return c
}

// judgeMutant turns a mutant's cell into CAUGHT (the catalogue failed
// it: what must happen somewhere) or SURVIVED (this cell did not notice;
// informational). A skip or a kernel report stays a failure.
func judgeMutant(c *Cell) string {
	switch {
	case len(c.KernelReport) > 0:
		return "FAIL"
	case c.Outcome == "skip":
		return "SKIP"
	case c.Outcome == "fail":
		return "CAUGHT"
	}
	return "SURVIVED"
}

// Judge turns a cell's outcome into the verdict shown in the table.
func Judge(c *Cell, gap string) string {
	if len(c.KernelReport) > 0 {
		return "FAIL"
	}
	switch {
	case c.Outcome == "skip":
		return "SKIP"
	case c.Tracker == "naive":
		if c.NaiveExpectation == "nothing" {
			// Behaving like ldt means passing, not failing some other way
			// (an error, over-reporting).
			if c.Outcome == "pass" && c.Missed == 0 && c.Corrupted == 0 {
				return "PASS"
			}
			return "FAIL"
		}
		if c.AsExpected && (c.Missed > 0 || c.Corrupted > 0) {
			return "CAUGHT"
		}
		return "NO-TEETH"
	default:
		if c.Missed == 0 && c.Corrupted == 0 && c.Outcome == "pass" {
			return "PASS"
		}
		// A known gap excuses missed pages only: not corruption, not an
		// error, not over-reporting.
		if gap != "" && c.Corrupted == 0 && c.Missed > 0 && c.Error == "" && c.QuietReported == 0 && c.Unexplained == 0 && c.Outcome == "fail" {
			c.Reason = "known kernel gap: " + gap + "; " + c.Reason
			return "KNOWN-GAP"
		}
		return "FAIL"
	}
}

var jsonLine = regexp.MustCompile(`(?m)^\{.*\}\s*$`)

// lastJSON picks the result object out of a program's stdout.
func lastJSON(out []byte) []byte {
	all := jsonLine.FindAll(out, -1)
	if len(all) == 0 {
		return out
	}
	return bytes.TrimSpace(all[len(all)-1])
}

func (r *runner) compare(ctx context.Context, s Scenario) (json.RawMessage, error) {
	cmd := fmt.Sprintf("ldt-check -q -compare -scenario %s -seed %d", s.Name, r.o.Seed)
	if r.o.Epochs > 0 {
		cmd += fmt.Sprintf(" -epochs %d", r.o.Epochs)
	}
	res, err := r.m.Run(ctx, cmd)
	if err != nil {
		if lab.IsGuestFault(err) {
			r.boot(ctx)
		}
		return nil, err
	}
	if reps := r.newReports(); len(reps) > 0 {
		r.res.Reports = append(r.res.Reports, reps...)
		return nil, fmt.Errorf("kernel reports: %v", reps)
	}
	raw := lastJSON(res.Stdout)
	var v struct {
		Results []struct {
			Tracker    string `json:"tracker"`
			Outcome    string `json:"outcome"`
			AsExpected bool   `json:"as_expected"`
			Reason     string `json:"reason"`
		} `json:"results"`
		Epochs []json.RawMessage `json:"epochs"`
		Note   string            `json:"note"`
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return nil, fmt.Errorf("no JSON from ldt-check -compare (%v): %s", err, firstLine(string(res.Stderr)))
	}
	// A comparison of runs that failed, or of no epochs, compares nothing.
	for _, x := range v.Results {
		if !x.AsExpected && knownGap(s.Name, x.Tracker) == "" {
			return nil, fmt.Errorf("the %s run of the comparison failed: %s", x.Tracker, x.Reason)
		}
	}
	if len(v.Epochs) == 0 {
		return nil, fmt.Errorf("the comparison has no epochs: %s", v.Note)
	}
	return raw, nil
}

// RedisSetup (exported for the soak until the cell executor lands) starts redis-server in a memory cgroup far below its data set
// (so it swaps), loads it with redis-benchmark in the background, and
// prints the server's pid.
const RedisSetup = `set -e
cg=/sys/fs/cgroup/redis
echo +memory > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
mkdir -p $cg
# memory.high reclaims (and swaps) above the limit without OOM kills,
# which memory.max would do while the checkpointer faults pages back in.
echo 32M > $cg/memory.high
sh -c 'echo $$ > /sys/fs/cgroup/redis/cgroup.procs; exec redis-server --port 6379 --bind 127.0.0.1 --save "" --appendonly no --daemonize no --protected-mode yes >/tmp/redis.log 2>&1' &
for i in $(seq 100); do redis-cli -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -p 6379 ping >/dev/null
# 64 MiB of values, twice the cgroup's memory.high, then keep overwriting
# them while the checkpointer runs.
redis-benchmark -p 6379 -q -t set -n 16000 -r 16000 -d 4096 -P 16 >/dev/null
grep -q '^high [1-9]' $cg/memory.events || { echo "redis never exceeded memory.high" >&2; exit 1; }
( redis-benchmark -p 6379 -q -t set,incr,lpush -n 2000000 -r 16000 -d 4096 -P 4 -c 4 >/dev/null 2>&1 & )
pidof redis-server`

func (r *runner) checkpoint(ctx context.Context, target, tracker string) *Checkpoint {
	cp := &Checkpoint{Target: target, Tracker: tracker}
	start := time.Now()
	defer func() { cp.Took = time.Since(start).Seconds() }()
	var cmd string
	switch target {
	case "synthetic":
		cmd = fmt.Sprintf("ldt-check -q -checkpoint-synthetic -tracker %s -rounds 5 -mb 48 -seed %d", tracker, r.o.Seed)
	case "redis":
		res, err := r.m.Run(ctx, RedisSetup)
		if err != nil || res.Code != 0 {
			cp.Verdict, cp.Error = "FAIL", fmt.Sprintf("starting redis under memory pressure: %v %s", err, firstLine(string(res.Stderr)))
			return cp
		}
		pid := strings.Fields(string(res.Stdout))
		if len(pid) == 0 {
			cp.Verdict, cp.Error = "FAIL", "redis-server is not running"
			return cp
		}
		cmd = fmt.Sprintf("ldt-check -q -checkpoint -tracker %s -pid %s -rounds 5 -interval 1s; pkill redis-benchmark; redis-cli -p 6379 shutdown nosave >/dev/null 2>&1; true", tracker, pid[0])
	}
	res, err := r.m.Run(ctx, cmd)
	cp.Reports = r.newReports()
	if err != nil {
		cp.Verdict, cp.Error = "FAIL", err.Error()
		if lab.IsGuestFault(err) {
			r.boot(ctx)
		}
		return cp
	}
	raw := lastJSON(res.Stdout)
	var v struct {
		Outcome  string `json:"outcome"`
		Missed   int    `json:"missed"`
		Compared int    `json:"compared_pages"`
		Swapped  int    `json:"swapped_pages_at_end"`
		Reason   string `json:"reason"`
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		cp.Verdict, cp.Error = "FAIL", fmt.Sprintf("no checkpoint result: %s", firstLine(string(res.Stderr)))
		return cp
	}
	cp.Raw, cp.Missed, cp.Compared, cp.Swapped, cp.Reason = raw, v.Missed, v.Compared, v.Swapped, v.Reason
	cp.Verdict = "PASS"
	switch {
	case len(cp.Reports) > 0:
		cp.Verdict = "FAIL"
	case v.Outcome == "skip":
		// Nothing compared, reported or swapped: not a pass, whoever ran.
		cp.Verdict = "SKIP"
	case tracker == "naive" && v.Missed > 0:
		cp.Verdict = "CAUGHT"
	case tracker == "naive" && target == "redis":
		// Informational: how much redis rewrites between rounds is not ours
		// to control, so the synthetic writer carries the negative control.
		cp.Verdict, cp.Reason = "NOT-CAUGHT", "naive missed nothing on this redis run (informational)"
	case tracker == "naive":
		cp.Verdict, cp.Reason = "NO-TEETH", "the negative control missed nothing: "+v.Reason
	case v.Outcome != "pass" || v.Missed > 0:
		cp.Verdict = "FAIL"
	}
	return cp
}

// Table renders the scenario × tracker matrix.
func Table(w io.Writer, res *Result) {
	fmt.Fprintf(w, "\nldtlab check: kernel %s (%s), %s, seed %d, %.0fs\n\n", res.Kernel, res.Variant, res.Accel, res.Seed, res.Seconds)
	fmt.Fprintf(w, "%-20s %-13s %-9s %7s %7s %9s %7s %6s\n", "SCENARIO", "TRACKER", "VERDICT", "MISSED", "EXTRA", "CORRUPTED", "REPORTS", "TIME")
	for _, c := range res.Cells {
		if c.Verdict == "N/A" {
			fmt.Fprintf(w, "%-20s %-13s %-9s %s\n", c.Scenario, c.Tracker, c.Verdict, firstLine(c.Reason))
			continue
		}
		fmt.Fprintf(w, "%-20s %-13s %-9s %7d %7d %9d %7d %5.1fs\n", c.Scenario, c.Tracker, c.Verdict, c.Missed, c.Extra, c.Corrupted, len(c.KernelReport), c.Took)
	}
	if len(res.Compare) > 0 {
		fmt.Fprintf(w, "\nLDT vs soft-dirty (pages reported per epoch; ldt∖sd and sd∖ldt)\n")
		for _, raw := range res.Compare {
			var v struct {
				Scenario string           `json:"scenario"`
				Raw      []map[string]any `json:"epochs"`
			}
			json.Unmarshal(raw, &v)
			var parts []string
			for _, e := range v.Raw {
				parts = append(parts, fmt.Sprintf("%v/%v (+%v/-%v)", e["ldt"], e["softdirty"], e["ldt_minus_softdirty"], e["softdirty_minus_ldt"]))
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
	verdicts := map[string]int{}
	for _, c := range res.Cells {
		verdicts[c.Verdict]++
	}
	var keys []string
	for k := range verdicts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%d %s", verdicts[k], k))
	}
	fmt.Fprintf(w, "\n%d cells: %s; %d failure(s)\n", len(res.Cells), strings.Join(parts, ", "), res.Failures)
}
