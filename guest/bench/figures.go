package bench

import (
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"runtime/debug"
	"sync/atomic"
	"time"
	"unsafe"
)

// Plan sizes every figure. Quick is for `make test`: seconds per figure.
type Plan struct {
	Trackers []string
	Reps     int

	WriteSizesMiB []int
	WriteBytes    []int

	TimelineMiB       int
	TimelineIntervals int
	TimelineTick      time.Duration

	CollectMiB  int
	CollectPcts []float64

	RedisKeys      int
	RedisWindow    time.Duration
	RedisIntervals []time.Duration
	RedisReps      int
}

// QuickPlan checks plumbing and sanity only.
func QuickPlan() Plan {
	return Plan{
		Trackers: Trackers, Reps: 1,
		WriteSizesMiB: []int{4}, WriteBytes: []int{4096, 1},
		TimelineMiB: 4, TimelineIntervals: 5, TimelineTick: 100 * time.Millisecond,
		CollectMiB: 4, CollectPcts: []float64{0.1, 1, 10, 50, 100},
		RedisKeys: 512, RedisWindow: 2500 * time.Millisecond, RedisIntervals: []time.Duration{time.Second}, RedisReps: 1,
	}
}

// FullPlan is sized for about 25 minutes under TCG on 2 host cores; with
// KVM it finishes much sooner (the sizes stay the same so runs compare).
func FullPlan() Plan {
	return Plan{
		Trackers: Trackers, Reps: 3,
		// Up to 512 MiB: the 2 GiB guest holds more without swapping,
		// but under TCG the next step would double the ~20 minute run.
		WriteSizesMiB: []int{16, 64, 256, 512}, WriteBytes: []int{4096, 1},
		TimelineMiB: 64, TimelineIntervals: 40, TimelineTick: 100 * time.Millisecond,
		CollectMiB: 512, CollectPcts: []float64{0.1, 1, 10, 50, 100},
		RedisKeys: 8192, RedisWindow: 10 * time.Second, RedisIntervals: []time.Duration{time.Second, 5 * time.Second}, RedisReps: 5,
	}
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
	k := 0
	for _, size := range p.WriteSizesMiB {
		for _, thp := range []bool{false, true} {
			for _, wb := range p.WriteBytes {
				for rep := 0; rep < p.Reps; rep++ {
					for _, tr := range rotate(p.Trackers, k) {
						s, err := writeOnce(tr, size, thp, wb)
						if err != nil {
							return nil, fmt.Errorf("write-only %s %d MiB thp=%v %d B: %w", tr, size, thp, wb, err)
						}
						s.Rep = rep
						res.Samples = append(res.Samples, s)
					}
					k++
				}
				logf(progress, "write-only %d MiB thp=%v %d B/page: %d reps done", size, thp, wb, p.Reps)
			}
		}
	}
	return res, nil
}

func writeOnce(tr string, sizeMiB int, thp bool, wb int) (WriteSample, error) {
	s := WriteSample{Tracker: tr, SizeMiB: sizeMiB, THP: thp, WriteBytes: wb}
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
	st := time.Now()
	s.Written = writePages(m, wb, 1, 2)
	s.WriteNS = time.Since(st).Nanoseconds()
	n, d, err := collect(t, m)
	if err != nil {
		return s, err
	}
	s.Collected, s.CollectNS = n, d.Nanoseconds()
	s.HugeKB = m.hugeKB()
	return s, nil
}

// RunTimeline is figure 2: one thread does 4 KiB operations on random
// pages, 75% writes and 25% reads, while the tracker collects and clears
// every tick; operations finished per tick are the throughput timeline.
func RunTimeline(p Plan, progress io.Writer) (*Timeline, error) {
	defer quiet()()
	res := &Timeline{SizeMiB: p.TimelineMiB, TickMS: int(p.TimelineTick / time.Millisecond), Intervals: p.TimelineIntervals,
		WritePct: 75, OpBytes: pageSize, Reps: p.Reps}
	for rep := 0; rep < p.Reps; rep++ {
		for _, tr := range rotate(p.Trackers, rep) {
			s, err := timelineOnce(tr, p, uint64(rep))
			if err != nil {
				return nil, fmt.Errorf("timeline %s: %w", tr, err)
			}
			s.Rep = rep
			res.Samples = append(res.Samples, s)
			var ops int64
			for _, o := range s.Ops {
				ops += o
			}
			logf(progress, "timeline rep %d %-12s %d ops in %d ticks", rep, tr, ops, len(s.Ops))
		}
	}
	return res, nil
}

func timelineOnce(tr string, p Plan, seed uint64) (TimelineSample, error) {
	s := TimelineSample{Tracker: tr}
	m, err := newMapping(p.TimelineMiB<<20, false)
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
	tick := time.NewTicker(p.TimelineTick)
	var last int64
	prev := time.Now()
	for i := 0; i < p.TimelineIntervals; i++ {
		<-tick.C
		now := ops.Load()
		s.Ops = append(s.Ops, now-last)
		last = now
		// A collection longer than a tick stretches the interval: keep
		// the real length so throughput is ops per second, not per tick.
		now2 := time.Now()
		s.TickNS = append(s.TickNS, now2.Sub(prev).Nanoseconds())
		prev = now2
		n, d, err := collect(t, m)
		if err != nil {
			stop.Store(true)
			<-done
			tick.Stop()
			return s, err
		}
		s.Collected = append(s.Collected, n)
		s.CollectNS = append(s.CollectNS, d.Nanoseconds())
	}
	tick.Stop()
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
	var trackers []string
	for _, t := range p.Trackers {
		if t != "none" {
			trackers = append(trackers, t)
		}
	}
	m, err := newMapping(p.CollectMiB<<20, false)
	if err != nil {
		return nil, err
	}
	defer m.close()
	k := 0
	for _, pct := range p.CollectPcts {
		step := max(1, int(100/pct+0.5))
		for rep := 0; rep < p.Reps; rep++ {
			for _, tr := range rotate(trackers, k) {
				t, err := openTracker(tr, m)
				if err != nil {
					return nil, fmt.Errorf("collect %s: %w", tr, err)
				}
				n := writePages(m, 1, step, byte(rep+3))
				got, d, err := collect(t, m)
				t.Close()
				if err != nil {
					return nil, fmt.Errorf("collect %s %.1f%%: %w", tr, pct, err)
				}
				res.Samples = append(res.Samples, CollectSample{Tracker: tr, DirtyPct: pct, Rep: rep, NS: d.Nanoseconds(), Dirtied: n, Collected: got})
			}
			k++
		}
		logf(progress, "collect %d MiB at %.1f%% dirty: %d reps done", p.CollectMiB, pct, p.Reps)
	}
	return res, nil
}
