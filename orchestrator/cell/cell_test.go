package cell

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ldtlab/guest/result"
	"ldtlab/orchestrator/lab"
	"ldtlab/orchestrator/report"
	"ldtlab/orchestrator/vm"
)

func TestLastJSON(t *testing.T) {
	out := []byte("progress\n{\"a\":1}\nmore\n{\"scenario\":\"x\"}\n")
	assert.Equal(t, `{"scenario":"x"}`, string(LastJSON(out)))
	assert.Equal(t, "no json", string(LastJSON([]byte("no json"))))
}

func TestAllows(t *testing.T) {
	assert.True(t, Scenario{Trackers: []string{"ldt", "naive"}}.Allows("mutant-all"), "mutants run where ldt runs")
	assert.False(t, Scenario{Trackers: []string{"softdirty"}}.Allows("mutant-all"))
}

// fakeGuest answers commands from a table and reports what the test
// says the kernel printed meanwhile.
type fakeGuest struct {
	out     map[string]lab.Result // by command prefix
	err     error
	reports []report.Report // printed during the next command
	printed []report.Report
}

func (g *fakeGuest) Run(_ context.Context, cmd string) (lab.Result, error) {
	g.printed = append(g.printed, g.reports...)
	g.reports = nil
	if g.err != nil {
		return lab.Result{}, g.err
	}
	for p, r := range g.out {
		if strings.HasPrefix(cmd, p) {
			return r, nil
		}
	}
	return lab.Result{Code: 127, Stderr: []byte("not found: " + cmd)}, nil
}

func (g *fakeGuest) ReportMark() int { return len(g.printed) }
func (g *fakeGuest) ReportsSince(_ context.Context, mark int) []report.Report {
	return g.printed[mark:]
}

func scenarioJSON(outcome string, missed, corrupted int) lab.Result {
	return lab.Result{Stdout: []byte(fmt.Sprintf(`progress
{"scenario":"lazyfree","tracker":"ldt","outcome":%q,"as_expected":%v,"missed":%d,"corrupted":%d,"quiet_epochs":1,"written":[10,20]}
`, outcome, outcome == "pass", missed, corrupted))}
}

func TestRunCellScenario(t *testing.T) {
	sc := &Scenario{Name: "lazyfree", Trackers: []string{"ldt", "naive"}, Naive: result.LoseData, NotFor: map[string]string{"softdirty": "no"}}
	warn := report.Report{Type: report.TypeWarning, Title: "WARNING in ldt_collect"}
	crash := &vm.CrashError{Title: "Kernel panic", Type: "panic"}
	cases := []struct {
		name    string
		g       *fakeGuest
		tracker string
		want    result.Verdict
		err     bool
	}{
		{"pass", &fakeGuest{out: map[string]lab.Result{"ldt-check": scenarioJSON("pass", 0, 0)}}, "ldt", result.VPass, false},
		{"missed", &fakeGuest{out: map[string]lab.Result{"ldt-check": scenarioJSON("fail", 3, 0)}}, "ldt", result.VFail, false},
		{"a kernel report during the cell fails it", &fakeGuest{out: map[string]lab.Result{"ldt-check": scenarioJSON("pass", 0, 0)}, reports: []report.Report{warn}}, "ldt", result.VFail, false},
		{"no JSON", &fakeGuest{out: map[string]lab.Result{"ldt-check": {Code: 2, Stderr: []byte("boom")}}}, "ldt", result.VFail, false},
		{"guest fault is returned, not acted on", &fakeGuest{err: crash}, "ldt", result.VFail, true},
		{"n/a", &fakeGuest{}, "softdirty", result.VNA, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := RunCell(context.Background(), tc.g, Spec{Kind: KindScenario, Scenario: sc, Tracker: tc.tracker, Seed: 1})
			require.NotNil(t, c)
			assert.Equal(t, tc.want, c.Verdict, "%+v", c)
			assert.Equal(t, tc.want, c.Scenario.Verdict)
			if tc.err {
				require.ErrorAs(t, err, &crash)
				assert.Contains(t, c.Error, "Kernel panic")
			} else {
				require.NoError(t, err)
			}
		})
	}
	g := &fakeGuest{out: map[string]lab.Result{"ldt-check": scenarioJSON("pass", 0, 0)}}
	c, err := RunCell(context.Background(), g, Spec{Kind: KindScenario, Scenario: sc, Tracker: "ldt", Seed: 1})
	require.NoError(t, err)
	assert.EqualValues(t, 30, c.Pages, "pages verified: the written pages of every epoch")
}

func TestRunCellCheckpoint(t *testing.T) {
	out := func(missed int) map[string]lab.Result {
		return map[string]lab.Result{"ldt-check": {Stdout: []byte(fmt.Sprintf(`{"outcome":"pass","missed":%d,"compared_pages":100,"swapped_pages_at_end":5}`, missed))}}
	}
	for _, tc := range []struct {
		tracker string
		missed  int
		want    result.Verdict
	}{
		{"ldt", 0, result.VPass},
		{"ldt", 1, result.VFail},
		{"naive", 3, result.VCaught},
		{"naive", 0, result.VNoTeeth},
	} {
		c, err := RunCell(context.Background(), &fakeGuest{out: out(tc.missed)}, Spec{Kind: KindCheckpoint, Target: "synthetic", Tracker: tc.tracker})
		require.NoError(t, err)
		assert.Equal(t, tc.want, c.Verdict, "%s missed %d", tc.tracker, tc.missed)
		assert.EqualValues(t, 100, c.Pages)
	}
	_, err := RunCell(context.Background(), &fakeGuest{}, Spec{Kind: "nonsense"})
	assert.Error(t, err)
}
