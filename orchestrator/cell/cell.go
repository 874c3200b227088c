// Package cell is the executor of the lab's checks: RunCell runs one cell
// (a catalogue scenario under a tracker, the LDT/soft-dirty comparison, a
// checkpoint-oracle run, a stress run or a migration of redis) in a booted guest and judges it,
// kernel reports included. It never reboots or retries: a guest fault is
// returned as the typed error of package vm and the policy over it
// (`labctl check`, the soak) decides what to do.
package cell

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"time"

	"ldtlab/guest/result"
	"ldtlab/orchestrator/lab"
	"ldtlab/orchestrator/report"
	"ldtlab/orchestrator/stress"
)

// Kind of cell.
type Kind string

// Kinds.
const (
	KindScenario   Kind = "scenario"
	KindCompare    Kind = "compare"
	KindCheckpoint Kind = "checkpoint"
	KindStress     Kind = "stress"
	KindMigrate    Kind = "migrate"
)

// Guest is what the executor needs from a booted guest (lab.Guest:
// *lab.Machine, a fake in unit tests).
type Guest = lab.Guest

// Scenario is one entry of `ldt-check -list`.
type Scenario = result.Entry

// List asks the guest for the catalogue.
func List(ctx context.Context, g Guest) ([]Scenario, error) {
	out, err := g.Run(ctx, "ldt-check -list")
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
	return all, nil
}

// Spec selects one cell.
type Spec struct {
	Kind     Kind      `json:"kind"`
	Scenario *Scenario `json:"-"` // KindScenario, KindCompare
	Tracker  string    `json:"tracker,omitempty"`
	Seed     uint64    `json:"seed"`
	Epochs   int       `json:"epochs,omitempty"` // 0 = the scenario's default
	Target   string    `json:"target,omitempty"` // KindCheckpoint: synthetic | redis
	// KindStress: the run's sizes (Trackers is ignored: Tracker and THP
	// select the run).
	Stress stress.Options `json:"stress,omitempty"`
	THP    bool           `json:"thp,omitempty"`
	// KindMigrate: rounds, pressure, data set.
	Migrate MigrateOptions `json:"migrate,omitempty"`
	// Vanilla: the kernel has no /dev/ldt (LDT trackers' skips are N/A).
	Vanilla bool `json:"vanilla,omitempty"`
}

// Name identifies the cell in tables and journals.
func (s Spec) Name() string {
	switch s.Kind {
	case KindScenario:
		return s.scenario() + "/" + s.Tracker
	case KindCompare:
		return "compare/" + s.scenario()
	case KindCheckpoint:
		return "checkpoint-" + s.Target + "/" + s.Tracker
	case KindStress:
		if s.THP {
			return "stress-thp/" + s.Tracker
		}
		return "stress/" + s.Tracker
	case KindMigrate:
		return "migrate/" + s.Tracker
	}
	return string(s.Kind)
}

func (s Spec) scenario() string {
	if s.Scenario == nil {
		return "?"
	}
	return s.Scenario.Name
}

// Cell is the executor's record of one cell: the kind's own result, the
// verdict and the kernel reports that began while it ran.
type Cell struct {
	Name       string             `json:"name"`
	Kind       Kind               `json:"kind"`
	Verdict    result.Verdict     `json:"verdict"`
	Scenario   *result.Cell       `json:"cell,omitempty"`
	Compare    *result.Comparison `json:"compare,omitempty"`
	Checkpoint *Checkpoint        `json:"checkpoint,omitempty"`
	Stress     *stress.Run        `json:"stress,omitempty"`
	Migrate    *Migrate           `json:"migrate,omitempty"`
	Reports    []report.Report    `json:"-"`
	// Titles of Reports ("TYPE: title"), for JSON.
	ReportTitles []string `json:"kernel_reports,omitempty"`
	Error        string   `json:"error,omitempty"`
	Took         float64  `json:"took_s"`
	// Pages is how many pages the cell verified against ground truth
	// (the soak's throughput figure); 0 where the kind does not say.
	Pages uint64 `json:"pages_verified,omitempty"`
}

// Failed tells whether the cell is an unexpected outcome.
func (c *Cell) Failed() bool { return c.Verdict.Failed() }

// RunCell runs one cell in g and judges it. The returned Cell is always
// filled in; the error is non-nil when the guest failed (a crash, a hang,
// a death: the typed errors of package vm, vm.IsGuestFault) or the lab
// did, and the cell's verdict is then FAIL or ERROR.
func RunCell(ctx context.Context, g Guest, s Spec) (*Cell, error) {
	c := &Cell{Name: s.Name(), Kind: s.Kind}
	start := time.Now()
	mark := g.ReportMark()
	reports := func() []report.Report { return g.ReportsSince(ctx, mark) }
	var err error
	switch s.Kind {
	case KindScenario:
		err = runScenario(ctx, g, s, c, reports)
	case KindCompare:
		err = runCompare(ctx, g, s, c)
		c.addReports(reports())
	case KindCheckpoint:
		err = runCheckpoint(ctx, g, s, c, reports)
	case KindStress:
		o := s.stressOptions()
		var r stress.Run
		// RunOne attributes and judges its own reports (it knows the
		// reference trackers' known kernel bugs).
		r, err = stress.RunOne(ctx, g, s.Tracker, s.THP, o, nil)
		c.Stress, c.Verdict, c.Pages, c.ReportTitles = &r, r.Verdict, r.Copied, r.Reports
	case KindMigrate:
		err = runMigrate(ctx, g, s, c, reports)
		if c.Migrate != nil {
			c.Pages = uint64(c.Migrate.DumpedPages)
		}
	default:
		err = fmt.Errorf("unknown cell kind %q", s.Kind)
		c.Verdict = result.VError
	}
	if err != nil {
		c.Error = err.Error()
		if !c.Verdict.Failed() {
			c.Verdict = result.VFail
		}
	}
	c.Took = time.Since(start).Seconds()
	if c.Scenario != nil {
		c.Scenario.Took = c.Took
	}
	if c.Checkpoint != nil {
		c.Checkpoint.Took = c.Took
	}
	if c.Migrate != nil && c.Error != "" && c.Migrate.Error == "" {
		c.Migrate.Error = c.Error
	}
	return c, err
}

// addReports records the kernel reports of the cell; a report anywhere
// fails it.
func (c *Cell) addReports(reps []report.Report) {
	c.Reports = append(c.Reports, reps...)
	for _, r := range reps {
		c.ReportTitles = append(c.ReportTitles, r.String())
	}
	if len(reps) > 0 {
		c.Verdict = result.VFail
	}
}

func runScenario(ctx context.Context, g Guest, s Spec, c *Cell, reports func() []report.Report) error {
	sc := s.Scenario
	rc := &result.Cell{Scenario: sc.Name, Tracker: s.Tracker, Seed: s.Seed, NaiveExpectation: sc.Naive}
	c.Scenario = rc
	if !sc.Allows(s.Tracker) {
		rc.Outcome, rc.Verdict, rc.AsExpected = result.NA, result.VNA, true
		rc.Reason = sc.NotFor[s.Tracker]
		if rc.Reason == "" {
			rc.Reason = "the scenario does not support this tracker"
		}
		c.Verdict = rc.Verdict
		return nil
	}
	res, err := g.Run(ctx, s.Command())
	c.addReports(reports())
	rc.KernelReport = c.ReportTitles
	if err != nil {
		rc.Verdict, rc.Error = result.VFail, err.Error()
		c.Verdict = rc.Verdict
		return err
	}
	if jerr := json.Unmarshal(LastJSON(res.Stdout), rc); jerr != nil {
		rc.Verdict = result.VFail
		rc.Error = fmt.Sprintf("ldt-check exited %d without a result (%v): %s", res.Code, jerr, FirstLine(string(res.Stderr)))
		c.Verdict = rc.Verdict
		return nil
	}
	// The guest's JSON does not carry what the host saw.
	rc.KernelReport = c.ReportTitles
	result.Judge(rc, s.Vanilla)
	c.Verdict = rc.Verdict
	for _, w := range rc.Written {
		c.Pages += uint64(w)
	}
	return nil
}

func runCompare(ctx context.Context, g Guest, s Spec, c *Cell) error {
	sc := s.Scenario
	res, err := g.Run(ctx, s.Command())
	if err != nil {
		c.Verdict = result.VFail
		return err
	}
	var v result.Comparison
	c.Verdict = result.VFail
	if err := json.Unmarshal(LastJSON(res.Stdout), &v); err != nil {
		c.Error = fmt.Sprintf("no JSON from ldt-check -compare (%v): %s", err, FirstLine(string(res.Stderr)))
		return nil
	}
	// A comparison of runs that failed, or of no epochs, compares nothing.
	for _, x := range v.Results {
		if !x.AsExpected && result.KnownGap(sc.Name, x.Tracker) == "" {
			c.Error = fmt.Sprintf("the %s run of the comparison failed: %s", x.Tracker, x.Reason)
			return nil
		}
	}
	if len(v.Epochs) == 0 {
		c.Error = "the comparison has no epochs: " + v.Note
		return nil
	}
	c.Compare, c.Verdict = &v, result.VPass
	return nil
}

var jsonLine = regexp.MustCompile(`(?m)^\{.*\}\s*$`)

// LastJSON picks the result object out of a program's stdout.
func LastJSON(out []byte) []byte {
	all := jsonLine.FindAll(out, -1)
	if len(all) == 0 {
		return out
	}
	return bytes.TrimSpace(all[len(all)-1])
}

// FirstLine is s's first line, shortened for a table.
func FirstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 110 {
		s = s[:107] + "..."
	}
	return s
}
