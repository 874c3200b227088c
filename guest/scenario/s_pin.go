package scenario

import (
	"fmt"

	"golang.org/x/sys/unix"

	"ldtlab/guest/kio"
	"ldtlab/guest/pagemap"
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
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC)
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

func runPinnedTHPWrprotect(e *Scene) error {
	e.pauseKhugepaged()
	per := HugePage / PageSize
	const small = 16
	n := per + small
	ws, err := e.Workset(n)
	if err != nil {
		return err
	}
	thp, err := ws.Map("thp", AnonTHP, 0, per, -1)
	if err != nil {
		return err
	}
	ctl, err := ws.Map("4k", Anon, per, small, -1)
	if err != nil {
		return err
	}
	for id := range n {
		ws.Write(id)
	}
	huge := func() bool { kb, _ := anonHugeKB(ws.Base, ws.Base+HugePage); return kb >= HugePage/1024 }
	if !huge() {
		_ = unix.Madvise(thp.Bytes(ws), unix.MADV_COLLAPSE)
	}
	if !huge() {
		return Skipf("no PMD-mapped THP (transparent_hugepage must be madvise or always)")
	}
	src, err := memfdOf("ldtlab-fixed-src", n)
	if err != nil {
		return err
	}
	e.closeAtEnd(func() error { return unix.Close(src) })
	r, err := kio.NewRing(8)
	if err != nil {
		return Skipf("no io_uring: %v", err)
	}
	e.closeAtEnd(r.Close)
	if err := r.Register([][]byte{thp.Bytes(ws), ctl.Bytes(ws)}); err != nil {
		return err
	}
	if !huge() {
		return Skipf("registering the fixed buffer split the THP")
	}
	t, err := e.StartTracking(ws)
	if err != nil {
		return err
	}
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
			buf, seg := uint16(0), "thp"
			if id >= per {
				buf, seg = 1, "4k"
			}
			if err := ws.WriteWith(id, fixedWriter(r, src, ws, id, buf)); err != nil {
				return fmt.Errorf("READ_FIXED into page %d: %w", id, err)
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
	if !huge() {
		e.Note("the THP was split during the run")
	}
	if err := r.Unregister(); err != nil {
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
