package paper

import (
	"fmt"
	"slices"

	"ldtlab/guest/bench"
)

// exact trackers must report exactly the pages written in these
// figures: no swapping, no fork, no KSM, a region of its own.
var exact = []string{"ldt", "softdirty", "pagemap-scan"}

// Sanity checks that every figure is there and its samples make sense:
// every tracker measured, positive times, and the exact trackers' collected
// pages equal to the written ones.
func Sanity(r *Result) []string {
	var p []string
	bad := func(format string, a ...any) { p = append(p, fmt.Sprintf(format, a...)) }
	// A run of some figures, or with the trackers a kernel has, is
	// checked for those only.
	ran := func(fig string) bool { return len(r.Meta.Figures) == 0 || slices.Contains(r.Meta.Figures, fig) }
	trackers := r.Meta.Trackers
	if len(trackers) == 0 {
		trackers = bench.Trackers
	}
	if w := r.WriteOnly; (w == nil || len(w.Samples) == 0) && ran("writeonly") {
		bad("write-only: no samples")
	} else if w != nil {
		seen := map[string]bool{}
		hugeNone, anyTHP := false, false
		for _, s := range w.Samples {
			seen[s.Tracker] = true
			pages := s.SizeMiB << 20 / 4096
			switch {
			case s.WriteNS <= 0:
				bad("write-only %s %d MiB: write time %d ns", s.Tracker, s.SizeMiB, s.WriteNS)
			case s.Written != pages:
				bad("write-only %s %d MiB: wrote %d pages, want %d", s.Tracker, s.SizeMiB, s.Written, pages)
			case slices.Contains(exact, s.Tracker) && s.Collected != s.Written:
				bad("write-only %s %d MiB thp=%v %d B %s: collected %d pages, wrote %d", s.Tracker, s.SizeMiB, s.THP, s.WriteBytes, s.Store, s.Collected, s.Written)
			case s.Tracker == "none" && s.Collected != 0:
				bad("write-only none collected %d pages", s.Collected)
			}
			anyTHP = anyTHP || s.THP
			if s.Tracker == "none" && s.THP && s.HugeKB > 0 {
				hugeNone = true
			}
			// What the figure is about, counted: with 4 KiB pages the
			// write-restriction trackers fault once per page written,
			// LDT and the baseline not at all (the region is populated).
			if f := s.WriteCounts.Faults; !s.THP && s.Written > 0 {
				switch s.Tracker {
				case "softdirty", "pagemap-scan":
					if f < int64(s.Written)*9/10 {
						bad("write-only %s %d MiB %d B: %d faults for %d pages written: write-protection did not act", s.Tracker, s.SizeMiB, s.WriteBytes, f, s.Written)
					}
				case "none", "ldt", "naive":
					if f > int64(s.Written)/10 {
						bad("write-only %s %d MiB %d B: %d faults for %d pages written to a populated region", s.Tracker, s.SizeMiB, s.WriteBytes, f, s.Written)
					}
				}
			}
		}
		for _, t := range trackers {
			if !seen[t] {
				bad("write-only: no sample for %s", t)
			}
		}
		if anyTHP && !hugeNone {
			bad("write-only: the THP series never got a huge page (thp setting %q)", w.THP)
		}
	}
	if tl := r.Timeline; (tl == nil || len(tl.Samples) == 0) && ran("timeline") {
		bad("timeline: no samples")
	} else if tl != nil {
		seen := map[string]bool{}
		pages := tl.SizeMiB << 20 / 4096
		for _, s := range tl.Samples {
			seen[s.Tracker] = true
			var ops int64
			for _, o := range s.Ops {
				ops += o
			}
			if len(s.Ops) != tl.Points || len(s.PointNS) != tl.Points || len(s.Counts) != tl.Points || ops <= 0 {
				bad("timeline %s every %d ms rep %d: %d points (%d lengths, %d counts), %d ops; want %d points", s.Tracker, s.CheckpointMS, s.Rep, len(s.Ops), len(s.PointNS), len(s.Counts), ops, tl.Points)
			}
			if s.Tracker != "none" && s.CheckpointMS > 0 && tl.PointMS > 0 {
				if want := tl.Points / max(1, s.CheckpointMS/tl.PointMS); len(s.Collections) != want {
					bad("timeline %s every %d ms rep %d: %d collections, want %d", s.Tracker, s.CheckpointMS, s.Rep, len(s.Collections), want)
				}
			}
			if s.Tracker == "ldt" {
				for i, c := range s.Collections {
					if c.Pages <= 0 || c.Pages > pages {
						bad("timeline ldt every %d ms rep %d collection %d: collected %d pages of %d", s.CheckpointMS, s.Rep, i, c.Pages, pages)
						break
					}
				}
			}
		}
		for _, t := range trackers {
			if !seen[t] {
				bad("timeline: no sample for %s", t)
			}
		}
	}
	if c := r.Collect; (c == nil || len(c.Samples) == 0) && ran("collect") {
		bad("collect: no samples")
	} else if c != nil {
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
			// The region is populated with THP off: the walk decides on each
			// of its PTEs once and the clear rewrites each page reported.
			if s.PTEsVisited > 0 && (s.PTEsVisited != int64(c.Pages) || s.PTEsChanged != int64(s.Collected)) {
				bad("collect %s %.1f%%: the kernel visited %d PTEs and changed %d, want %d and %d", s.Tracker, s.DirtyPct, s.PTEsVisited, s.PTEsChanged, c.Pages, s.Collected)
			}
		}
	}
	if g := r.GUP; (g == nil || len(g.Samples) == 0) && ran("gup") {
		bad("gup: no samples")
	} else if g != nil {
		for _, s := range g.Samples {
			if s.NS <= 0 || s.Pages <= 0 {
				bad("gup %s rep %d: %d ns, %d pages", s.Tracker, s.Rep, s.NS, s.Pages)
			}
		}
	}
	if rd := r.Redis; (rd == nil || len(rd.Samples) == 0) && ran("redis") {
		bad("redis: no samples")
	} else if rd != nil {
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
