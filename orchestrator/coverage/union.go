package coverage

import "strconv"

// Key names a series line in a union of runs: "file:line".
func Key(l Line) string { return l.File + ":" + strconv.Itoa(l.Line) }

// Union marks as executed every unexecuted line of r that ran elsewhere
// (ran holds Keys): a long run's guests reboot and restart their counters,
// so what the run covered is the union, not one guest's snapshot. Counts
// and groups are recomputed from the lines; reasons are not touched (call
// Explain after).
func (r *Report) Union(ran map[string]bool) {
	var still []Line
	for _, l := range r.Unexecuted {
		if ran[Key(l)] {
			l.Text, l.Reason = "", ""
			r.Ran = append(r.Ran, l)
			continue
		}
		still = append(still, l)
	}
	r.Unexecuted = still
	patches, files, funcs := map[string]*Group{}, map[string]*Group{}, map[string]*Group{}
	add := func(m map[string]*Group, name string, ran bool) {
		g := m[name]
		if g == nil {
			g = &Group{Name: name}
			m[name] = g
		}
		g.SeriesLines++
		if ran {
			g.Executed++
		}
	}
	// Patches with no executable line keep their (empty) row.
	for _, g := range r.PerPatch {
		patches[g.Name] = &Group{Name: g.Name}
	}
	for i, ls := range [][]Line{r.Ran, r.Unexecuted} {
		for _, l := range ls {
			fn := l.Function
			if fn == "" {
				fn = "(outside any function)"
			}
			add(patches, l.Patch, i == 0)
			add(files, l.File, i == 0)
			add(funcs, l.File+":"+fn, i == 0)
		}
	}
	r.SeriesLines, r.Executed = len(r.Ran)+len(r.Unexecuted), len(r.Ran)
	r.Percent = pct(r.Executed, r.SeriesLines)
	r.PerPatch, r.PerFile, r.PerFunction = groups(patches), groups(files), groups(funcs)
	for _, gs := range [][]Group{r.PerPatch, r.PerFile, r.PerFunction} {
		for i := range gs {
			gs[i].Percent = pct(gs[i].Executed, gs[i].SeriesLines)
		}
	}
}
