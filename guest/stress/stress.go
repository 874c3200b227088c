// Package stress hunts races between a dirty-page tracker and the kernel's
// own use of the dirty bit, with an incremental-copy oracle: writer threads
// store unique values at random offsets of a working set while a collector
// loops collect+clear and copies every reported page into a shadow, and
// agitators drive the kernel paths that touch the dirty bit (MADV_FREE,
// reclaim, migration, uffd-wp, THP split, GUP writes) all the while. After
// the writers and agitators stop, one last collection and copy must leave
// the shadow byte-identical to memory: a page that differs is a write the
// tracker lost (or data the kernel lost).
package stress

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"ldtlab/guest/result"
	"ldtlab/guest/tracker"
)

const pg = tracker.PageSize

// Options select one stress run.
type Options struct {
	Tracker  string
	Pages    int           // working set size in 4 KiB pages
	Writers  int           // writer threads (0: one per CPU)
	Duration time.Duration // how long writers and agitators run
	Interval time.Duration // pause between collections
	Seed     uint64
	Epochs   int  // the writers stop and memory is compared this often
	THP      bool // let the working set use transparent huge pages
	// MTHP is an anonymous mTHP size ("16kB", "64kB"...) enabled for the
	// run (hugepages-<size>/enabled=always): folios between 4 KiB and PMD
	// size, whose PTEs the kernel batches (row 3 of the review).
	MTHP      string
	Agitators []string // names from Agitators(); nil: the defaults, empty: none
	// Open replaces tracker.Open (unit tests with fake trackers).
	Open func(start, end uintptr) (tracker.Tracker, error)
}

// Lost is result.StressLost: the wire type is shared with the host.
type Lost = result.StressLost

// Result is result.Stress: the wire type is shared with the host.
type Result = result.Stress

// set is the working set shared by writers, collector and agitators.
type set struct {
	mem  []byte
	base uintptr
	n    int
	stop atomic.Bool

	fxMu sync.Mutex
	fx   map[string]map[string]int
}

// effect counts n of what agitator achieved (safe from every agitator).
func (s *set) effect(agitator, what string, n int) {
	if n == 0 {
		return
	}
	s.fxMu.Lock()
	defer s.fxMu.Unlock()
	if s.fx == nil {
		s.fx = map[string]map[string]int{}
	}
	if s.fx[agitator] == nil {
		s.fx[agitator] = map[string]int{}
	}
	s.fx[agitator][what] += n
}

// maxEffect keeps the largest n seen (a level, such as merged pages).
func (s *set) maxEffect(agitator, what string, n int) {
	s.fxMu.Lock()
	defer s.fxMu.Unlock()
	if s.fx == nil {
		s.fx = map[string]map[string]int{}
	}
	if s.fx[agitator] == nil {
		s.fx[agitator] = map[string]int{}
	}
	s.fx[agitator][what] = max(s.fx[agitator][what], n)
}

func (s *set) addr(p int) uintptr { return s.base + uintptr(p)*pg }

// store writes v at page p, offset off (8-byte aligned): a plain CPU store,
// so the hardware sets the dirty bit.
func (s *set) store(p, off int, v uint64) {
	*(*uint64)(unsafe.Pointer(&s.mem[p*pg+off&^7])) = v
}

// Run executes one stress run. An error is a failure of the run itself
// (setup, a tracker error), not a verdict.
func Run(o Options) (*Result, error) {
	if o.Pages <= 0 || o.Duration <= 0 {
		return nil, fmt.Errorf("stress: need pages > 0 and duration > 0")
	}
	if o.Writers <= 0 {
		o.Writers = runtime.NumCPU()
	}
	if o.Interval <= 0 {
		o.Interval = 2 * time.Millisecond
	}
	if o.Epochs <= 0 {
		o.Epochs = max(1, int(o.Duration/time.Second))
	}
	ags, err := pickAgitators(o)
	if err != nil {
		return nil, err
	}
	if o.MTHP != "" {
		restore, err := knob("/sys/kernel/mm/transparent_hugepage/hugepages-"+o.MTHP+"/enabled", "always")
		if err != nil {
			return nil, fmt.Errorf("stress: mTHP %s: %w", o.MTHP, err)
		}
		defer restore()
	}
	mem, err := unix.Mmap(-1, 0, o.Pages*pg, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("stress: mmap %d pages: %w", o.Pages, err)
	}
	defer unix.Munmap(mem)
	advice := unix.MADV_NOHUGEPAGE
	if o.THP {
		advice = unix.MADV_HUGEPAGE
	}
	if err := unix.Madvise(mem, advice); err != nil {
		return nil, fmt.Errorf("stress: madvise: %w", err)
	}
	s := &set{mem: mem, base: uintptr(unsafe.Pointer(&mem[0])), n: o.Pages}
	for p := range o.Pages { // populate: every page has content
		s.store(p, 0, uint64(p)+1)
	}
	open := o.Open
	if open == nil {
		open = func(start, end uintptr) (tracker.Tracker, error) { return tracker.Open(o.Tracker, 0, start, end) }
	}
	t, err := open(s.base, s.addr(s.n))
	if err != nil {
		return nil, fmt.Errorf("stress: %w", err)
	}
	defer t.Close()
	shadow := bytes.Clone(mem)

	res := &Result{Tracker: o.Tracker, Seed: o.Seed, Pages: o.Pages, Writers: o.Writers, Epochs: o.Epochs, Agitators: map[string]int{}}
	copyReported := func() error {
		rs, err := t.Collect(s.base, s.addr(s.n), true)
		if err != nil {
			return err
		}
		res.Collections++
		for _, rg := range rs {
			if rg.Start < s.base || rg.End > s.addr(s.n) || rg.Start >= rg.End {
				return fmt.Errorf("tracker reported %v outside the working set [%#x,%#x)", rg, s.base, s.addr(s.n))
			}
			off, end := int(rg.Start-s.base), int(rg.End-s.base)
			copy(shadow[off:end], mem[off:end])
			res.Copied += uint64(rg.Pages())
		}
		return nil
	}
	for _, a := range ags {
		if a.name == "odirect" {
			if err := prepareODirect(rand.New(rand.NewPCG(o.Seed, 0x6f64))); err != nil {
				return nil, fmt.Errorf("stress: odirect: %w", err)
			}
			defer os.Remove(odirectFile())
		}
	}
	start := time.Now()
	for e := range o.Epochs {
		if err := epoch(s, o, e, ags, res, copyReported); err != nil {
			res.DurationMS = time.Since(start).Milliseconds()
			res.Effects = s.fx
			return res, err
		}
		// Every page must now be identical: a difference is a write the
		// tracker lost. Resynchronise it so it counts once.
		for p := range s.n {
			sp, mp := shadow[p*pg:(p+1)*pg], mem[p*pg:(p+1)*pg]
			if bytes.Equal(sp, mp) {
				continue
			}
			res.LostPages++
			res.LostPerEpoch = append(res.LostPerEpoch, e)
			srcs := sources(sp, mp)
			if res.LostBySource == nil {
				res.LostBySource = map[string]int{}
			}
			for _, src := range srcs {
				res.LostBySource[src]++
			}
			if len(res.Lost) < 8 {
				res.Lost = append(res.Lost, Lost{Addr: s.addr(p), Epoch: e, State: pageState(s.addr(p)), Sources: srcs})
			}
			copy(sp, mp)
		}
	}
	res.DurationMS = time.Since(start).Milliseconds()
	res.Effects = s.fx
	names := make([]string, 0, len(ags))
	for _, a := range ags {
		names = append(names, a.name)
	}
	sort.Strings(names)
	res.Notes = append(res.Notes, "agitators: "+strings.Join(names, ","))
	return res, nil
}

// epoch runs writers, agitators and the collector for one epoch, stops them
// and makes the epoch's last collection and copy.
func epoch(s *set, o Options, e int, ags []agitator, res *Result, copyReported func() error) error {
	s.stop.Store(false)
	var wg sync.WaitGroup
	var writes atomic.Uint64
	for w := range o.Writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			r := rand.New(rand.NewPCG(o.Seed, uint64(e)<<16|uint64(w)+1))
			var seq uint64
			for !s.stop.Load() {
				for range 256 {
					seq++
					s.store(r.IntN(s.n), r.IntN(pg), uint64(w+1)<<56|uint64(e)<<40|seq)
				}
			}
			writes.Add(seq)
		}()
	}
	var mu sync.Mutex
	var errs []string
	for i, a := range ags {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			r := rand.New(rand.NewPCG(o.Seed, uint64(e)<<16|1000+uint64(i)))
			n, err := a.run(s, r)
			mu.Lock()
			defer mu.Unlock()
			res.Agitators[a.name] += n
			if err != nil {
				errs = append(errs, fmt.Sprintf("%s: %v", a.name, err))
			}
		}()
	}
	var runErr error
	for t0 := time.Now(); time.Since(t0) < o.Duration/time.Duration(o.Epochs); {
		if runErr = copyReported(); runErr != nil {
			break
		}
		time.Sleep(o.Interval)
	}
	s.stop.Store(true)
	wg.Wait()
	res.Writes += writes.Load()
	switch {
	case runErr != nil:
		return fmt.Errorf("stress: epoch %d: collect: %w", e, runErr)
	case len(errs) > 0:
		return fmt.Errorf("stress: epoch %d: agitator failed: %s", e, strings.Join(errs, "; "))
	}
	if err := copyReported(); err != nil {
		return fmt.Errorf("stress: epoch %d: last collect: %w", e, err)
	}
	return nil
}

// Every value stored into the set carries its writer in the top byte.
const (
	tagMadvFree = 0xfe // the madvfree agitator's rewrite
	tagGUP      = 0xfd // process_vm_writev
	tagODirect  = 0xfc // O_DIRECT reads from the data disk (device writes)
	tagProcMem  = 0xfb // pwrite to /proc/self/mem
)

// sources names the writers of the 8-byte words that differ between the
// shadow and memory: which path's writes the tracker lost.
func sources(shadow, mem []byte) []string {
	seen := map[string]bool{}
	for i := 0; i+8 <= len(mem); i += 8 {
		a := *(*uint64)(unsafe.Pointer(&shadow[i]))
		b := *(*uint64)(unsafe.Pointer(&mem[i]))
		if a == b {
			continue
		}
		var src string
		switch tag := b >> 56; {
		case b == 0:
			src = "zeroed" // the kernel dropped the content
		case tag == tagMadvFree:
			src = "madvfree"
		case tag == tagGUP:
			src = "gup-write"
		case tag == tagODirect:
			src = "odirect"
		case tag == tagProcMem:
			src = "procmem"
		case tag >= 1 && tag < tagProcMem:
			src = "cpu"
		default:
			src = "unknown"
		}
		seen[src] = true
	}
	out := make([]string, 0, len(seen))
	for k := range seen {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
