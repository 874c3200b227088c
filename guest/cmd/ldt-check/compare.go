package main

import (
	"slices"

	"ldtlab/guest/result"
	"ldtlab/guest/scenario"
	"ldtlab/guest/tracker"
)

// The comparison the users asked for: the same seeded scenario under ldt
// and under softdirty, and per epoch the pages each reported that the
// other did not (as page offsets in the working set, which the seed keeps
// identical between the two runs).

const maxListed = 32

func compareRun(s *scenario.Scenario, cfg scenario.Config) *result.Comparison {
	cmp := &result.Comparison{Mode: "compare", Scenario: s.Name, Seed: cfg.Seed}
	var sets [2][][]int
	for i, t := range []string{"ldt", "softdirty"} {
		c := cfg
		c.Tracker, c.KeepSets = t, true
		r := scenario.RunCell(s, c)
		sets[i] = r.ReportedSets
		r.ReportedSets = nil
		cmp.Results = append(cmp.Results, r)
	}
	if len(sets[0]) != len(sets[1]) {
		cmp.Note = "the two runs recorded different numbers of epochs (a skip or failure): no per-epoch comparison"
		return cmp
	}
	for e := range sets[0] {
		a, b := offSet(sets[0][e]), offSet(sets[1][e])
		ao, bo := a.Minus(b).Sorted(), b.Minus(a).Sorted()
		d := result.EpochDiff{Epoch: e + 1, LDT: a.Len(), SoftDirty: b.Len(), LDTOnly: len(ao), SoftDirtyOnl: len(bo)}
		d.LDTOnlyPgs = pageList(ao)
		d.SDOnlyPgs = pageList(bo)
		cmp.Epochs = append(cmp.Epochs, d)
	}
	return cmp
}

func offSet(offs []int) tracker.Set {
	s := tracker.Set{}
	for _, o := range offs {
		s.Add(uintptr(o) * tracker.PageSize)
	}
	return s
}

func pageList(ps []uintptr) []int {
	out := make([]int, 0, min(len(ps), maxListed))
	for _, p := range ps[:min(len(ps), maxListed)] {
		out = append(out, int(p/tracker.PageSize))
	}
	return slices.Clip(out)
}
