package paper

import (
	"fmt"
	"slices"

	"ldtlab/guest/bench"
)

// Summary is the median, min and max of a set of samples.
type Summary struct {
	Median, Min, Max float64
	N                int
}

// Summarize sorts a copy of xs; the median of an even count is the mean
// of the two middle values.
func Summarize(xs []float64) Summary {
	if len(xs) == 0 {
		return Summary{}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return Summary{Median: med, Min: s[0], Max: s[len(s)-1], N: len(s)}
}

// Ratio is a/b of two medians, "–" when undefined.
func Ratio(a, b Summary) string {
	if a.N == 0 || b.N == 0 || b.Median == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f×", a.Median/b.Median)
}

// writeKey names one series point of figure 1.
type writeKey struct {
	tracker string
	size    int
	thp     bool
	wb      int
}

// writeStats groups figure 1's samples: total (write + collect), write
// and collect time, in milliseconds.
func writeStats(w *bench.WriteOnly) (total, write, coll map[writeKey]Summary) {
	t, wr, c := map[writeKey][]float64{}, map[writeKey][]float64{}, map[writeKey][]float64{}
	for _, s := range w.Samples {
		k := writeKey{s.Tracker, s.SizeMiB, s.THP, s.WriteBytes}
		t[k] = append(t[k], float64(s.WriteNS+s.CollectNS)/1e6)
		wr[k] = append(wr[k], float64(s.WriteNS)/1e6)
		c[k] = append(c[k], float64(s.CollectNS)/1e6)
	}
	total, write, coll = map[writeKey]Summary{}, map[writeKey]Summary{}, map[writeKey]Summary{}
	for k := range t {
		total[k], write[k], coll[k] = Summarize(t[k]), Summarize(wr[k]), Summarize(c[k])
	}
	return
}

// timelineRate is ops/s per interval and the time at each interval's
// end (s): the medians over repetitions, per tracker. Intervals are as
// long as they really were (a slow collection stretches them).
func timelineRate(tl *bench.Timeline) (rate, at map[string][]float64) {
	type run struct{ r, t []float64 }
	per := map[string][]run{}
	for _, s := range tl.Samples {
		var x run
		var sum float64
		for i, o := range s.Ops {
			if i >= len(s.TickNS) || s.TickNS[i] <= 0 {
				break
			}
			sum += float64(s.TickNS[i]) / 1e9
			x.r = append(x.r, float64(o)/(float64(s.TickNS[i])/1e9))
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
			rate[tr] = append(rate[tr], Summarize(rs).Median)
			at[tr] = append(at[tr], Summarize(ts).Median)
		}
	}
	return rate, at
}

// timelineWindow is each repetition's throughput (ops/s) over intervals
// [from, to) of a tracker.
func timelineWindow(tl *bench.Timeline, tracker string, from, to int) Summary {
	var xs []float64
	for _, s := range tl.Samples {
		if s.Tracker != tracker {
			continue
		}
		var ops, ns int64
		for i := from; i < to && i < len(s.Ops) && i < len(s.TickNS); i++ {
			ops += s.Ops[i]
			ns += s.TickNS[i]
		}
		if ns > 0 {
			xs = append(xs, float64(ops)/(float64(ns)/1e9))
		}
	}
	return Summarize(xs)
}

type redisKey struct {
	tracker string
	ivMS    int
}

func redisStats(r *bench.Redis) map[redisKey]Summary {
	xs := map[redisKey][]float64{}
	for _, s := range r.Samples {
		k := redisKey{s.Tracker, s.IntervalMS}
		xs[k] = append(xs[k], s.OpsPerSec)
	}
	out := map[redisKey]Summary{}
	for k, v := range xs {
		out[k] = Summarize(v)
	}
	return out
}

type collectKey struct {
	tracker string
	pct     float64
}

// collectStats is figure 4's collect time in microseconds.
func collectStats(c *bench.Collect) map[collectKey]Summary {
	xs := map[collectKey][]float64{}
	for _, s := range c.Samples {
		k := collectKey{s.Tracker, s.DirtyPct}
		xs[k] = append(xs[k], float64(s.NS)/1e3)
	}
	out := map[collectKey]Summary{}
	for k, v := range xs {
		out[k] = Summarize(v)
	}
	return out
}

// exact trackers must report exactly the pages written in these
// figures: no swapping, no fork, no KSM, a region of its own.
var exact = []string{"ldt", "softdirty", "pagemap-scan"}

// Sanity checks that every figure is there and its samples make sense:
// every tracker measured, positive times, and the exact trackers' collected
// pages equal to the written ones.
func Sanity(r *Result) []string {
	var p []string
	bad := func(format string, a ...any) { p = append(p, fmt.Sprintf(format, a...)) }
	if w := r.WriteOnly; w == nil || len(w.Samples) == 0 {
		bad("write-only: no samples")
	} else {
		seen := map[string]bool{}
		hugeNone := false
		for _, s := range w.Samples {
			seen[s.Tracker] = true
			pages := s.SizeMiB << 20 / 4096
			switch {
			case s.WriteNS <= 0:
				bad("write-only %s %d MiB: write time %d ns", s.Tracker, s.SizeMiB, s.WriteNS)
			case s.Written != pages:
				bad("write-only %s %d MiB: wrote %d pages, want %d", s.Tracker, s.SizeMiB, s.Written, pages)
			case slices.Contains(exact, s.Tracker) && s.Collected != s.Written:
				bad("write-only %s %d MiB thp=%v %d B: collected %d pages, wrote %d", s.Tracker, s.SizeMiB, s.THP, s.WriteBytes, s.Collected, s.Written)
			case s.Tracker == "none" && s.Collected != 0:
				bad("write-only none collected %d pages", s.Collected)
			}
			if s.Tracker == "none" && s.THP && s.HugeKB > 0 {
				hugeNone = true
			}
		}
		for _, t := range bench.Trackers {
			if !seen[t] {
				bad("write-only: no sample for %s", t)
			}
		}
		if !hugeNone {
			bad("write-only: the THP series never got a huge page (thp setting %q)", w.THP)
		}
	}
	if tl := r.Timeline; tl == nil || len(tl.Samples) == 0 {
		bad("timeline: no samples")
	} else {
		seen := map[string]bool{}
		for _, s := range tl.Samples {
			seen[s.Tracker] = true
			var ops int64
			for _, o := range s.Ops {
				ops += o
			}
			if len(s.Ops) != tl.Intervals || ops <= 0 {
				bad("timeline %s rep %d: %d intervals, %d ops", s.Tracker, s.Rep, len(s.Ops), ops)
			}
			if s.Tracker == "ldt" {
				for i, c := range s.Collected {
					if c <= 0 || c > tl.SizeMiB<<20/4096 {
						bad("timeline ldt rep %d interval %d: collected %d pages of %d", s.Rep, i, c, tl.SizeMiB<<20/4096)
						break
					}
				}
			}
		}
		for _, t := range bench.Trackers {
			if !seen[t] {
				bad("timeline: no sample for %s", t)
			}
		}
	}
	if c := r.Collect; c == nil || len(c.Samples) == 0 {
		bad("collect: no samples")
	} else {
		if c.ReadBandwidth <= 0 || c.FloorNS <= 0 {
			bad("collect: no memory bandwidth measured")
		}
		for _, s := range c.Samples {
			if s.NS <= 0 || s.Dirtied <= 0 {
				bad("collect %s %.1f%%: %d ns, %d pages dirtied", s.Tracker, s.DirtyPct, s.NS, s.Dirtied)
			}
			if slices.Contains(exact, s.Tracker) && s.Collected != s.Dirtied {
				bad("collect %s %.1f%%: collected %d pages, dirtied %d", s.Tracker, s.DirtyPct, s.Collected, s.Dirtied)
			}
		}
	}
	if rd := r.Redis; rd == nil || len(rd.Samples) == 0 {
		bad("redis: no samples")
	} else {
		for _, s := range rd.Samples {
			if s.OpsPerSec <= 0 {
				bad("redis %s every %d ms: %0.f ops/s", s.Tracker, s.IntervalMS, s.OpsPerSec)
			}
			if s.Tracker == "none" {
				continue
			}
			pages := 0
			for _, n := range s.Pages {
				pages += n
			}
			if float64(s.IntervalMS)/1000 <= s.Seconds/2 && (s.Rounds == 0 || pages == 0) {
				bad("redis %s every %d ms: %d rounds, %d pages in a %.1f s window", s.Tracker, s.IntervalMS, s.Rounds, pages, s.Seconds)
			}
		}
	}
	return p
}
