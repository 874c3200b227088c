// Package stress is the host side of the race hunt (guest/stress): it runs
// ldt-stress in a guest sized for pressure under each tracker and judges
// the outcome — ldt and pagemap-scan must lose nothing, naive must lose
// writes (or the run had no teeth), and no kernel report may appear.
package stress

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"ldtlab/guest/result"
	"ldtlab/orchestrator/lab"
	"ldtlab/orchestrator/report"
)

// Options select a stress job.
type Options struct {
	Trackers []string      // default: ldt, pagemap-scan, naive
	Duration time.Duration // per tracker and page size
	Pages    int
	THP      bool   // run ldt a second time with transparent huge pages
	MTHP     string // an anonymous mTHP size enabled for every run ("64kB"); "" = none
	// Agitators restricts the agitators (ldt-stress -list names them);
	// nil = every one the guest and tracker allow.
	Agitators []string
	Seed      uint64
	// GuestMiB is the guest's memory (0: unknown, the set is taken to
	// fit); RunOne fills it in from the machine.
	GuestMiB int
}

// Run is one tracker's run: what ldt-stress printed (result.Stress) and
// the host's judgement of it.
type Run struct {
	result.Stress
	THP     bool           `json:"thp"`
	Verdict result.Verdict `json:"verdict"` // PASS, CAUGHT, KNOWN-GAP, FAIL, NO-TEETH, ERROR
	Error   string         `json:"error,omitempty"`
	// Reports are the kernel reports that appeared during this run.
	Reports []string `json:"kernel_reports,omitempty"`
	Known   string   `json:"known,omitempty"` // why a report here is a known kernel bug
	Command string   `json:"command"`
}

// Failed says whether the run is a failure of the job.
func (r Run) Failed() bool { return r.Verdict.Failed() }

// Guest is what a stress run needs from a booted guest.
type Guest = lab.Guest

// DefaultTrackers are the trackers a job runs when Options.Trackers is
// empty: the one under test, the reference, the negative control.
var DefaultTrackers = []string{"ldt", "pagemap-scan", "naive"}

// Planned is one run of a job.
type Planned struct {
	Tracker string
	THP     bool
}

// Plan lists a job's runs in order: each tracker, and ldt once more with
// transparent huge pages when o.THP. The policy of `labctl stress` and
// of check's stress phase alike.
func Plan(o Options) []Planned {
	trackers := o.Trackers
	if len(trackers) == 0 {
		trackers = DefaultTrackers
	}
	var out []Planned
	for _, t := range trackers {
		out = append(out, Planned{t, false})
		if o.THP && t == "ldt" {
			out = append(out, Planned{t, true})
		}
	}
	return out
}

// Job runs the stress runs in g, one after another. Each kernel report is
// attributed to the run during which it appeared.
func Job(ctx context.Context, g Guest, o Options, log io.Writer) ([]Run, error) {
	var runs []Run
	for _, p := range Plan(o) {
		r, err := RunOne(ctx, g, p.Tracker, p.THP, o, log)
		if err != nil {
			return runs, err
		}
		runs = append(runs, r)
	}
	return runs, nil
}

// Command is the guest command of one run.
func Command(tracker string, thp bool, o Options) string {
	cmd := fmt.Sprintf("ldt-stress -tracker %s -pages %d -duration %s -seed %d -thp=%v", tracker, o.Pages, o.Duration, o.Seed, thp)
	if e := Epochs(o); e != defaultEpochs(o) {
		cmd += fmt.Sprintf(" -epochs %d", e)
	}
	if o.MTHP != "" {
		cmd += " -mthp " + o.MTHP
	}
	if o.Agitators != nil {
		a := strings.Join(o.Agitators, ",")
		if a == "" {
			a = "none"
		}
		cmd += " -agitators " + a
	}
	return cmd
}

// Limit is how long one run may take: the guest's own clock runs the
// duration (slower under TCG and pressure), and populating, copying and
// comparing the set costs time per page — a set beyond the guest's memory
// goes through swap at every step (a soak measured 240k pages here). A
// kernel slowdown times slower than debug (sanitize) stretches the work,
// not the guest's clock.
func Limit(o Options, slowdown float64) time.Duration {
	work := 2*time.Minute + time.Duration(o.Pages)*time.Millisecond
	if swaps(o) {
		// Twice the measured cost of the comparisons: the margin a
		// loaded host needs.
		work += 2 * time.Duration(Epochs(o)*o.Pages) * swapComparePerPage
	}
	return 3*o.Duration + time.Duration(float64(work)*max(1, slowdown))
}

// Each epoch of ldt-stress ends comparing the whole set with its shadow.
// A set that does not fit beside its shadow swaps at every comparison:
// about 0.3 ms a page under TCG here (120,000 pages in a 768 MiB guest, 8
// s in 8 epochs: 285 s; 40,000 pages, which fit: 11 s). Such a run
// compares as often as fits in swapCompareBudget, not once a second.
const (
	swapComparePerPage = 300 * time.Microsecond
	swapCompareBudget  = 4 * time.Minute
)

// swaps says whether the set and its shadow overflow the guest's memory
// (more than 60% of it: the kernel, the image and page tables need the
// rest).
func swaps(o Options) bool {
	return o.GuestMiB > 0 && 2*int64(o.Pages)*4096 > int64(o.GuestMiB)<<20*6/10
}

// defaultEpochs is ldt-stress's own choice: one a second of the duration.
func defaultEpochs(o Options) int { return max(1, int(o.Duration/time.Second)) }

// Epochs is how many times a run compares the set with its shadow.
func Epochs(o Options) int {
	e := defaultEpochs(o)
	if swaps(o) {
		e = min(e, max(1, int(swapCompareBudget/(time.Duration(o.Pages)*swapComparePerPage))))
	}
	return e
}

// RunOne runs ldt-stress once under tracker and judges it, kernel reports
// included. The error is the guest's fault or the lab's (typed, from
// package vm); the run is judged either way.
func RunOne(ctx context.Context, g Guest, tracker string, thp bool, o Options, log io.Writer) (Run, error) {
	if m, ok := g.(interface{ MemoryMiB() int }); ok && o.GuestMiB == 0 {
		o.GuestMiB = m.MemoryMiB()
	}
	cmd := Command(tracker, thp, o)
	if log != nil {
		fmt.Fprintf(log, "[stress] %s\n", cmd)
	}
	r := Run{Stress: result.Stress{Tracker: tracker}, THP: thp, Command: cmd}
	mark := g.ReportMark()
	// The guest's own clock runs the duration; allow TCG's slowness on
	// top for setup and the last epoch's comparison.
	slowdown := 1.0
	if s, ok := g.(interface{ Slowdown() float64 }); ok {
		slowdown = s.Slowdown()
	}
	rctx, cancel := context.WithTimeout(ctx, Limit(o, slowdown))
	res, err := g.Run(rctx, cmd)
	cancel()
	reps := g.ReportsSince(ctx, mark)
	if err != nil {
		r.Verdict, r.Error = result.VError, err.Error()
		AddReports(&r, reps)
		return r, fmt.Errorf("stress %s: %w", tracker, err)
	}
	if jerr := json.Unmarshal([]byte(strings.TrimSpace(string(res.Stdout))), &r); jerr != nil && res.Code != 2 {
		r.Error = fmt.Sprintf("unreadable result (%v): %s", jerr, res.Stdout)
	}
	r.Tracker, r.THP = tracker, thp
	r.Verdict = result.JudgeStress(tracker, res.Code, r.LostPages)
	if why := result.StressGap(tracker, r.LostBySource); r.Verdict == result.VFail && why != "" {
		r.Verdict, r.Known = result.VKnownGap, why
	}
	if r.Verdict == result.VError && r.Error == "" {
		r.Error = strings.TrimSpace(string(res.Stderr))
	}
	AddReports(&r, reps)
	if log != nil {
		fmt.Fprintf(log, "[stress] %s thp=%v: %s (lost %d, %d writes, %d collections)\n", tracker, thp, r.Verdict, r.LostPages, r.Writes, r.Collections)
	}
	return r, nil
}

// AddReports attributes kernel reports to r: a known bug of a reference
// tracker is a KNOWN-GAP, anything else fails the run.
func AddReports(r *Run, reps []report.Report) {
	for _, rep := range reps {
		text := rep.String() + "\n" + rep.Text
		r.Reports = append(r.Reports, text)
		why := result.KnownStressReport(r.Tracker, text)
		switch {
		case why != "" && !r.Failed():
			r.Verdict, r.Known = result.VKnownGap, why
		case why == "":
			r.Verdict, r.Error = result.VFail, "kernel report: "+rep.String()
		}
	}
}
