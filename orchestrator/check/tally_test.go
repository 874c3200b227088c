package check

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"ldtlab/guest/result"
	"ldtlab/orchestrator/cell"
	"ldtlab/orchestrator/stress"
)

// The run's verdict: what counts as a failure, and the mutants' teeth.
func TestTally(t *testing.T) {
	cellOf := func(tracker string, v result.Verdict) *Cell {
		return &Cell{Scenario: "s", Tracker: tracker, Verdict: v}
	}
	for _, c := range []struct {
		name     string
		res      Result
		trackers []string
		failures int
		problems int
	}{
		{"all clean", Result{Cells: []*Cell{cellOf("ldt", result.VPass), cellOf("naive", result.VCaught), cellOf("softdirty", result.VKnownGap), cellOf("pagemap-scan", result.VNA)}}, Trackers, 0, 0},
		{"each failing verdict counts once", Result{Cells: []*Cell{cellOf("ldt", result.VFail), cellOf("naive", result.VNoTeeth), cellOf("softdirty", result.VSkip), cellOf("ldt", result.VError)}}, Trackers, 4, 0},
		{"checkpoint, stress and migration count too",
			Result{
				Checkpoint: []*Checkpoint{{Verdict: result.VNotCaught}, {Verdict: result.VFail}},
				Stress:     []stress.Run{{Verdict: result.VKnownGap}, {Verdict: result.VNoTeeth}},
				Migrate:    []*cell.Migrate{{Verdict: result.VPass}, {Verdict: result.VSkip}},
			}, Trackers, 3, 0},
		{"a mutant no cell caught is a problem", Result{Cells: []*Cell{cellOf("mutant-all", result.VSurvived)}}, []string{"mutant-all"}, 1, 1},
		{"a mutant caught once has teeth", Result{Cells: []*Cell{cellOf("mutant-pfn", result.VSurvived), cellOf("mutant-pfn", result.VCaught)}}, []string{"mutant-pfn"}, 0, 0},
		{"a mutant not run is no problem", Result{}, Trackers, 0, 0},
		{"earlier problems count", Result{Problems: []string{"kernel report after the last phase"}}, Trackers, 1, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			res := c.res
			res.tally(c.trackers)
			assert.Equal(t, c.failures, res.Failures)
			assert.Len(t, res.Problems, c.problems)
		})
	}
}

func TestFilter(t *testing.T) {
	all := []cell.Scenario{{Name: "ksm"}, {Name: "fork"}, {Name: "lazyfree"}}
	names := func(s []cell.Scenario) []string {
		var out []string
		for _, x := range s {
			out = append(out, x.Name)
		}
		return out
	}
	assert.Equal(t, []string{"ksm", "fork", "lazyfree"}, names(filter(all, nil)), "no filter: all")
	assert.Equal(t, []string{"ksm", "lazyfree"}, names(filter(all, []string{"lazyfree", "ksm"})), "catalogue order")
	assert.Empty(t, filter(all, []string{"nope"}))
}
