package bench

import (
	"fmt"
	"hash/fnv"
	"io"
	"math/rand/v2"
	"runtime"
	"runtime/debug"
	"sync/atomic"
	"time"
	"unsafe"
)

// Plan sizes every figure. Every figure runs Reps repetitions; within a
// repetition every cell (tracker × configuration) runs once, in a random
// order drawn from Seed, so slow drift of the host is not always borne by
// the same tracker and the trackers of one repetition can be compared
// pairwise. Short bursts of other work still hit single cells: the A/A
// (ldt vs naive, the same work) measures how much.
type Plan struct {
	Name     string
	Trackers []string
	Reps     int
	Seed     uint64
	// FirstRep numbers the repetitions run FirstRep, FirstRep+1, …: a host
	// that interleaves several kernels runs one repetition per call, and
	// each must keep its own number (and so its own random order).
	FirstRep int

	WriteSizesMiB []int
	WriteBytes    []int
	// WriteLoop adds, with THP off, 4096 B writes made by a plain store
	// loop beside Go's copy: the untracked baseline's speed decides the
	// ratios of total times, so the figure measures two baselines.
	WriteLoop bool
	// WriteTHP are the THP settings of figure 1's regions (nil: off and
	// on).
	WriteTHP []bool

	TimelineMiB int
	// TimelineFor is one run's length from the moment tracking starts;
	// throughput is sampled every TimelinePoint and the tracker collects
	// and clears every one of TimelineCheckpoints (one run each).
	TimelineFor         time.Duration
	TimelinePoint       time.Duration
	TimelineCheckpoints []time.Duration

	CollectMiB  int
	CollectPcts []float64

	// GUPMiB is the region the GUP figure pins after each collection.
	GUPMiB int

	RedisKeys      int
	RedisWindow    time.Duration
	RedisIntervals []time.Duration
	RedisReps      int
}

// Plans by name: quick (plumbing and sanity, seconds per figure), short
// (every claim at ≥ 7 repetitions with the least work per figure that
// still measures it: what a kernel A/B on a loaded TCG host can afford), reduced
// (every figure and claim at ≥ 7 repetitions, smaller sizes: what fits a
// shared TCG host in about an hour) and full.
var Plans = map[string]func() Plan{"quick": QuickPlan, "short": ShortPlan, "reduced": ReducedPlan, "full": FullPlan}

// QuickPlan checks plumbing and sanity only.
func QuickPlan() Plan {
	return Plan{
		Name: "quick", Trackers: Trackers, Reps: 1, Seed: 1,
		WriteSizesMiB: []int{4}, WriteBytes: []int{4096, 1}, WriteLoop: true,
		TimelineMiB: 4, TimelineFor: 2 * time.Second, TimelinePoint: 100 * time.Millisecond,
		TimelineCheckpoints: []time.Duration{500 * time.Millisecond, time.Second},
		CollectMiB:          4, CollectPcts: []float64{0.1, 1, 10, 50, 100},
		GUPMiB:    4,
		RedisKeys: 512, RedisWindow: 2500 * time.Millisecond, RedisIntervals: []time.Duration{time.Second}, RedisReps: 1,
	}
}

// ReducedPlan keeps every figure, every tracker and 7 repetitions but
// drops the large working sets.
func ReducedPlan() Plan {
	p := FullPlan()
	p.Name = "reduced"
	p.WriteSizesMiB = []int{16, 64}
	p.TimelineFor = 6 * time.Second
	p.CollectMiB = 128
	return p
}

// ShortPlan is the shortest plan that still judges every claim: 7
// repetitions, write-only at 64 MiB with THP off (the claim's cells; the
// THP series is no claim's), the timeline at
// both checkpoint intervals (1 s, 5 s) for 6 s (the early phase is its
// first second), collection of 256 MiB (the sizes the collection goal is
// stated for), Redis with a 1 s checkpointer in 5 s windows (5 rounds; a
// 5 s interval would give one).
func ShortPlan() Plan {
	p := FullPlan()
	p.Name = "short"
	p.WriteSizesMiB = []int{64}
	p.WriteTHP = []bool{false}
	p.TimelineFor = 6 * time.Second
	p.CollectMiB = 256
	p.CollectPcts = []float64{1, 10, 50, 100}
	p.RedisWindow = 5 * time.Second
	p.RedisIntervals = []time.Duration{time.Second}
	return p
}

// FullPlan is the paper's evaluation at ldtlab's sizes. Under TCG on 2
// shared host cores it runs for hours; with KVM much sooner (the sizes stay
// the same so runs compare).
func FullPlan() Plan {
	return Plan{
		Name: "full", Trackers: Trackers, Reps: 7, Seed: 1,
		// Up to 512 MiB: the 2 GiB guest holds more without swapping,
		// but under TCG the next step would double the run.
		WriteSizesMiB: []int{16, 64, 256, 512}, WriteBytes: []int{4096, 1}, WriteLoop: true,
		TimelineMiB: 64, TimelineFor: 10 * time.Second, TimelinePoint: 100 * time.Millisecond,
		TimelineCheckpoints: []time.Duration{time.Second, 5 * time.Second},
		CollectMiB:          512, CollectPcts: []float64{0.1, 1, 10, 50, 100},
		GUPMiB:    64,
		RedisKeys: 8192, RedisWindow: 10 * time.Second, RedisIntervals: []time.Duration{time.Second, 5 * time.Second}, RedisReps: 7,
	}
}

// order is repetition rep's random order of n cells of a figure.
func (p Plan) order(figure string, rep, n int) []int {
	h := fnv.New64a()
	h.Write([]byte(figure))
	return rand.New(rand.NewPCG(p.Seed^h.Sum64(), uint64(rep))).Perm(n)
}

func logf(w io.Writer, format string, a ...any) {
	if w != nil {
		fmt.Fprintf(w, "[ldt-bench] "+format+"\n", a...)
	}
}

// quiet turns the garbage collector off for the measurements (the loops
// allocate nothing; a GC cycle in a timed section is noise) and returns
// the function that restores it.
func quiet() func() {
	old := debug.SetGCPercent(-1)
	return func() { debug.SetGCPercent(old) }
}

// RunWriteOnly is figure 1: for every size, THP off/on and write size, a
// fresh populated region per run, the tracker armed, every page written
// (timed), then one collect-and-clear (timed).
func RunWriteOnly(p Plan, progress io.Writer) (*WriteOnly, error) {
	defer quiet()()
	res := &WriteOnly{SizesMiB: p.WriteSizesMiB, Reps: p.Reps, THP: THPSetting()}
	type cell struct {
		size  int
		thp   bool
		wb    int
		store string
		tr    string
	}
	var cells []cell
	thps := p.WriteTHP
	if thps == nil {
		thps = []bool{false, true}
	}
	for _, size := range p.WriteSizesMiB {
		for _, thp := range thps {
			for _, wb := range p.WriteBytes {
				stores := []string{""}
				if wb >= pageSize {
					stores = []string{"copy"}
					if p.WriteLoop && !thp {
						stores = append(stores, "loop")
					}
				}
				for _, st := range stores {
					for _, tr := range p.Trackers {
						cells = append(cells, cell{size, thp, wb, st, tr})
					}
				}
			}
		}
	}
	for rep := p.FirstRep; rep < p.FirstRep+p.Reps; rep++ {
		for seq, i := range p.order("writeonly", rep, len(cells)) {
			c := cells[i]
			s, err := writeOnce(c.tr, c.size, c.thp, c.wb, c.store)
			if err != nil {
				return nil, fmt.Errorf("write-only %s %d MiB thp=%v %d B %s: %w", c.tr, c.size, c.thp, c.wb, c.store, err)
			}
			s.Rep, s.Seq = rep, seq
			res.Samples = append(res.Samples, s)
		}
		logf(progress, "write-only: repetition %d (%d of %d) done (%d cells in random order)", rep, rep-p.FirstRep+1, p.Reps, len(cells))
	}
	return res, nil
}

func writeOnce(tr string, sizeMiB int, thp bool, wb int, store string) (WriteSample, error) {
	s := WriteSample{Tracker: tr, SizeMiB: sizeMiB, THP: thp, WriteBytes: wb, Store: store}
	m, err := newMapping(sizeMiB<<20, thp)
	if err != nil {
		return s, err
	}
	defer m.close()
	runtime.GC()
	t, err := openTracker(tr, m)
	if err != nil {
		return s, err
	}
	if t != nil {
		defer t.Close()
	}
	c0 := counters(0)
	st := time.Now()
	if store == "loop" {
		s.Written = writePagesLoop(m, 2)
	} else {
		s.Written = writePages(m, wb, 1, 2)
	}
	s.WriteNS = time.Since(st).Nanoseconds()
	s.WriteCounts = counters(0).since(c0)
	c, err := collect(t, m)
	if err != nil {
		return s, err
	}
	s.Collected, s.CollectNS, s.Regions, s.Syscalls, s.CollectCounts = c.pages, c.ns, c.regions, c.syscalls, c.counts
	s.HugeKB = m.hugeKB()
	return s, nil
}

// RunTimeline is figure 2: tracking starts, then one thread does 4 KiB
// operations on random pages, 75% writes and 25% reads, while the tracker
// collects and clears at the checkpoint interval; operations finished in
// every point (100 ms) are the throughput timeline, so the early phase
// after tracking starts shows.
func RunTimeline(p Plan, progress io.Writer) (*Timeline, error) {
	defer quiet()()
	res := &Timeline{SizeMiB: p.TimelineMiB, PointMS: int(p.TimelinePoint / time.Millisecond), Points: int(p.TimelineFor / p.TimelinePoint),
		WritePct: 75, OpBytes: pageSize, Reps: p.Reps}
	for _, cp := range p.TimelineCheckpoints {
		res.CheckpointsMS = append(res.CheckpointsMS, int(cp/time.Millisecond))
	}
	type cell struct {
		tr string
		cp time.Duration
	}
	var cells []cell
	for _, tr := range p.Trackers {
		if tr == "none" {
			cells = append(cells, cell{tr, 0})
			continue
		}
		for _, cp := range p.TimelineCheckpoints {
			cells = append(cells, cell{tr, cp})
		}
	}
	for rep := p.FirstRep; rep < p.FirstRep+p.Reps; rep++ {
		for seq, i := range p.order("timeline", rep, len(cells)) {
			c := cells[i]
			s, err := timelineOnce(c.tr, c.cp, p, uint64(rep))
			if err != nil {
				return nil, fmt.Errorf("timeline %s every %s: %w", c.tr, c.cp, err)
			}
			s.Rep, s.Seq = rep, seq
			res.Samples = append(res.Samples, s)
			var ops int64
			for _, o := range s.Ops {
				ops += o
			}
			logf(progress, "timeline rep %d %-12s every %-4s %d ops in %d points, %d collections", rep, c.tr, c.cp, ops, len(s.Ops), len(s.Collections))
		}
	}
	return res, nil
}

func timelineOnce(tr string, cp time.Duration, p Plan, seed uint64) (TimelineSample, error) {
	s := TimelineSample{Tracker: tr, CheckpointMS: int(cp / time.Millisecond)}
	m, err := newMapping(p.TimelineMiB<<20, false)
	if err != nil {
		return s, err
	}
	defer m.close()
	runtime.GC()
	// Tracking starts here: soft-dirty and PAGEMAP_SCAN have just
	// write-protected the region, LDT has just cleared it.
	t, err := openTracker(tr, m)
	if err != nil {
		return s, err
	}
	if t != nil {
		defer t.Close()
	}
	var ops atomic.Int64
	var stop atomic.Bool
	done := make(chan uint64)
	go func() {
		runtime.LockOSThread()
		r := rand.New(rand.NewPCG(seed, 75))
		pages := uint64(m.pages())
		var local int64
		var sum uint64
		for !stop.Load() {
			for range 16 {
				x := r.Uint64()
				off := (x % pages) * pageSize
				if (x>>32)%4 != 0 { // 3 in 4: write
					copy(m.mem[off:off+pageSize], src)
				} else {
					w := (*[pageSize / 8]uint64)(unsafe.Pointer(&m.mem[off]))
					for _, v := range w {
						sum += v
					}
				}
			}
			local += 16
			ops.Store(local)
		}
		done <- sum
	}()
	every := 0
	if t != nil && cp > 0 {
		every = max(1, int(cp/p.TimelinePoint))
	}
	points := int(p.TimelineFor / p.TimelinePoint)
	t0 := time.Now()
	prev, prevC := t0, counters(0)
	var last int64
	for i := 0; i < points; i++ {
		time.Sleep(time.Until(t0.Add(time.Duration(i+1) * p.TimelinePoint)))
		// A collection longer than a point stretches the next one: keep
		// each point's real length, so throughput is ops per second.
		now, o, c := time.Now(), ops.Load(), counters(0)
		s.Ops = append(s.Ops, o-last)
		s.PointNS = append(s.PointNS, now.Sub(prev).Nanoseconds())
		s.Counts = append(s.Counts, c.since(prevC))
		last, prev, prevC = o, now, c
		if every == 0 || (i+1)%every != 0 {
			continue
		}
		col, err := collect(t, m)
		if err != nil {
			stop.Store(true)
			<-done
			return s, err
		}
		s.Collections = append(s.Collections, Collection{Point: i, NS: col.ns, Pages: col.pages, Regions: col.regions, Syscalls: col.syscalls, Counts: col.counts})
	}
	stop.Store(true)
	sink += <-done
	return s, nil
}

// RunCollect is figure 4: the cost of one collect-and-clear of a region
// with a given share of its pages written, per tracker, beside the floor
// of reading its page table once at the measured memory bandwidth.
func RunCollect(p Plan, progress io.Writer) (*Collect, error) {
	defer quiet()()
	bw, err := readBandwidth(64)
	if err != nil {
		return nil, fmt.Errorf("measuring memory bandwidth: %w", err)
	}
	pages := p.CollectMiB << 20 / pageSize
	// One 8-byte PTE per page plus one 8-byte PMD entry per 512 pages.
	tbl := int64(pages)*8 + int64((pages+511)/512)*8
	res := &Collect{SizeMiB: p.CollectMiB, Pages: pages, Reps: p.Reps, Pcts: p.CollectPcts,
		ReadBandwidth: bw, TableBytes: tbl, FloorNS: float64(tbl) / bw * 1e9}
	type cell struct {
		pct float64
		tr  string
	}
	var cells []cell
	for _, pct := range p.CollectPcts {
		for _, tr := range p.Trackers {
			if tr != "none" {
				cells = append(cells, cell{pct, tr})
			}
		}
	}
	m, err := newMapping(p.CollectMiB<<20, false)
	if err != nil {
		return nil, err
	}
	defer m.close()
	for rep := p.FirstRep; rep < p.FirstRep+p.Reps; rep++ {
		for seq, i := range p.order("collect", rep, len(cells)) {
			c := cells[i]
			step := max(1, int(100/c.pct+0.5))
			t, err := openTracker(c.tr, m)
			if err != nil {
				return nil, fmt.Errorf("collect %s: %w", c.tr, err)
			}
			n := writePages(m, 1, step, byte(rep+3))
			got, err := collect(t, m)
			t.Close()
			if err != nil {
				return nil, fmt.Errorf("collect %s %.1f%%: %w", c.tr, c.pct, err)
			}
			res.Samples = append(res.Samples, CollectSample{Tracker: c.tr, DirtyPct: c.pct, Rep: rep, Seq: seq, NS: got.ns, Dirtied: n,
				Collected: got.pages, Regions: got.regions, Syscalls: got.syscalls, SyscallNS: got.syscallNS,
				PTEsVisited: got.visited, PTEsChanged: got.changed, Counts: got.counts})
		}
		logf(progress, "collect %d MiB: repetition %d (%d of %d) done (%d cells in random order)", p.CollectMiB, rep, rep-p.FirstRep+1, p.Reps, len(cells))
	}
	return res, nil
}
