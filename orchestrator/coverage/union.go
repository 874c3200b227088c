package coverage

import (
	"fmt"
	"strconv"
)

// Key names a series line in a union of runs: "file:line".
func Key(l Line) string { return l.File + ":" + strconv.Itoa(l.Line) }

// Union marks as executed every unexecuted line of r that ran elsewhere
// (ran holds Keys): a long run's guests reboot and restart their counters,
// and two runs of one kernel cover what either ran, so the coverage is a
// union, not one snapshot. The groups are adjusted line by line, so this
// works on a report read back from coverage.json (which has no Ran).
// Reasons are not touched (call Explain after).
func (r *Report) Union(ran map[string]bool) {
	bump := func(gs []Group, name string) {
		for i := range gs {
			if gs[i].Name == name {
				gs[i].Executed++
				return
			}
		}
	}
	var still []Line
	for _, l := range r.Unexecuted {
		if !ran[Key(l)] {
			still = append(still, l)
			continue
		}
		fn := l.Function
		if fn == "" {
			fn = "(outside any function)"
		}
		bump(r.PerPatch, l.Patch)
		bump(r.PerFile, l.File)
		bump(r.PerFunction, l.File+":"+fn)
		r.Executed++
		l.Text, l.Reason = "", ""
		r.Ran = append(r.Ran, l)
	}
	r.Unexecuted = still
	r.Percent = pct(r.Executed, r.SeriesLines)
	for _, gs := range [][]Group{r.PerPatch, r.PerFile, r.PerFunction} {
		for i := range gs {
			gs[i].Percent = pct(gs[i].Executed, gs[i].SeriesLines)
		}
	}
}

// Merge is the union of reports of the same kernel (same key and series
// lines): a line ran if it ran in any of them. Jobs and problems are
// concatenated, times summed; the first report's provenance is kept.
func Merge(rs []*Report) (*Report, error) {
	if len(rs) == 0 {
		return nil, fmt.Errorf("nothing to merge")
	}
	out := *rs[0]
	out.Ran = append([]Line(nil), rs[0].Ran...)
	out.Unexecuted = append([]Line(nil), rs[0].Unexecuted...)
	out.PerPatch = append([]Group(nil), rs[0].PerPatch...)
	out.PerFile = append([]Group(nil), rs[0].PerFile...)
	out.PerFunction = append([]Group(nil), rs[0].PerFunction...)
	out.Jobs = append([]Job(nil), rs[0].Jobs...)
	out.Problems = append([]string(nil), rs[0].Problems...)
	for _, r := range rs[1:] {
		if r.KernelKey != out.KernelKey || r.SeriesLines != out.SeriesLines {
			return nil, fmt.Errorf("cannot merge coverage of kernel %s (%d series lines) with kernel %s (%d): different builds",
				r.KernelKey, r.SeriesLines, out.KernelKey, out.SeriesLines)
		}
		missed := map[string]bool{}
		for _, l := range r.Unexecuted {
			missed[Key(l)] = true
		}
		ran := map[string]bool{}
		for _, l := range out.Unexecuted {
			if !missed[Key(l)] {
				ran[Key(l)] = true
			}
		}
		out.Union(ran)
		out.Jobs = append(out.Jobs, r.Jobs...)
		out.Problems = append(out.Problems, r.Problems...)
		out.Seconds += r.Seconds
		out.Quick = out.Quick && r.Quick
	}
	return &out, nil
}
