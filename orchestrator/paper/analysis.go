package paper

import (
	"fmt"
	"math"
	"slices"

	"ldtlab/guest/bench"
)

// Stat is one estimate of one metric of one cell of a figure, for one
// tracker (or "ldt÷naive", the A/A yardstick).
type Stat struct {
	Figure  string `json:"figure"`
	Cell    string `json:"cell"`
	Tracker string `json:"tracker"`
	Metric  string `json:"metric"`
	Unit    string `json:"unit"`
	Estimate
}

// AA names the A/A comparison: ldt and naive do the same work in these
// figures (no reclaim, no swap), so their ratio's true value is 1 and its
// spread is the noise floor of every other ratio.
const AA = "ldt÷naive"

// Claim is one of the paper's claims against this run.
type Claim struct {
	Claim  string  `json:"claim"`   // the paper's words
	ReadAs string  `json:"read_as"` // the ratio measured and the bound it needs
	Figure string  `json:"figure"`
	Cell   string  `json:"cell"`
	Target float64 `json:"target"`
	Estimate
	AA      Estimate   `json:"aa"`
	Judged  [2]float64 `json:"judged_interval"`
	Verdict string     `json:"verdict"`
	Why     string     `json:"why"`
}

// approx reads the paper's "~X" as "at least approx·X".
const approx = 0.9

// Analysis is every estimate of a run: the claims, the A/A figure and the
// statistics of every cell. It is computed from the samples alone
// (deterministically: the bootstrap's seed is fixed), so a paper.json
// rendered again gives the same numbers.
type Analysis struct {
	Claims []Claim `json:"claims"`
	AA     []Stat  `json:"aa"`
	Stats  []Stat  `json:"stats"`
	// Kernels compares the kernels of an A/B run (`--kernels`), each
	// with the first.
	Kernels []KernelStat `json:"kernels,omitempty"`
	idx     map[[4]string]Estimate
}

// Get is the estimate of a metric; undefined when it was not computed.
func (a *Analysis) Get(figure, cell, tracker, metric string) Estimate {
	return a.idx[[4]string{figure, cell, tracker, metric}]
}

func (a *Analysis) add(figure, cell, tracker, metric, unit string, e Estimate) {
	if !e.Defined() {
		return
	}
	s := Stat{Figure: figure, Cell: cell, Tracker: tracker, Metric: metric, Unit: unit, Estimate: e}
	if tracker == AA {
		a.AA = append(a.AA, s)
	} else {
		a.Stats = append(a.Stats, s)
	}
	a.idx[[4]string{figure, cell, tracker, metric}] = e
}

// series is one value per repetition.
type series map[int]float64

// values are the values in repetition order.
func (s series) values() []float64 {
	reps := make([]int, 0, len(s))
	for r := range s {
		reps = append(reps, r)
	}
	slices.Sort(reps)
	out := make([]float64, len(reps))
	for i, r := range reps {
		out[i] = s[r]
	}
	return out
}

// aligned are the columns of ss over the repetitions all of them have, in
// repetition order: row i of every column is the same repetition.
func aligned(ss ...series) [][]float64 {
	var reps []int
	for r := range ss[0] {
		ok := true
		for _, s := range ss[1:] {
			if _, has := s[r]; !has {
				ok = false
			}
		}
		if ok {
			reps = append(reps, r)
		}
	}
	slices.Sort(reps)
	cols := make([][]float64, len(ss))
	for i, s := range ss {
		for _, r := range reps {
			cols[i] = append(cols[i], s[r])
		}
	}
	return cols
}

// pairedRatio is median(a) ÷ median(b) over the repetitions both have.
func pairedRatio(a, b series) Estimate {
	if len(a) == 0 || len(b) == 0 {
		return Estimate{}
	}
	c := aligned(a, b)
	return BootRatio(c[0], c[1], true)
}

func ratioOf(m []float64) float64 {
	if m[1] == 0 {
		return math.NaN()
	}
	return m[0] / m[1]
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// WriteKind is one way figure 1 writes a page: wb bytes, made by store
// ("copy" or "loop" for 4096 B, "" for 1 B).
type WriteKind struct {
	Bytes int
	Store string
}

// Name says it for a heading.
func (k WriteKind) Name() string {
	switch {
	case k.Bytes < 4096:
		return fmt.Sprintf("%d B per page", k.Bytes)
	case k.Store == "loop":
		return "4096 B per page by a loop of 8-byte stores"
	}
	return "4096 B per page by copy"
}

// WriteKinds are the kinds a figure 1 measured with THP off or on, in
// report order.
func WriteKinds(w *bench.WriteOnly, thp bool) []WriteKind {
	loop := false
	for _, s := range w.Samples {
		loop = loop || (s.THP == thp && s.Store == "loop")
	}
	ks := []WriteKind{{4096, "copy"}}
	if loop {
		ks = append(ks, WriteKind{4096, "loop"})
	}
	return append(ks, WriteKind{1, ""})
}

func kindOf(s bench.WriteSample) WriteKind {
	k := WriteKind{s.WriteBytes, s.Store}
	if k.Bytes >= 4096 && k.Store == "" {
		k.Store = "copy" // paper.json before the store loop
	}
	return k
}

// Cell names.
func writeCell(size int, thp bool, k WriteKind) string {
	st := ""
	if k.Store == "loop" {
		st = " by 8-byte stores"
	}
	return fmt.Sprintf("%d MiB, %d B/page%s, THP %s", size, k.Bytes, st, map[bool]string{false: "off", true: "on"}[thp])
}

func intervalCell(ms int) string {
	if ms == 0 {
		return "untracked"
	}
	return fmt.Sprintf("every %g s", float64(ms)/1000)
}

func collectCell(pct float64) string { return fmt.Sprintf("%g%% dirty", pct) }

// Analyze computes every estimate of r.
func Analyze(r *Result) *Analysis {
	a := &Analysis{idx: map[[4]string]Estimate{}}
	if r.WriteOnly != nil {
		a.writeOnly(r.WriteOnly)
	}
	if r.Timeline != nil {
		a.timeline(r.Timeline)
	}
	if r.Redis != nil {
		a.redis(r.Redis)
	}
	if r.Collect != nil {
		a.collect(r.Collect)
	}
	if r.GUP != nil {
		a.gup(r.GUP)
	}
	a.claims(r)
	a.kernels(r)
	return a
}

func (a *Analysis) writeOnly(w *bench.WriteOnly) {
	type key struct {
		cell, tracker string
	}
	metrics := []string{"write_ms", "collect_ms", "total_ms", "faults", "tlb_flushes", "tlb_shootdowns", "syscalls", "regions", "ns_per_collected_page", "us_per_tlb_flush", "write_ns", "faults_raw"}
	data := map[key]map[string]series{}
	pages := map[string]int{}
	for _, s := range w.Samples {
		k := key{writeCell(s.SizeMiB, s.THP, kindOf(s)), s.Tracker}
		if data[k] == nil {
			data[k] = map[string]series{}
			for _, m := range metrics {
				data[k][m] = series{}
			}
		}
		pages[k.cell] = s.Written
		d := data[k]
		d["write_ms"][s.Rep] = float64(s.WriteNS) / 1e6
		d["collect_ms"][s.Rep] = float64(s.CollectNS) / 1e6
		d["total_ms"][s.Rep] = float64(s.WriteNS+s.CollectNS) / 1e6
		d["faults"][s.Rep] = float64(s.WriteCounts.Faults + s.CollectCounts.Faults)
		if s.WriteCounts.TLBFlushes >= 0 && s.CollectCounts.TLBFlushes >= 0 {
			d["tlb_flushes"][s.Rep] = float64(s.WriteCounts.TLBFlushes + s.CollectCounts.TLBFlushes)
			if s.CollectCounts.TLBFlushes > 0 {
				d["us_per_tlb_flush"][s.Rep] = float64(s.CollectNS) / 1e3 / float64(s.CollectCounts.TLBFlushes)
			}
		}
		d["tlb_shootdowns"][s.Rep] = float64(s.WriteCounts.Shootdowns + s.CollectCounts.Shootdowns)
		if s.Tracker != "none" {
			d["syscalls"][s.Rep] = float64(s.Syscalls)
			d["regions"][s.Rep] = float64(s.Regions)
			if s.Collected > 0 {
				d["ns_per_collected_page"][s.Rep] = float64(s.CollectNS) / float64(s.Collected)
			}
		}
		d["write_ns"][s.Rep] = float64(s.WriteNS)
		d["faults_raw"][s.Rep] = float64(s.WriteCounts.Faults)
	}
	units := map[string]string{"write_ms": "ms", "collect_ms": "ms", "total_ms": "ms", "faults": "count", "tlb_flushes": "count", "tlb_shootdowns": "count",
		"syscalls": "count", "regions": "count", "ns_per_collected_page": "ns", "us_per_tlb_flush": "µs"}
	for _, size := range w.SizesMiB {
		for _, thp := range []bool{false, true} {
			for _, kind := range WriteKinds(w, thp) {
				cell := writeCell(size, thp, kind)
				none := data[key{cell, "none"}]
				sd := data[key{cell, "softdirty"}]
				for _, tr := range bench.Trackers {
					d := data[key{cell, tr}]
					if d == nil {
						continue
					}
					for _, m := range metrics {
						if u, ok := units[m]; ok && len(d[m]) > 0 {
							a.add("writeonly", cell, tr, m, u, BootMedian(d[m].values()))
						}
					}
					if none != nil {
						a.add("writeonly", cell, tr, "total_x_none", "×", pairedRatio(d["total_ms"], none["total_ms"]))
						// The tracking cost of one fault: the write
						// phase's extra time over untracked per extra
						// fault, when the tracker faults at all.
						c := aligned(d["write_ns"], none["write_ns"], d["faults_raw"], none["faults_raw"])
						if tr != "none" && len(c[0]) > 0 && median(c[2], nil)-median(c[3], nil) >= float64(pages[cell])/10 {
							a.add("writeonly", cell, tr, "us_per_fault", "µs", Boot(c, true, func(m []float64) float64 {
								if m[2]-m[3] <= 0 {
									return math.NaN()
								}
								return (m[0] - m[1]) / (m[2] - m[3]) / 1e3
							}))
						}
					}
					if sd != nil {
						a.add("writeonly", cell, tr, "total_x_softdirty", "×", pairedRatio(d["total_ms"], sd["total_ms"]))
					}
				}
				if l, n := data[key{cell, "ldt"}], data[key{cell, "naive"}]; l != nil && n != nil {
					for _, m := range []string{"write_ms", "collect_ms", "total_ms"} {
						a.add("writeonly", cell, AA, m, "×", pairedRatio(l[m], n[m]))
					}
				}
			}
		}
	}
}

// EarlyPoints is how many points of the timeline make its early phase: the
// first second after tracking starts.
func EarlyPoints(tl *bench.Timeline) int {
	if tl.PointMS <= 0 {
		return 0
	}
	return min(tl.Points, max(1, 1000/tl.PointMS))
}

// throughput is operations per second over points [from, to) of a run.
func throughput(s bench.TimelineSample, from, to int) float64 {
	var ops, ns int64
	for i := from; i < to && i < len(s.Ops) && i < len(s.PointNS); i++ {
		ops += s.Ops[i]
		ns += s.PointNS[i]
	}
	if ns <= 0 {
		return math.NaN()
	}
	return float64(ops) / (float64(ns) / 1e9)
}

func (a *Analysis) timeline(tl *bench.Timeline) {
	early := EarlyPoints(tl)
	type key struct {
		tracker string
		cp      int
	}
	data := map[key]map[string]series{}
	for _, s := range tl.Samples {
		k := key{s.Tracker, s.CheckpointMS}
		if data[k] == nil {
			data[k] = map[string]series{}
		}
		d := data[k]
		put := func(m string, v float64) {
			if d[m] == nil {
				d[m] = series{}
			}
			if finite(v) {
				d[m][s.Rep] = v
			}
		}
		put("ops_early", throughput(s, 0, early))
		put("ops_run", throughput(s, 0, len(s.Ops)))
		var fe, fr, ns int64
		for i, c := range s.Counts {
			if i < early {
				fe += c.Faults
			}
			fr += c.Faults
		}
		for i := 0; i < len(s.PointNS) && i < early; i++ {
			ns += s.PointNS[i]
		}
		if ns > 0 {
			put("faults_per_s_early", float64(fe)/(float64(ns)/1e9))
		}
		put("faults_run", float64(fr))
		if len(s.Collections) > 0 {
			var ms, pages, tlb, perPage []float64
			for _, c := range s.Collections {
				ms = append(ms, float64(c.NS)/1e6)
				pages = append(pages, float64(c.Pages))
				if c.Counts.TLBFlushes >= 0 {
					tlb = append(tlb, float64(c.Counts.TLBFlushes))
				}
				if c.Pages > 0 {
					perPage = append(perPage, float64(c.NS)/float64(c.Pages))
				}
			}
			put("collections", float64(len(s.Collections)))
			put("collect_ms", median(ms, nil))
			put("pages_per_collection", median(pages, nil))
			if len(tlb) > 0 {
				put("tlb_flushes_per_collection", median(tlb, nil))
			}
			if len(perPage) > 0 {
				put("ns_per_collected_page", median(perPage, nil))
			}
		}
	}
	units := map[string]string{"ops_early": "ops/s", "ops_run": "ops/s", "faults_per_s_early": "faults/s", "faults_run": "count", "collections": "count",
		"collect_ms": "ms", "pages_per_collection": "pages", "tlb_flushes_per_collection": "count", "ns_per_collected_page": "ns"}
	none := data[key{"none", 0}]
	for _, cp := range tl.CheckpointsMS {
		cell := intervalCell(cp)
		sd := data[key{"softdirty", cp}]
		for _, tr := range bench.Trackers {
			d := data[key{tr, cp}]
			if tr == "none" {
				d = none
			}
			if d == nil {
				continue
			}
			for _, m := range sortedKeys(units) {
				if len(d[m]) > 0 {
					a.add("timeline", cell, tr, m, units[m], BootMedian(d[m].values()))
				}
			}
			for _, m := range []string{"ops_early", "ops_run"} {
				if none != nil {
					a.add("timeline", cell, tr, m+"_x_none", "×", pairedRatio(d[m], none[m]))
				}
				if sd != nil {
					a.add("timeline", cell, tr, m+"_x_softdirty", "×", pairedRatio(d[m], sd[m]))
				}
			}
		}
		if l, n := data[key{"ldt", cp}], data[key{"naive", cp}]; l != nil && n != nil {
			for _, m := range []string{"ops_early", "ops_run", "collect_ms"} {
				a.add("timeline", cell, AA, m, "×", pairedRatio(l[m], n[m]))
			}
		}
	}
}

// TimelineCurve is the median over repetitions of each point's throughput
// (ops/s) and of its end time (s since tracking started), per tracker, for
// one checkpoint interval (untracked runs belong to every interval).
func TimelineCurve(tl *bench.Timeline, cp int) (rate, at map[string][]float64) {
	type run struct{ r, t []float64 }
	per := map[string][]run{}
	for _, s := range tl.Samples {
		if s.CheckpointMS != cp && s.Tracker != "none" {
			continue
		}
		var x run
		var sum float64
		for i, o := range s.Ops {
			if i >= len(s.PointNS) || s.PointNS[i] <= 0 {
				break
			}
			sum += float64(s.PointNS[i]) / 1e9
			x.r = append(x.r, float64(o)/(float64(s.PointNS[i])/1e9))
			x.t = append(x.t, sum)
		}
		per[s.Tracker] = append(per[s.Tracker], x)
	}
	rate, at = map[string][]float64{}, map[string][]float64{}
	for tr, runs := range per {
		n := len(runs[0].r)
		for _, r := range runs {
			n = min(n, len(r.r))
		}
		for i := 0; i < n; i++ {
			var rs, ts []float64
			for _, r := range runs {
				rs, ts = append(rs, r.r[i]), append(ts, r.t[i])
			}
			rate[tr] = append(rate[tr], median(rs, nil))
			at[tr] = append(at[tr], median(ts, nil))
		}
	}
	return rate, at
}

func (a *Analysis) redis(rd *bench.Redis) {
	type key struct {
		tracker string
		iv      int
	}
	data := map[key]map[string]series{}
	for _, s := range rd.Samples {
		k := key{s.Tracker, s.IntervalMS}
		if data[k] == nil {
			data[k] = map[string]series{"ops_s": {}, "faults": {}, "tlb_flushes": {}, "tlb_shootdowns": {}, "rounds": {}, "pages_per_round": {}}
		}
		d := data[k]
		d["ops_s"][s.Rep] = s.OpsPerSec
		d["faults"][s.Rep] = float64(s.Counts.Faults)
		if s.Counts.TLBFlushes >= 0 {
			d["tlb_flushes"][s.Rep] = float64(s.Counts.TLBFlushes)
		}
		d["tlb_shootdowns"][s.Rep] = float64(s.Counts.Shootdowns)
		if s.Tracker != "none" {
			d["rounds"][s.Rep] = float64(s.Rounds)
			if len(s.Pages) > 0 {
				var ps []float64
				for _, p := range s.Pages {
					ps = append(ps, float64(p))
				}
				d["pages_per_round"][s.Rep] = median(ps, nil)
			}
		}
	}
	units := map[string]string{"ops_s": "ops/s", "faults": "count", "tlb_flushes": "count", "tlb_shootdowns": "count", "rounds": "count", "pages_per_round": "pages"}
	none := data[key{"none", 0}]
	cells := append([]int{0}, rd.IntervalsMS...)
	for _, iv := range cells {
		cell := intervalCell(iv)
		for _, tr := range bench.Trackers {
			d := data[key{tr, iv}]
			if d == nil {
				continue
			}
			for _, m := range sortedKeys(units) {
				if len(d[m]) > 0 {
					a.add("redis", cell, tr, m, units[m], BootMedian(d[m].values()))
				}
			}
			if none != nil {
				a.add("redis", cell, tr, "x_none", "×", pairedRatio(d["ops_s"], none["ops_s"]))
			}
			if sd := data[key{"softdirty", iv}]; sd != nil {
				a.add("redis", cell, tr, "x_softdirty", "×", pairedRatio(d["ops_s"], sd["ops_s"]))
			}
		}
		if l, n := data[key{"ldt", iv}], data[key{"naive", iv}]; l != nil && n != nil {
			a.add("redis", cell, AA, "ops_s", "×", pairedRatio(l["ops_s"], n["ops_s"]))
		}
	}
}

func (a *Analysis) collect(c *bench.Collect) {
	type key struct {
		tracker string
		pct     float64
	}
	names := []string{"us", "syscall_us", "user_us", "regions", "syscalls", "tlb_flushes", "tlb_shootdowns", "ns_per_collected_page", "ns_per_region", "us_per_tlb_flush",
		"ptes_visited", "ptes_changed", "syscall_ns_per_pte"}
	data := map[key]map[string]series{}
	for _, s := range c.Samples {
		k := key{s.Tracker, s.DirtyPct}
		if data[k] == nil {
			data[k] = map[string]series{}
			for _, m := range names {
				data[k][m] = series{}
			}
		}
		d := data[k]
		d["us"][s.Rep] = float64(s.NS) / 1e3
		if s.SyscallNS > 0 {
			d["syscall_us"][s.Rep] = float64(s.SyscallNS) / 1e3
			d["user_us"][s.Rep] = float64(s.NS-s.SyscallNS) / 1e3
		}
		d["regions"][s.Rep] = float64(s.Regions)
		d["syscalls"][s.Rep] = float64(s.Syscalls)
		if s.PTEsVisited > 0 {
			d["ptes_visited"][s.Rep] = float64(s.PTEsVisited)
			d["ptes_changed"][s.Rep] = float64(s.PTEsChanged)
			if s.SyscallNS > 0 {
				// The kernel's time per entry it decided on.
				d["syscall_ns_per_pte"][s.Rep] = float64(s.SyscallNS) / float64(s.PTEsVisited)
			}
		}
		if s.Counts.TLBFlushes >= 0 {
			d["tlb_flushes"][s.Rep] = float64(s.Counts.TLBFlushes)
			if s.Counts.TLBFlushes > 0 {
				d["us_per_tlb_flush"][s.Rep] = float64(s.NS) / 1e3 / float64(s.Counts.TLBFlushes)
			}
		}
		d["tlb_shootdowns"][s.Rep] = float64(s.Counts.Shootdowns)
		if s.Collected > 0 {
			d["ns_per_collected_page"][s.Rep] = float64(s.NS) / float64(s.Collected)
		}
		if s.Regions > 0 {
			d["ns_per_region"][s.Rep] = float64(s.NS) / float64(s.Regions)
		}
	}
	units := map[string]string{"us": "µs", "syscall_us": "µs", "user_us": "µs", "regions": "count", "syscalls": "count", "tlb_flushes": "count", "tlb_shootdowns": "count",
		"ns_per_collected_page": "ns", "ns_per_region": "ns", "us_per_tlb_flush": "µs",
		"ptes_visited": "count", "ptes_changed": "count", "syscall_ns_per_pte": "ns"}
	for _, pct := range c.Pcts {
		cell := collectCell(pct)
		for _, tr := range bench.Trackers[1:] {
			d := data[key{tr, pct}]
			if d == nil {
				continue
			}
			for _, m := range names {
				if len(d[m]) > 0 {
					a.add("collect", cell, tr, m, units[m], BootMedian(d[m].values()))
				}
			}
			if c.FloorNS > 0 {
				us := a.Get("collect", cell, tr, "us")
				f := c.FloorNS / 1e3
				a.add("collect", cell, tr, "x_floor", "×", Estimate{Value: us.Value / f, Interval: [2]float64{us.Interval[0] / f, us.Interval[1] / f}, N: us.N})
			}
			if sd := data[key{"softdirty", pct}]; sd != nil {
				a.add("collect", cell, tr, "x_softdirty", "×", pairedRatio(d["us"], sd["us"]))
			}
			// Issue 27's goal compares LDT with PAGEMAP_SCAN, in total
			// and in the kernel alone.
			if pm := data[key{"pagemap-scan", pct}]; pm != nil {
				a.add("collect", cell, tr, "x_pagemap_scan", "×", pairedRatio(d["us"], pm["us"]))
				if len(d["syscall_us"]) > 0 && len(pm["syscall_us"]) > 0 {
					a.add("collect", cell, tr, "syscall_x_pagemap_scan", "×", pairedRatio(d["syscall_us"], pm["syscall_us"]))
				}
			}
		}
		// Issue 27's goals as ratios over LDT, for claims(): another
		// tracker's time ÷ LDT's, and LDT's time per reported page
		// against its own at 10% dirty.
		if l := data[key{"ldt", pct}]; l != nil {
			for _, o := range []string{"pagemap-scan", "softdirty"} {
				if d := data[key{o, pct}]; d != nil {
					a.add("collect", cell, "ldt", "over_ldt_"+o, "×", pairedRatio(d["us"], l["us"]))
				}
			}
			if ten := data[key{"ldt", 10}]; ten != nil && pct > 10 {
				a.add("collect", cell, "ldt", "ns_per_page_x_10pct", "×", pairedRatio(l["ns_per_collected_page"], ten["ns_per_collected_page"]))
			}
		}
		if l, n := data[key{"ldt", pct}], data[key{"naive", pct}]; l != nil && n != nil {
			a.add("collect", cell, AA, "us", "×", pairedRatio(l["us"], n["us"]))
			if len(l["syscall_us"]) > 0 && len(n["syscall_us"]) > 0 {
				a.add("collect", cell, AA, "syscall_us", "×", pairedRatio(l["syscall_us"], n["syscall_us"]))
			}
		}
	}
}

// gupCell names the GUP figure's one cell.
func gupCell(g *bench.GUP) string { return fmt.Sprintf("%d MiB after a collection", g.SizeMiB) }

// gup: the registration's time, per page and against untracked, and its
// faults.
func (a *Analysis) gup(g *bench.GUP) {
	cell := gupCell(g)
	data := map[string]map[string]series{}
	for _, s := range g.Samples {
		d := data[s.Tracker]
		if d == nil {
			d = map[string]series{"us": {}, "ns_per_page": {}, "faults": {}}
			data[s.Tracker] = d
		}
		d["us"][s.Rep] = float64(s.NS) / 1e3
		d["ns_per_page"][s.Rep] = float64(s.NS) / float64(max(1, s.Pages))
		d["faults"][s.Rep] = float64(s.Counts.Faults)
	}
	units := map[string]string{"us": "µs", "ns_per_page": "ns", "faults": "count"}
	for _, tr := range bench.Trackers {
		d := data[tr]
		if d == nil {
			continue
		}
		for _, m := range []string{"us", "ns_per_page", "faults"} {
			a.add("gup", cell, tr, m, units[m], BootMedian(d[m].values()))
		}
		if none := data["none"]; none != nil && tr != "none" {
			a.add("gup", cell, tr, "x_none", "×", pairedRatio(d["us"], none["us"]))
		}
	}
	if l, n := data["ldt"], data["naive"]; l != nil && n != nil {
		a.add("gup", cell, AA, "us", "×", pairedRatio(l["us"], n["us"]))
	}
}

// claims sets the paper's three headline claims against this run, one row
// per cell that measures them.
func (a *Analysis) claims(r *Result) {
	add := func(c Claim, ratio, aa Estimate) {
		c.Estimate, c.AA = ratio, aa
		c.Verdict, c.Judged, c.Why = Judge(ratio, aa, c.Target)
		a.Claims = append(a.Claims, c)
	}
	if w := r.WriteOnly; w != nil {
		for _, kind := range WriteKinds(w, false) {
			if kind.Bytes < 4096 {
				continue
			}
			for _, size := range w.SizesMiB {
				cell := writeCell(size, false, kind)
				add(Claim{Claim: "write-only workloads ~2× faster with LDT than with write-restriction tracking",
					ReadAs: fmt.Sprintf("soft-dirty ÷ LDT total time (write + collect) ≥ %.3g", approx*2), Figure: "writeonly", Cell: cell, Target: approx * 2},
					pairedRatio(a.seriesOf(r, "writeonly", cell, "softdirty"), a.seriesOf(r, "writeonly", cell, "ldt")),
					a.Get("writeonly", cell, AA, "total_ms"))
			}
		}
	}
	if tl := r.Timeline; tl != nil {
		for _, cp := range tl.CheckpointsMS {
			cell := intervalCell(cp)
			add(Claim{Claim: "~3× soft-dirty's throughput early in a 75%-write run",
				ReadAs: fmt.Sprintf("LDT ÷ soft-dirty operations/s over the first %d ms after tracking starts ≥ %.3g", EarlyPoints(tl)*tl.PointMS, approx*3),
				Figure: "timeline", Cell: cell, Target: approx * 3},
				a.Get("timeline", cell, "ldt", "ops_early_x_softdirty"), a.Get("timeline", cell, AA, "ops_early"))
		}
	}
	if c := r.Collect; c != nil {
		for _, pct := range c.Pcts {
			cell := collectCell(pct)
			aa := a.Get("collect", cell, AA, "us")
			goal := func(c Claim, metric string) {
				if e := a.Get("collect", cell, "ldt", metric); e.Defined() {
					c.Figure, c.Cell = "collect", cell
					add(c, e, aa)
				}
			}
			goal(Claim{Claim: "issue 27 goal: LDT collect+clear never slower than PAGEMAP_SCAN",
				ReadAs: "PAGEMAP_SCAN ÷ LDT collection time ≥ 1", Target: 1}, "over_ldt_pagemap-scan")
			switch {
			case pct <= 10:
				goal(Claim{Claim: "issue 27 goal: at least 2× faster than pagemap read + clear_refs up to 10% dirty",
					ReadAs: "soft-dirty ÷ LDT collection time ≥ 2", Target: 2}, "over_ldt_softdirty")
			case pct == 100:
				goal(Claim{Claim: "issue 27 goal: at least 1.3× faster than pagemap read + clear_refs at 100% dirty",
					ReadAs: "soft-dirty ÷ LDT collection time ≥ 1.3", Target: 1.3}, "over_ldt_softdirty")
			}
			if pct > 10 {
				goal(Claim{Claim: "issue 27 goal: time per dirty page flat from 10% to 100% dirty",
					ReadAs: "LDT's ns per reported page here ÷ at 10% dirty ≥ 0.8 (at most a fifth cheaper per page)", Target: 0.8}, "ns_per_page_x_10pct")
			}
		}
	}
	if rd := r.Redis; rd != nil {
		for _, iv := range rd.IntervalsMS {
			cell := intervalCell(iv)
			add(Claim{Claim: "2–8% more Redis throughput than soft-dirty with an incremental checkpointer",
				ReadAs: "LDT ÷ soft-dirty commands/s ≥ 1.02 (the claim's lower end)", Figure: "redis", Cell: cell, Target: 1.02},
				a.Get("redis", cell, "ldt", "x_softdirty"), a.Get("redis", cell, AA, "ops_s"))
		}
	}
}

// seriesOf is figure 1's total time of a tracker in a cell, per repetition.
func (a *Analysis) seriesOf(r *Result, figure, cell, tracker string) series {
	s := series{}
	if figure == "writeonly" && r.WriteOnly != nil {
		for _, x := range r.WriteOnly.Samples {
			if x.Tracker == tracker && writeCell(x.SizeMiB, x.THP, kindOf(x)) == cell {
				s[x.Rep] = float64(x.WriteNS+x.CollectNS) / 1e6
			}
		}
	}
	return s
}
