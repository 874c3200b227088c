package fuzz

import (
	"ldtlab/guest/udmabuf"
)

// udmabufWrite makes a dma-buf of memfd pages [p,p+n): /dev/udmabuf pins the
// folios with memfd_pin_folios(), which walks no mm, so the tracked mm
// never gets MMF_HAS_PINNED (issue 19, finding 2). The pages are written
// through the dma-buf's own mapping (VM_PFNMAP: no entry of the region's
// mapping sees the stores), then the buffer is closed — or, with Arg
// hold, held across the next collection.
func (e *executor) udmabufWrite(i int, r *region, p, n int, o Op) {
	if r.spec.Kind != KMemfd || r.fd < 0 {
		return
	}
	h, err := udmabuf.New(r.fd, uint64(p)*pg, uint64(n)*pg)
	if err != nil {
		e.failed(o.Op, err)
		return
	}
	mem := h.Mem
	// One word per page: the rest of the page keeps what the model has.
	for q := p; q < p+n; q++ {
		w, v := wordOf(o.V, q), wordVal(o.V, q)
		putWord(mem[(q-p)*pg:], w, v)
		r.wroteWord(i, q, w, v, o.Op)
		if !r.writable(q) {
			r.st[q].pinRO = true
		}
	}
	if o.Arg == "hold" {
		e.dmabufs = append(e.dmabufs, h)
	} else {
		h.Close()
	}
	e.done(o.Op)
}

// dropUdmabufs closes the held udmabufs: their pins go.
func (e *executor) dropUdmabufs() {
	for _, h := range e.dmabufs {
		h.Close()
	}
	e.dmabufs = nil
}
