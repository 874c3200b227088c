package soak

import (
	gfuzz "ldtlab/guest/fuzz"
	"ldtlab/orchestrator/stress"
)

// Detail is what a stress or fuzz step did beyond its verdict, kept in
// the journal for the report: how often each agitator or fuzz operation
// ran and what it achieved (pages migrated, collapses made, pages merged…),
// and for a fuzz step what every tracker ran and checked.
type Detail struct {
	// Stress: actions per agitator, and its effects (agitator → effect →
	// count) as ldt-stress reports them.
	Agitators   map[string]int            `json:"agitators,omitempty"`
	Effects     map[string]map[string]int `json:"effects,omitempty"`
	Writes      uint64                    `json:"writes,omitempty"`
	Collections int                       `json:"collections,omitempty"`
	// Fuzz: sequences drawn, per tracker what ran, and the operations
	// done (keys with a parenthesis are effects: "ksm (pages merged)")
	// and refused by the kernel.
	Sequences    int                     `json:"sequences,omitempty"`
	FuzzTrackers map[string]*FuzzTracker `json:"fuzz_trackers,omitempty"`
	OpsDone      map[string]int          `json:"ops_done,omitempty"`
	OpsFailed    map[string]int          `json:"ops_failed,omitempty"`
}

// FuzzTracker is one tracker's part of a fuzz step.
type FuzzTracker struct {
	Sequences int            `json:"sequences"` // run (not N/A)
	Checked   int64          `json:"pages_checked"`
	Verdicts  map[string]int `json:"verdicts,omitempty"`
}

func stressDetail(r *stress.Run) *Detail {
	if r == nil {
		return nil
	}
	return &Detail{Agitators: r.Agitators, Effects: r.Effects, Writes: r.Writes, Collections: r.Collections}
}

func fuzzDetail(s *gfuzz.Summary) *Detail {
	if s == nil {
		return nil
	}
	d := &Detail{Sequences: s.Sequences, OpsDone: s.OpsDone, OpsFailed: s.OpsFailed, FuzzTrackers: map[string]*FuzzTracker{}}
	for t, ts := range s.Trackers {
		if ts == nil {
			continue
		}
		d.FuzzTrackers[t] = &FuzzTracker{Sequences: ts.Runs, Checked: ts.Checked, Verdicts: ts.Verdicts}
	}
	return d
}
