package scenario

import (
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"ldtlab/guest/kio"
	"ldtlab/guest/numa"
	"ldtlab/guest/pagemap"
	"ldtlab/guest/tracker"
)

// Writes through pins (row 19) into entries the kernel write-protected
// (row 22) or mapped in another address space (row 23): issue 19.

func init() {
	register(&Scenario{
		Name:  "pinned-thp-wrprotect",
		Paths: "22, 19 (pins), 17",
		Doc: "a 2 MiB PMD-mapped THP and a 4 KiB-page control, both registered as io_uring fixed buffers (FOLL_PIN|" +
			"FOLL_LONGTERM|FOLL_WRITE), then each epoch: CPU writes, collect, clear_refs 4 (soft-dirty's clear write-" +
			"protects the pinned THP's PMD: clear_soft_dirty_pmd() has no pinned-folio check, its PTE twin skips pinned " +
			"pages), collect, IORING_OP_READ_FIXED into both through the pin, collect; at the end the buffers are " +
			"unregistered. Every write through the pin must be reported, into the write-protected THP too.",
		Naive: MissPages,
		Run:   staged(runPinnedTHPWrprotect),
	})
}

// clearRefs write-protects the whole process the way soft-dirty's clear
// does (echo 4 > /proc/self/clear_refs).
func clearRefs() error {
	return writeFile("/proc/self/clear_refs", "4")
}

// memfdOf creates a memfd of n pages.
func memfdOf(name string, n int) (int, error) {
	// Sealable: shared-pin-udmabuf seals it against shrinking.
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return -1, fmt.Errorf("memfd_create: %w", err)
	}
	if err := unix.Ftruncate(fd, int64(n)*PageSize); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("ftruncate memfd: %w", err)
	}
	return fd, nil
}

// fixedWriter writes a page's new content through an io_uring fixed
// buffer: the content goes to src at the page's slot first, then
// READ_FIXED copies it into the page through the ring's pin.
func fixedWriter(r *kio.Ring, src int, ws *Workset, id int, buf uint16) func(uintptr, []byte) error {
	return func(_ uintptr, data []byte) error {
		off := int64(id) * PageSize
		if _, err := unix.Pwrite(src, data, off); err != nil {
			return fmt.Errorf("pwrite the source: %w", err)
		}
		return r.ReadFixed(src, off, ws.Page(id), buf)
	}
}

// pinnedTHP is a 2 MiB PMD-mapped THP and a 4 KiB-page control after
// it, both registered as io_uring fixed buffers, tracked.
type pinnedTHP struct {
	ws         *Workset
	r          *kio.Ring
	src        int
	per, small int
	t          tracker.Tracker
}

func (p *pinnedTHP) n() int { return p.per + p.small }

// huge says whether the THP is still mapped by one PMD.
func (p *pinnedTHP) huge() bool {
	kb, _ := anonHugeKB(p.ws.Base, p.ws.Base+HugePage)
	return kb >= HugePage/1024
}

// writeThrough writes page id with IORING_OP_READ_FIXED through the pin.
func (p *pinnedTHP) writeThrough(id int) error {
	buf := uint16(0)
	if id >= p.per {
		buf = 1
	}
	if err := p.ws.WriteWith(id, fixedWriter(p.r, p.src, p.ws, id, buf)); err != nil {
		return fmt.Errorf("READ_FIXED into page %d: %w", id, err)
	}
	return nil
}

func setupPinnedTHP(e *Scene) (*pinnedTHP, error) {
	e.pauseKhugepaged()
	p := &pinnedTHP{per: HugePage / PageSize, small: 16}
	ws, err := e.Workset(p.n())
	if err != nil {
		return nil, err
	}
	p.ws = ws
	thp, err := ws.Map("thp", AnonTHP, 0, p.per, -1)
	if err != nil {
		return nil, err
	}
	ctl, err := ws.Map("4k", Anon, p.per, p.small, -1)
	if err != nil {
		return nil, err
	}
	for id := range p.n() {
		ws.Write(id)
	}
	if !p.huge() {
		_ = unix.Madvise(thp.Bytes(ws), unix.MADV_COLLAPSE)
	}
	if !p.huge() {
		return nil, Skipf("no PMD-mapped THP (transparent_hugepage must be madvise or always)")
	}
	if p.src, err = memfdOf("ldtlab-fixed-src", p.n()); err != nil {
		return nil, err
	}
	e.closeAtEnd(func() error { return unix.Close(p.src) })
	if p.r, err = kio.NewRing(8); err != nil {
		return nil, Skipf("no io_uring: %v", err)
	}
	e.closeAtEnd(p.r.Close)
	if err := p.r.Register([][]byte{thp.Bytes(ws), ctl.Bytes(ws)}); err != nil {
		return nil, err
	}
	if !p.huge() {
		return nil, Skipf("registering the fixed buffer split the THP")
	}
	if p.t, err = e.StartTracking(ws); err != nil {
		return nil, err
	}
	return p, nil
}

func runPinnedTHPWrprotect(e *Scene) error {
	p, err := setupPinnedTHP(e)
	if err != nil {
		return err
	}
	ws, t, per, small, n := p.ws, p.t, p.per, p.small, p.n()
	// While pinned, a pinned page may be reported at every collection
	// (kmod/README: the pin rule).
	pinned := func() { ws.Hint(0, n, "pinned") }
	wp, through := 0, map[string]int{}
	for range e.Epochs {
		for _, id := range Pick(e.Rand, 0, n, 8) {
			ws.Write(id)
		}
		pinned()
		if _, err := e.Collect(ws, t); err != nil {
			return err
		}
		if err := clearRefs(); err != nil {
			return Skipf("clear_refs: %v", err)
		}
		if es, err := pagemap.Read(0, ws.Base, 1); err == nil && !es[0].SoftDirty() {
			wp++ // clear_refs reached the THP
		}
		pinned()
		if _, err := e.Collect(ws, t); err != nil {
			return err
		}
		ids := append(Pick(e.Rand, 0, per, 4), Pick(e.Rand, per, small, 2)...)
		for _, id := range ids {
			seg := "thp"
			if id >= per {
				seg = "4k"
			}
			if err := p.writeThrough(id); err != nil {
				return err
			}
			through[seg]++
		}
		pinned()
		if _, err := e.Collect(ws, t); err != nil {
			return err
		}
		if err := e.Verify(ws); err != nil {
			return err
		}
	}
	if !p.huge() {
		e.Note("the THP was split during the run")
	}
	if err := p.r.Unregister(); err != nil {
		return err
	}
	// The collection after the unpin reports the pinned pages once more.
	ws.Hint(0, n, "pinned-once-more-after-unpin")
	e.Note("clear_refs write-protected the pinned THP in %d epochs; written through the pin: %d THP pages, %d 4 KiB pages", wp, through["thp"], through["4k"])
	if wp == 0 {
		return Skipf("clear_refs never cleared the pinned THP's soft-dirty bit (no CONFIG_MEM_SOFT_DIRTY?)")
	}
	return e.Quiet(ws, t)
}

func init() {
	register(&Scenario{
		Name:  "pinned-thp-numa-hint",
		Paths: "22, 19 (pins), 12 (NUMA hinting)",
		Doc: "pinned-thp-wrprotect's pinned THP and 4 KiB control, with NUMA balancing scanning every 10 ms instead of " +
			"clear_refs: change_huge_pmd(prot_numa) makes the pinned THP's PMD PROT_NONE (its PTE twin skips pinned " +
			"folios), no user action needed. Each epoch: collect+clear, wait (touching nothing) until a scan changed a " +
			"huge PMD, collect+clear again, IORING_OP_READ_FIXED into the THP and the control through the pin, and " +
			"collect before anything reads the THP (a read's hinting fault would restore the PMD's protection). " +
			"Every write through the pin must be reported.",
		Naive: MissPages,
		Run:   staged(runPinnedTHPNUMAHint),
	})
}

// numaScanFast turns NUMA balancing on with a 10 ms scan period, or
// says why it cannot.
func (e *Scene) numaScanFast() error {
	if _, err := os.Stat("/proc/sys/kernel/numa_balancing"); err != nil {
		return Skipf("no NUMA balancing in this kernel: %v", err)
	}
	if numa.Nodes() < 2 {
		return Skipf("one NUMA node: NUMA balancing does not scan (boot with numa=fake=2)")
	}
	for _, k := range [][2]string{{"scan_delay_ms", "0"}, {"scan_period_min_ms", "10"}, {"scan_period_max_ms", "100"}} {
		path := "/sys/kernel/debug/sched/numa_balancing/" + k[0]
		if _, err := os.Stat(path); err != nil {
			path = "/proc/sys/kernel/numa_balancing_" + k[0]
		}
		if err := e.Set(path, k[1]); err != nil {
			return err
		}
	}
	return e.Set("/proc/sys/kernel/numa_balancing", "1")
}

func runPinnedTHPNUMAHint(e *Scene) error {
	p, err := setupPinnedTHP(e)
	if err != nil {
		return err
	}
	if err := e.numaScanFast(); err != nil {
		return err
	}
	ws, t, per, small, n := p.ws, p.t, p.per, p.small, p.n()
	thp := ws.Mem()[:HugePage]
	var sink byte
	pinned := func() { ws.Hint(0, n, "pinned") }
	scans := 0
	for range e.Epochs {
		pinned()
		if _, err := e.Collect(ws, t); err != nil {
			return err
		}
		// Wait for a scan that comes after the last read of the THP: only
		// a read (a hinting fault) gives the PMD its protection back.
		scanned := false
		for t0 := time.Now(); !scanned && time.Since(t0) < 3*time.Second; {
			sink += thp[e.Rand.IntN(HugePage)]
			c0 := vmstat("numa_huge_pte_updates")
			for t1 := time.Now(); time.Since(t1) < 30*time.Millisecond; {
			}
			scanned = vmstat("numa_huge_pte_updates") > c0
		}
		if scanned {
			scans++
		}
		pinned()
		if _, err := e.Collect(ws, t); err != nil {
			return err
		}
		for _, id := range append(Pick(e.Rand, 0, per, 4), Pick(e.Rand, per, small, 2)...) {
			if err := p.writeThrough(id); err != nil {
				return err
			}
		}
		// Nothing read the THP since the scan: its PMD is still
		// PROT_NONE here (a hinting fault, as Verify's read below takes,
		// would give the protection back).
		pinned()
		if _, err := e.Collect(ws, t); err != nil {
			return err
		}
		if err := e.Verify(ws); err != nil {
			return err
		}
	}
	readSink = sink
	if err := p.r.Unregister(); err != nil {
		return err
	}
	ws.Hint(0, n, "pinned-once-more-after-unpin")
	// numa_huge_pte_updates counts every huge PMD the scans changed, in
	// any process: evidence, not proof, that this THP's was among them.
	e.Note("in %d of %d epochs a NUMA scan changed a huge PMD (system-wide numa_huge_pte_updates) after the last read of the pinned THP", scans, e.Epochs)
	if scans == 0 {
		return Skipf("no NUMA scan changed a huge PMD within 3 s in any epoch")
	}
	return e.Quiet(ws, t)
}

// readSink keeps the compiler from dropping loads made only to fault.
var readSink byte
