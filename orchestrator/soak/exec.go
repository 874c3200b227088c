package soak

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"strings"
	"time"

	"ldtlab/orchestrator/check"
	"ldtlab/orchestrator/lab"
	"ldtlab/orchestrator/mmtests"
	"ldtlab/orchestrator/report"
	"ldtlab/orchestrator/stress"
)

// Outcome is a step as judged, with the kernel reports seen during it.
type Outcome struct {
	Verdict   string
	Pages     int64 // pages checked against ground truth
	Missed    int
	Corrupted int
	Reason    string
	Reports   []Seen
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

// guest is one worker's machine and how far its console was scanned.
type guest struct {
	m       *lab.Machine
	scanned int
}

func (g *guest) newReports() []Seen {
	log := g.m.ConsoleLog()
	if g.scanned > len(log) {
		g.scanned = 0
	}
	var out []Seen
	for _, r := range report.Parse(log[g.scanned:]) {
		out = append(out, Seen{Type: string(r.Type), Title: r.Title, Text: r.Text})
	}
	g.scanned = len(log)
	return out
}

// execStep runs one step and judges it as `labctl check` does. It never
// reboots: a guest fault comes back as the error (lab.IsGuestFault), and
// the soak decides.
//
// Interim: this is the place orchestrator/cell's RunCell replaces once
// the executor lands on main (scenario, stress and checkpoint become
// cell.Spec kinds); the verdicts come from check.Judge and stress.Job so
// that nothing is judged differently from check meanwhile.
func execStep(ctx context.Context, g *guest, s Step) (Outcome, error) {
	switch s.Kind {
	case "scenario":
		return execScenario(ctx, g, s)
	case "stress":
		return execStress(ctx, g, s)
	case "checkpoint":
		return execCheckpoint(ctx, g, s)
	case "selftest":
		return execSelftest(ctx, g, s)
	case "inject":
		return execInject(ctx, g, s)
	}
	return Outcome{}, fmt.Errorf("unknown step kind %q", s.Kind)
}

func gapFor(scenario, tracker string) string {
	for _, k := range check.KnownGaps {
		if k.Scenario == scenario && k.Tracker == tracker {
			return k.Why
		}
	}
	return ""
}

var jsonLine = regexp.MustCompile(`(?m)^\{.*\}\s*$`)

func lastJSON(out []byte) []byte {
	all := jsonLine.FindAll(out, -1)
	if len(all) == 0 {
		return out
	}
	return bytes.TrimSpace(all[len(all)-1])
}

func execScenario(ctx context.Context, g *guest, s Step) (Outcome, error) {
	cmd := fmt.Sprintf("ldt-check -q -scenario %s -tracker %s -seed %d", s.Scenario, s.Tracker, s.Seed)
	if s.Epochs > 0 {
		cmd += fmt.Sprintf(" -epochs %d", s.Epochs)
	}
	res, err := g.m.Run(ctx, cmd)
	o := Outcome{Reports: g.newReports()}
	if err != nil {
		return o, err
	}
	var c check.Cell
	var w struct {
		Written []int `json:"written"`
	}
	raw := lastJSON(res.Stdout)
	if jerr := json.Unmarshal(raw, &c); jerr != nil {
		o.Verdict, o.Reason = "FAIL", fmt.Sprintf("ldt-check exited %d without a result (%v): %s", res.Code, jerr, firstLine(string(res.Stderr)))
		return o, nil
	}
	json.Unmarshal(raw, &w)
	for _, r := range o.Reports {
		c.KernelReport = append(c.KernelReport, r.String())
	}
	o.Verdict = check.Judge(&c, gapFor(s.Scenario, s.Tracker))
	o.Missed, o.Corrupted, o.Reason = c.Missed, c.Corrupted, c.Reason
	for _, n := range w.Written {
		o.Pages += int64(n)
	}
	return o, nil
}

func execStress(ctx context.Context, g *guest, s Step) (Outcome, error) {
	runs, err := stress.Job(ctx, g.m, stress.Options{Trackers: []string{s.Tracker}, Duration: s.Duration, Pages: s.Pages, THP: s.THP, Seed: s.Seed}, io.Discard)
	o := Outcome{Reports: g.newReports(), Verdict: "PASS"}
	if err != nil && len(runs) == 0 {
		return o, err
	}
	// The worst run decides (ldt 4 KiB then THP when THP is asked).
	for _, r := range runs {
		if r.Known != "" && !r.Failed() {
			for i := range o.Reports {
				for _, t := range r.Reports {
					if strings.HasPrefix(t, o.Reports[i].String()+"\n") {
						o.Reports[i].Known = r.Known
					}
				}
			}
		}
		o.Pages += int64(r.Copied)
		o.Missed += r.LostPages
		if r.Failed() || (o.Verdict == "PASS" && r.Verdict != "PASS") {
			o.Verdict = r.Verdict
			o.Reason = strings.TrimSpace(r.Error + " " + r.Known)
		}
	}
	if o.Verdict == "FAIL" && o.Reason == "" {
		o.Reason = fmt.Sprintf("%d pages lost", o.Missed)
	}
	return o, err
}

func execCheckpoint(ctx context.Context, g *guest, s Step) (Outcome, error) {
	var cmd string
	switch s.Target {
	case "synthetic":
		cmd = fmt.Sprintf("ldt-check -q -checkpoint-synthetic -tracker %s -rounds 5 -mb 48 -seed %d", s.Tracker, s.Seed)
	default:
		res, err := g.m.Run(ctx, check.RedisSetup)
		if err != nil {
			return Outcome{Reports: g.newReports()}, err
		}
		pid := strings.Fields(string(res.Stdout))
		if res.Code != 0 || len(pid) == 0 {
			return Outcome{Verdict: "FAIL", Reason: "starting redis under memory pressure: " + firstLine(string(res.Stderr)), Reports: g.newReports()}, nil
		}
		cmd = fmt.Sprintf("ldt-check -q -checkpoint -tracker %s -pid %s -rounds 5 -interval 1s; pkill redis-benchmark; redis-cli -p 6379 shutdown nosave >/dev/null 2>&1; true", s.Tracker, pid[0])
	}
	res, err := g.m.Run(ctx, cmd)
	o := Outcome{Reports: g.newReports()}
	if err != nil {
		return o, err
	}
	var v struct {
		Outcome  string `json:"outcome"`
		Missed   int    `json:"missed"`
		Compared int    `json:"compared_pages"`
		Reason   string `json:"reason"`
	}
	if err := json.Unmarshal(lastJSON(res.Stdout), &v); err != nil {
		o.Verdict, o.Reason = "FAIL", "no checkpoint result: "+firstLine(string(res.Stderr))
		return o, nil
	}
	o.Pages, o.Missed, o.Reason = int64(v.Compared), v.Missed, v.Reason
	switch {
	case len(o.Reports) > 0:
		o.Verdict = "FAIL"
	case v.Outcome == "skip":
		o.Verdict = "SKIP"
	case v.Outcome != "pass" || v.Missed > 0:
		o.Verdict = "FAIL"
	default:
		o.Verdict = "PASS"
	}
	return o, nil
}

// execSelftest runs one mm selftest. Its case failures are not judged
// here (labctl selftests compares them with the vanilla kernel); a kernel
// report during it is.
func execSelftest(ctx context.Context, g *guest, s Step) (Outcome, error) {
	tctx, cancel := context.WithTimeout(ctx, time.Duration(float64(180*time.Second)*float64(g.m.Timeouts.Command)/float64(120*time.Second)))
	defer cancel()
	res, err := g.m.Run(tctx, fmt.Sprintf("mkdir -p /tmp/mmtests && cd /tmp/mmtests && %s/%s 2>&1", mmtests.Dir, s.Test))
	o := Outcome{Reports: g.newReports(), Verdict: "INFO"}
	if err != nil && lab.IsGuestFault(err) {
		return o, err
	}
	n := map[string]int{}
	for _, v := range mmtests.ParseTAP(string(res.Stdout)) {
		n[v]++
	}
	o.Reason = fmt.Sprintf("exit %d: %d ok, %d not ok, %d skip (compared with vanilla by labctl selftests, not here)", res.Code, n["ok"], n["not ok"], n["skip"])
	if err != nil {
		o.Reason += "; " + firstLine(err.Error())
	}
	if len(o.Reports) > 0 {
		o.Verdict = "FAIL"
	}
	return o, nil
}

// execInject fires a labtest trigger: the kernel really WARNs, BUGs or
// panics (testing aid of the soak itself).
func execInject(ctx context.Context, g *guest, s Step) (Outcome, error) {
	tctx, cancel := context.WithTimeout(ctx, g.m.Timeouts.Command)
	defer cancel()
	_, err := g.m.Run(tctx, "echo "+s.Word+" > /sys/kernel/debug/labtest/trigger")
	if err == nil {
		// Let the rest of the report reach the console.
		time.Sleep(time.Second)
	}
	return Outcome{Verdict: "INJECTED", Reports: g.newReports()}, err
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
