package soak

import (
	"context"
	"fmt"
	"strings"
	"time"

	"ldtlab/guest/result"
	"ldtlab/orchestrator/cell"
	"ldtlab/orchestrator/fuzz"
	"ldtlab/orchestrator/lab"
	"ldtlab/orchestrator/mmselftests"
	"ldtlab/orchestrator/preset"
	"ldtlab/orchestrator/report"
	"ldtlab/orchestrator/stress"
	"ldtlab/orchestrator/vm"
)

// Outcome is a step as judged, with the kernel reports seen during it.
type Outcome struct {
	Verdict   string
	Pages     int64 // pages checked against ground truth
	Missed    int
	Corrupted int
	Reason    string
	Reports   []Seen
	// Findings of a fuzz step (its kernel reports are in Reports), each
	// filed under its own title.
	Findings []fuzz.Finding
	// Detail: what a stress or fuzz step did (agitators, operations).
	Detail *Detail
}

// Seen is one kernel report: what the crash store files by title.
type Seen struct {
	Type  string `json:"type"`
	Title string `json:"title"`
	Text  string `json:"-"`
	// Known: a kernel bug outside LDT the judge excuses for this tracker
	// (stress.Run.Known): filed, not counted as a failure.
	Known string `json:"known,omitempty"`
}

func (s Seen) String() string { return s.Type + ": " + s.Title }

// guest is one worker's machine.
type guest struct {
	m *lab.Machine
	// vmstat is the guest's last vmstat sample (after the last step).
	vmstat VMStat
	// covAt is when the guest's coverage was last snapshot (or when it
	// booted); covDirty says a step ran since.
	covAt    time.Time
	covDirty bool
}

// close stops the guest's machine (nil-safe).
func (g *guest) close() {
	if g != nil && g.m != nil {
		g.m.Close()
	}
}

// log is the guest's console so far (nil without a machine).
func (g *guest) log() []byte {
	if g == nil || g.m == nil {
		return nil
	}
	return g.m.ConsoleLog()
}

// reportsSince are the kernel reports that began after mark.
func (g *guest) reportsSince(ctx context.Context, mark int) []Seen {
	var out []Seen
	for _, r := range g.m.ReportsSince(ctx, mark) {
		out = append(out, Seen{Type: string(r.Type), Title: r.Title, Text: r.Text})
	}
	return out
}

// execStep runs one step. Scenario, stress and checkpoint steps are
// cells of the lab's executor (orchestrator/cell), judged exactly as
// `labctl check` judges them; it never reboots: a guest fault comes back
// as the error (vm.IsGuestFault) and the soak decides.
func execStep(ctx context.Context, g *guest, s Step, cat []Scenario) (Outcome, error) {
	switch s.Kind {
	case "scenario", "stress", "checkpoint", "migrate":
		return execCell(ctx, g, s, cat)
	case "selftest":
		return execSelftest(ctx, g, s)
	case "inject":
		return execInject(ctx, g, s)
	case "fuzz":
		return execFuzz(ctx, g, s)
	}
	return Outcome{}, fmt.Errorf("unknown step kind %q", s.Kind)
}

// spec maps a step to the executor's cell.
func spec(s Step, cat []Scenario) (cell.Spec, error) {
	sp := cell.Spec{Kind: cell.Kind(s.Kind), Tracker: s.Tracker, Seed: s.Seed, Epochs: s.Epochs, Target: s.Target, THP: s.THP}
	switch s.Kind {
	case "scenario":
		for i := range cat {
			if cat[i].Name == s.Scenario {
				sp.Scenario = &cat[i]
			}
		}
		if sp.Scenario == nil {
			return sp, fmt.Errorf("scenario %q is not in the catalogue", s.Scenario)
		}
	case "stress":
		sp.Stress = stress.Options{Duration: s.Duration, Pages: s.Pages, Seed: s.Seed, MTHP: s.MTHP, Agitators: s.Agitators}
	case "migrate":
		sp.Migrate = preset.MigrateShort
	}
	return sp, nil
}

func execCell(ctx context.Context, g *guest, s Step, cat []Scenario) (Outcome, error) {
	sp, err := spec(s, cat)
	if err != nil {
		return Outcome{Verdict: string(result.VError), Reason: err.Error()}, nil
	}
	c, err := cell.RunCell(ctx, g.m, sp)
	o := Outcome{Verdict: string(c.Verdict), Pages: int64(c.Pages)}
	for _, r := range c.Reports {
		o.Reports = append(o.Reports, Seen{Type: string(r.Type), Title: r.Title, Text: r.Text})
	}
	switch {
	case c.Scenario != nil:
		o.Missed, o.Corrupted, o.Reason = c.Scenario.Missed, c.Scenario.Corrupted, c.Scenario.Reason
	case c.Checkpoint != nil:
		o.Missed, o.Reason = c.Checkpoint.Missed, strings.TrimSpace(c.Checkpoint.Reason+" "+c.Checkpoint.Error)
	case c.Migrate != nil:
		mg := c.Migrate
		o.Missed = max(mg.Differ, mg.Mismatched)
		o.Reason = strings.TrimSpace(mg.Reason + " " + mg.Error)
	case c.Stress != nil:
		r := c.Stress
		o.Missed, o.Reason = r.LostPages, strings.TrimSpace(r.Error+" "+r.Known)
		o.Detail = stressDetail(r)
		if r.Verdict == result.VFail && o.Reason == "" {
			o.Reason = fmt.Sprintf("%d pages lost", r.LostPages)
		}
		// The stress run keeps its reports as "TYPE: title\ntext".
		for _, t := range r.Reports {
			head, text, _ := strings.Cut(t, "\n")
			typ, title, _ := strings.Cut(head, ": ")
			sn := Seen{Type: typ, Title: title, Text: text}
			sn.Known = knownStressReport(r.Tracker, sn)
			o.Reports = append(o.Reports, sn)
		}
	}
	if c.Error != "" && o.Reason == "" {
		o.Reason = firstLine(c.Error)
	}
	return o, err
}

// knownStressReport asks the stress judge whether one report is a known
// kernel bug of the tracker's (whatever else went wrong in the run: a
// timed-out run keeps its known reports known).
func knownStressReport(tracker string, sn Seen) string {
	probe := stress.Run{Stress: result.Stress{Tracker: tracker}, Verdict: result.VPass}
	stress.AddReports(&probe, []report.Report{{Type: report.Type(sn.Type), Title: sn.Title, Text: sn.Text}})
	if probe.Verdict == result.VKnownGap {
		return probe.Known
	}
	return ""
}

// execSelftest runs one mm selftest. Its case failures are not judged
// here (labctl selftests compares them with the vanilla kernel); a kernel
// report during it is.
func execSelftest(ctx context.Context, g *guest, s Step) (Outcome, error) {
	tctx, cancel := context.WithTimeout(ctx, time.Duration(float64(180*time.Second)*float64(g.m.Timeouts.Command)/float64(120*time.Second)))
	defer cancel()
	mark := g.m.ReportMark()
	res, err := g.m.Run(tctx, fmt.Sprintf("mkdir -p /tmp/mmtests && cd /tmp/mmtests && %s/%s 2>&1", mmselftests.Dir, s.Test))
	o := Outcome{Reports: g.reportsSince(ctx, mark), Verdict: string(result.VInfo)}
	if err != nil && vm.IsGuestFault(err) {
		return o, err
	}
	n := map[string]int{}
	for _, v := range mmselftests.ParseTAP(string(res.Stdout)) {
		n[v]++
	}
	o.Reason = fmt.Sprintf("exit %d: %d ok, %d not ok, %d skip (compared with vanilla by labctl selftests, not here)", res.Code, n["ok"], n["not ok"], n["skip"])
	if err != nil {
		o.Reason += "; " + firstLine(err.Error())
	}
	if len(o.Reports) > 0 {
		o.Verdict = string(result.VFail)
	}
	return o, nil
}

// execInject fires a labtest trigger: the kernel really WARNs, BUGs or
// panics (testing aid of the soak itself).
func execInject(ctx context.Context, g *guest, s Step) (Outcome, error) {
	limit, cmd := g.m.Timeouts.Command, "echo "+s.Word+" > /sys/kernel/debug/labtest/trigger"
	if s.Word == StuckWord {
		// A step past its time limit: the soak must keep its dump.
		limit, cmd = 20*time.Second, "sleep 600"
	}
	tctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	mark := g.m.ReportMark()
	_, err := g.m.Run(tctx, cmd)
	return Outcome{Verdict: string(result.VInjected), Reports: g.reportsSince(ctx, mark)}, err
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 160 {
		s = s[:157] + "..."
	}
	return s
}

// execFuzz runs ldt-fuzz for the step's duration; every finding comes
// back on its own (minimized, with its replay) for the crash store.
func execFuzz(ctx context.Context, g *guest, s Step) (Outcome, error) {
	r, err := fuzz.RunOne(ctx, g.m, fuzz.Options{Duration: s.Duration, Seed: s.Seed}, nil)
	o := Outcome{Verdict: string(r.Verdict), Reason: r.Error}
	for _, rep := range r.Reports {
		o.Reports = append(o.Reports, Seen{Type: string(rep.Type), Title: rep.Title, Text: rep.Text})
	}
	if r.Summary != nil {
		o.Pages = r.Summary.Checked
		o.Detail = fuzzDetail(r.Summary)
		var titles []string
		for _, f := range r.Findings() {
			if f.Kind != "kernel" {
				o.Findings = append(o.Findings, f)
				titles = append(titles, f.Title)
			}
		}
		o.Reason = fmt.Sprintf("%d sequences, %d runs", r.Summary.Sequences, r.Summary.Runs)
		if len(titles) > 0 {
			o.Reason += "; " + strings.Join(titles, "; ")
		}
	}
	return o, err
}
