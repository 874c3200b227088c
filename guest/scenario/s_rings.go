package scenario

import (
	"errors"

	"golang.org/x/sys/unix"

	"ldtlab/guest/kio"
)

func init() {
	register(&Scenario{
		Name:  "kernel-rings",
		Paths: "21",
		Doc: "mappings the kernel writes through its own mapping of the pages: an io_uring SQ/CQ ring (vm_insert_pages(), " +
			"VM_MIXEDMAP; IORING_SETUP_NO_SQARRAY, so user space writes only the SQ tail and CQ head, on the ring's first " +
			"page) and a Linux AIO completion ring (written through folio_address() in aio_complete()), both inside the " +
			"tracked range next to CPU-written pages. Each epoch 256 NOPs post a CQE into every CQ slot and one AIO read " +
			"posts its completion: every page of both rings is written, most of them never by the CPU.",
		Naive: MissPages,
		NotFor: map[string]string{
			"pagemap-scan": "userfaultfd refuses to write-protect the ring mappings (UFFDIO_REGISTER MODE_WP: EINVAL, neither anonymous nor shmem memory), so PAGEMAP_SCAN cannot track them",
		},
		Run: staged(runKernelRings),
	})
}

func runKernelRings(e *Scene) error {
	const data = 16
	a, err := kio.NewAIO(1)
	if err != nil {
		return Skipf("no Linux AIO: %v", err)
	}
	aioOpen := true
	e.closeAtEnd(func() error {
		if aioOpen {
			return a.Close()
		}
		return nil
	})
	aioPages := a.RingSize() / PageSize
	// The io_uring ring cannot be placed (io_uring_get_unmapped_area()
	// refuses an address, mremap too): the tracked range is reserved
	// below it and ends with it. A ring that landed in a hole too small
	// for the reservation stays open until the end (it fills the hole)
	// and another one is made.
	var r *kio.Ring
	var ws *Workset
	for try := 0; ws == nil; try++ {
		if r, err = kio.NewRing(128); err != nil {
			return Skipf("no io_uring: %v", err)
		}
		ring := r
		e.closeAtEnd(func() error {
			if ring.Ring != nil {
				return ring.Close()
			}
			return nil
		})
		ws, err = NewWorksetBelow(e.Seed, data+aioPages, r.Ring, len(r.Ring))
		if err != nil && (!errors.Is(err, unix.EEXIST) || try == 8) {
			return err
		}
	}
	e.closeAtEnd(ws.Close)
	ringPages := len(r.Ring) / PageSize
	if _, err := ws.Map("data", Anon, 0, data, -1); err != nil {
		return err
	}
	if err := a.MoveRing(ws.Base + data*PageSize); err != nil {
		return err
	}
	aioSeg, err := ws.Adopt("aio-ring", data, aioPages)
	if err != nil {
		return err
	}
	uSeg, err := ws.Adopt("io_uring-ring", data+aioPages, ringPages)
	if err != nil {
		return err
	}
	for id := range data {
		ws.Write(id)
	}
	src, err := memfdOf("ldtlab-aio-src", 1)
	if err != nil {
		return err
	}
	e.closeAtEnd(func() error { return unix.Close(src) })
	buf, err := unix.Mmap(-1, 0, PageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return err
	}
	e.closeAtEnd(func() error { return unix.Munmap(buf) })

	// The ring pages the kernel writes each epoch: the CQEs of a full
	// turn of the CQ (every slot), the CQ tail and SQ head on the first
	// page; the AIO ring's header (tail) and the event's page.
	kernelPages := map[int]bool{uSeg.FirstID: true, aioSeg.FirstID: true}
	for i := range r.CQEntries() {
		kernelPages[uSeg.FirstID+r.CQEOffset(i)/PageSize] = true
	}
	t, err := e.StartTracking(ws)
	if err != nil {
		return err
	}
	cpuOnlyRing := 0
	for p := range kernelPages {
		if p != uSeg.FirstID && p < uSeg.FirstID+ringPages && p != aioSeg.FirstID {
			cpuOnlyRing++ // a CQE page user space never writes
		}
	}
	for range e.Epochs {
		for _, id := range Pick(e.Rand, 0, data, 4) {
			ws.Write(id)
		}
		if err := r.Nops(r.CQEntries()); err != nil {
			return err
		}
		if err := a.Pread(src, 0, buf); err != nil {
			return err
		}
		for p := range kernelPages {
			ws.MarkWritten(p)
		}
		// A mapping the kernel writes through its own mapping may be
		// reported whole at every collection (kmod/README).
		ws.Hint(aioSeg.Off, aioSeg.Pages, "kernel-written-mapping")
		ws.Hint(uSeg.Off, uSeg.Pages, "kernel-written-mapping")
		if _, err := e.Collect(ws, t); err != nil {
			return err
		}
		if err := e.Verify(ws); err != nil {
			return err
		}
	}
	e.Note("io_uring ring %d pages (%d CQ slots, %d CQE pages user space never writes), AIO ring %d pages", ringPages, r.CQEntries(), cpuOnlyRing, aioPages)
	// Tear both rings down (io_destroy unmaps the AIO ring) so the quiet
	// epoch has nothing the kernel writes.
	aioOpen = false
	if err := a.Close(); err != nil {
		return err
	}
	ws.Unadopt(aioSeg)
	if err := r.Close(); err != nil {
		return err
	}
	ws.Unadopt(uSeg)
	return e.Quiet(ws, t)
}
