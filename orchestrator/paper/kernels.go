package paper

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"

	"ldtlab/guest/bench"
	"ldtlab/images/kernel"
	"ldtlab/orchestrator/lab"
)

// KernelSpec is one kernel of an A/B run (`--kernels`): the lab's own
// kernel selection (kernel.Select), so an A/B measures exactly the kernels
// `labctl build --patches/--vanilla` builds and caches.
type KernelSpec struct {
	// Name is the spec as given: "vanilla", "all", or a selection of the
	// series with "+" for the selection syntax's comma ("0001-0009",
	// "0001-0005+0007").
	Name    string `json:"name"`
	Vanilla bool   `json:"vanilla,omitempty"`
	Patches string `json:"patches,omitempty"` // kernel.Options.Patches; "" = all
}

// ParseKernels reads --kernels: comma-separated kernels (the comma
// separates kernels, so a selection's own list uses "+"), at least two,
// each checked against the series in repo.
func ParseKernels(repo, s string) ([]KernelSpec, error) {
	var out []KernelSpec
	seen := map[string]bool{}
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		var k KernelSpec
		switch item {
		case "":
			return nil, fmt.Errorf("--kernels %q: an empty kernel", s)
		case "vanilla":
			k = KernelSpec{Name: item, Vanilla: true}
		case "all":
			k = KernelSpec{Name: item}
		default:
			k = KernelSpec{Name: item, Patches: strings.ReplaceAll(item, "+", ",")}
			if _, err := (kernel.Options{Repo: repo, Patches: k.Patches}).Selection(); err != nil {
				return nil, fmt.Errorf("--kernels: kernel %q: %w", item, err)
			}
		}
		if seen[k.Name] {
			return nil, fmt.Errorf("--kernels %q: %s twice", s, k.Name)
		}
		seen[k.Name] = true
		out = append(out, k)
	}
	if len(out) < 2 {
		return nil, fmt.Errorf("--kernels %q: an A/B needs at least two kernels", s)
	}
	return out, nil
}

// apply selects k's kernel in o (config, memory and the rest stay).
func (k KernelSpec) apply(o lab.Options) lab.Options {
	o.Vanilla, o.Patches, o.Without, o.LDTOff = k.Vanilla, k.Patches, "", false
	return o
}

// trackersFor are the trackers a kernel can run: a kernel without the
// series has no /dev/ldt (so neither ldt nor naive).
func trackersFor(vanilla bool) []string {
	if vanilla {
		return []string{"none", "softdirty", "pagemap-scan"}
	}
	return bench.Trackers
}

// KernelRun is one kernel of an A/B run: its provenance and the samples
// measured on it.
type KernelRun struct {
	Spec               KernelSpec       `json:"spec"`
	Kernel             string           `json:"kernel"`
	Variant            string           `json:"variant"`
	BuildKey           string           `json:"build_key"`
	Patches            []string         `json:"patches"`
	SeriesSHA256       string           `json:"series_sha256"`
	KernelConfigSHA256 string           `json:"kernel_config_sha256"`
	Trackers           []string         `json:"trackers"`
	BootS              float64          `json:"boot_s"`
	WriteOnly          *bench.WriteOnly `json:"write_only,omitempty"`
	Timeline           *bench.Timeline  `json:"timeline,omitempty"`
	Redis              *bench.Redis     `json:"redis,omitempty"`
	Collect            *bench.Collect   `json:"collect,omitempty"`
	GUP                *bench.GUP       `json:"gup,omitempty"`
}

// merge adds one ldt-bench result of figure fig (one or more
// repetitions) to kr.
func (kr *KernelRun) merge(fig string, out []byte) error {
	var err error
	switch fig {
	case "writeonly":
		err = mergeInto(&kr.WriteOnly, out, func(a, x *bench.WriteOnly) {
			a.Samples, a.Reps = append(a.Samples, x.Samples...), a.Reps+x.Reps
		})
	case "timeline":
		err = mergeInto(&kr.Timeline, out, func(a, x *bench.Timeline) {
			a.Samples, a.Reps = append(a.Samples, x.Samples...), a.Reps+x.Reps
		})
	case "collect":
		// The memory bandwidth (the floor) is the first call's.
		err = mergeInto(&kr.Collect, out, func(a, x *bench.Collect) {
			a.Samples, a.Reps = append(a.Samples, x.Samples...), a.Reps+x.Reps
		})
	case "gup":
		err = mergeInto(&kr.GUP, out, func(a, x *bench.GUP) {
			a.Samples, a.Reps = append(a.Samples, x.Samples...), a.Reps+x.Reps
		})
	case "redis":
		err = mergeInto(&kr.Redis, out, func(a, x *bench.Redis) {
			a.Samples, a.Reps = append(a.Samples, x.Samples...), a.Reps+x.Reps
		})
	default:
		return fmt.Errorf("unknown figure %q", fig)
	}
	if err != nil {
		return fmt.Errorf("reading ldt-bench's result: %w", err)
	}
	return nil
}

// mergeInto decodes one ldt-bench result into *dst, or, when *dst holds
// earlier repetitions, adds the new ones with add.
func mergeInto[T any](dst **T, out []byte, add func(into, x *T)) error {
	var x T
	if err := json.Unmarshal(out, &x); err != nil {
		return err
	}
	if *dst == nil {
		*dst = &x
	} else {
		add(*dst, &x)
	}
	return nil
}

// result is kr as a one-kernel Result (for the analysis and the sanity
// checks).
func (kr *KernelRun) result(m Meta) *Result {
	m.Kernel, m.Variant, m.BuildKey, m.Patches, m.SeriesSHA256, m.KernelConfigSHA256 = kr.Kernel, kr.Variant, kr.BuildKey, kr.Patches, kr.SeriesSHA256, kr.KernelConfigSHA256
	m.Trackers = kr.Trackers
	return &Result{Meta: m, WriteOnly: kr.WriteOnly, Timeline: kr.Timeline, Redis: kr.Redis, Collect: kr.Collect, GUP: kr.GUP}
}

// kernelOrder is repetition rep's random order of n kernels.
func kernelOrder(seed uint64, rep, n int) []int {
	return rand.New(rand.NewPCG(seed, uint64(rep)^0x6b65726e656c73)).Perm(n)
}

// KernelStat compares one metric of one cell and tracker between two
// kernels of an A/B run: Other ÷ Base, paired over repetitions (the
// kernels ran the same repetition back to back).
type KernelStat struct {
	Base    string   `json:"base"`
	Other   string   `json:"other"`
	Figure  string   `json:"figure"`
	Cell    string   `json:"cell"`
	Tracker string   `json:"tracker"`
	Metric  string   `json:"metric"`
	Unit    string   `json:"unit"`
	BaseMed Estimate `json:"base_median"`
	OthMed  Estimate `json:"other_median"`
	Ratio   Estimate `json:"ratio"`
	// AA is ldt÷naive of the same cell and metric on the base kernel
	// (on the other one when the base is vanilla): the noise floor a
	// ratio must clear.
	AA Estimate `json:"aa"`
}

// abMetrics are the metrics an A/B compares, per figure, with their
// units: the times and the counts that explain them.
var abMetrics = map[string][][2]string{
	"writeonly": {{"total_ms", "ms"}, {"write_ms", "ms"}, {"collect_ms", "ms"}, {"faults", "count"}, {"tlb_flushes", "count"}},
	"timeline":  {{"ops_early", "ops/s"}, {"ops_run", "ops/s"}, {"collect_ms", "ms"}, {"faults_run", "count"}, {"tlb_flushes_per_collection", "count"}},
	"collect":   {{"us", "µs"}, {"syscall_us", "µs"}, {"tlb_flushes", "count"}, {"regions", "count"}, {"syscalls", "count"}, {"ptes_visited", "count"}, {"ptes_changed", "count"}},
	"gup":       {{"us", "µs"}, {"faults", "count"}},
	"redis":     {{"ops_s", "ops/s"}, {"faults", "count"}},
}

type abKey struct{ figure, cell, tracker, metric string }

// abSeries are the per-repetition values of the A/B metrics of a run.
func abSeries(r *Result) map[abKey]series {
	out := map[abKey]series{}
	put := func(k abKey, rep int, v float64) {
		if !finite(v) {
			return
		}
		if out[k] == nil {
			out[k] = series{}
		}
		out[k][rep] = v
	}
	if w := r.WriteOnly; w != nil {
		for _, s := range w.Samples {
			c := writeCell(s.SizeMiB, s.THP, kindOf(s))
			put(abKey{"writeonly", c, s.Tracker, "total_ms"}, s.Rep, float64(s.WriteNS+s.CollectNS)/1e6)
			if s.Tracker != "none" { // untracked, the total is the write
				put(abKey{"writeonly", c, s.Tracker, "write_ms"}, s.Rep, float64(s.WriteNS)/1e6)
				put(abKey{"writeonly", c, s.Tracker, "collect_ms"}, s.Rep, float64(s.CollectNS)/1e6)
			}
			put(abKey{"writeonly", c, s.Tracker, "faults"}, s.Rep, float64(s.WriteCounts.Faults+s.CollectCounts.Faults))
			if s.WriteCounts.TLBFlushes >= 0 && s.CollectCounts.TLBFlushes >= 0 {
				put(abKey{"writeonly", c, s.Tracker, "tlb_flushes"}, s.Rep, float64(s.WriteCounts.TLBFlushes+s.CollectCounts.TLBFlushes))
			}
		}
	}
	if tl := r.Timeline; tl != nil {
		early := EarlyPoints(tl)
		for _, s := range tl.Samples {
			cells := []string{intervalCell(s.CheckpointMS)}
			if s.Tracker == "none" {
				// Untracked runs belong to every interval.
				cells = nil
				for _, cp := range tl.CheckpointsMS {
					cells = append(cells, intervalCell(cp))
				}
			}
			var faults int64
			for _, c := range s.Counts {
				faults += c.Faults
			}
			var ms, tlb []float64
			for _, c := range s.Collections {
				ms = append(ms, float64(c.NS)/1e6)
				if c.Counts.TLBFlushes >= 0 {
					tlb = append(tlb, float64(c.Counts.TLBFlushes))
				}
			}
			for _, c := range cells {
				put(abKey{"timeline", c, s.Tracker, "ops_early"}, s.Rep, throughput(s, 0, early))
				put(abKey{"timeline", c, s.Tracker, "ops_run"}, s.Rep, throughput(s, 0, len(s.Ops)))
				put(abKey{"timeline", c, s.Tracker, "faults_run"}, s.Rep, float64(faults))
				if len(ms) > 0 {
					put(abKey{"timeline", c, s.Tracker, "collect_ms"}, s.Rep, median(ms, nil))
				}
				if len(tlb) > 0 {
					put(abKey{"timeline", c, s.Tracker, "tlb_flushes_per_collection"}, s.Rep, median(tlb, nil))
				}
			}
		}
	}
	if c := r.Collect; c != nil {
		for _, s := range c.Samples {
			cl := collectCell(s.DirtyPct)
			put(abKey{"collect", cl, s.Tracker, "us"}, s.Rep, float64(s.NS)/1e3)
			if s.SyscallNS > 0 {
				put(abKey{"collect", cl, s.Tracker, "syscall_us"}, s.Rep, float64(s.SyscallNS)/1e3)
			}
			if s.Counts.TLBFlushes >= 0 {
				put(abKey{"collect", cl, s.Tracker, "tlb_flushes"}, s.Rep, float64(s.Counts.TLBFlushes))
			}
			put(abKey{"collect", cl, s.Tracker, "regions"}, s.Rep, float64(s.Regions))
			put(abKey{"collect", cl, s.Tracker, "syscalls"}, s.Rep, float64(s.Syscalls))
			if s.PTEsVisited > 0 {
				put(abKey{"collect", cl, s.Tracker, "ptes_visited"}, s.Rep, float64(s.PTEsVisited))
				put(abKey{"collect", cl, s.Tracker, "ptes_changed"}, s.Rep, float64(s.PTEsChanged))
			}
		}
	}
	if g := r.GUP; g != nil {
		for _, s := range g.Samples {
			put(abKey{"gup", gupCell(g), s.Tracker, "us"}, s.Rep, float64(s.NS)/1e3)
			put(abKey{"gup", gupCell(g), s.Tracker, "faults"}, s.Rep, float64(s.Counts.Faults))
		}
	}
	if rd := r.Redis; rd != nil {
		for _, s := range rd.Samples {
			cl := intervalCell(s.IntervalMS)
			put(abKey{"redis", cl, s.Tracker, "ops_s"}, s.Rep, s.OpsPerSec)
			put(abKey{"redis", cl, s.Tracker, "faults"}, s.Rep, float64(s.Counts.Faults))
		}
	}
	return out
}

// kernels compares every kernel of an A/B run with the first, metric by
// metric, in figure, cell and tracker order.
func (a *Analysis) kernels(r *Result) {
	if len(r.Kernels) < 2 {
		return
	}
	base := r.Kernels[0]
	bs := abSeries(base.result(r.Meta))
	keys := make([]abKey, 0, len(bs))
	for k := range bs {
		keys = append(keys, k)
	}
	figOrder := map[string]int{"writeonly": 0, "timeline": 1, "collect": 2, "gup": 3, "redis": 4}
	trOrder := func(t string) int { return slices.Index(bench.Trackers, t) }
	metOrder := func(f, m string) int {
		return slices.IndexFunc(abMetrics[f], func(x [2]string) bool { return x[0] == m })
	}
	slices.SortFunc(keys, func(x, y abKey) int {
		if d := figOrder[x.figure] - figOrder[y.figure]; d != 0 {
			return d
		}
		if x.cell != y.cell {
			return strings.Compare(x.cell, y.cell)
		}
		if d := trOrder(x.tracker) - trOrder(y.tracker); d != 0 {
			return d
		}
		return metOrder(x.figure, x.metric) - metOrder(y.figure, y.metric)
	})
	for _, kr := range r.Kernels[1:] {
		oth := abSeries(kr.result(r.Meta))
		for _, k := range keys {
			o, ok := oth[k]
			if !ok {
				continue
			}
			unit := ""
			for _, m := range abMetrics[k.figure] {
				if m[0] == k.metric {
					unit = m[1]
				}
			}
			st := KernelStat{Base: base.Spec.Name, Other: kr.Spec.Name, Figure: k.figure, Cell: k.cell, Tracker: k.tracker, Metric: k.metric, Unit: unit,
				BaseMed: BootMedian(bs[k].values()), OthMed: BootMedian(o.values()), Ratio: pairedRatio(o, bs[k])}
			// The base kernel's A/A; the other's when the base has no
			// /dev/ldt (vanilla).
			for _, src := range []map[abKey]series{bs, oth} {
				l, n := src[abKey{k.figure, k.cell, "ldt", k.metric}], src[abKey{k.figure, k.cell, "naive", k.metric}]
				if len(l) > 0 && len(n) > 0 && !st.AA.Defined() {
					st.AA = pairedRatio(l, n)
				}
			}
			a.Kernels = append(a.Kernels, st)
		}
	}
}
