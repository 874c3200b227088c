package scenario

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"ldtlab/guest/udmabuf"
)

func init() {
	register(&Scenario{
		Name:  "shared-pin-udmabuf",
		Paths: "23 (memfd_pin_folios)",
		Doc: "shared-pin-elsewhere's memfd (sealed against shrinking) made into udmabufs: /dev/udmabuf pins the " +
			"folios with memfd_pin_folios(), which walks no mm (nothing has MMF_HAS_PINNED), and pages are written " +
			"through the dma-buf's own mapping (VM_PFNMAP: no entry of the memfd mapping sees them). Each epoch " +
			"(a) a udmabuf is made, written through and closed between two collections, (b) another is written " +
			"through and held across the collection (closed after it), while (c) this process writes other pages " +
			"with the CPU. All must be reported.",
		Naive: MissPages,
		Run:   staged(runSharedPinUdmabuf),
	})
}

// newUdmabuf makes a udmabuf of the first n pages of memfd fd (sealed
// against shrinking): they are pinned until it is closed.
func newUdmabuf(fd, n int) (*udmabuf.Buf, error) {
	b, err := udmabuf.New(fd, 0, uint64(n)*PageSize)
	if errors.Is(err, udmabuf.ErrNoDevice) {
		return nil, Skipf("%v", err)
	}
	return b, err
}

// writeUdmabuf writes the next generation of pages ids through mem, a
// udmabuf's mapping of the workset's memfd.
func writeUdmabuf(ws *Workset, mem []byte, ids []int) error {
	for _, id := range ids {
		err := ws.WriteWith(id, func(_ uintptr, data []byte) error {
			copy(mem[id*PageSize:(id+1)*PageSize], data)
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func runSharedPinUdmabuf(e *Scene) error {
	const n = 48
	ws, fd, _, err := sharedPinSet(e, "ldtlab-udmabuf", n)
	if err != nil {
		return err
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK); err != nil {
		return fmt.Errorf("seal the memfd against shrinking: %w", err)
	}
	t, err := e.StartTracking(ws)
	if err != nil {
		return err
	}
	var between, held int
	for range e.Epochs {
		ids := Pick(e.Rand, 0, n, n/3)
		third := len(ids) / 3
		a, b, c := ids[:third], ids[third:2*third], ids[2*third:]
		// (a) made, written through and closed between two collections:
		// only the pin itself can tell this mm.
		buf, err := newUdmabuf(fd, n)
		if err != nil {
			return err
		}
		if err := writeUdmabuf(ws, buf.Mem, a); err != nil {
			return err
		}
		if err := buf.Close(); err != nil {
			return err
		}
		between += len(a)
		// (b) held across the collection, beside (c) CPU writes.
		if buf, err = newUdmabuf(fd, n); err != nil {
			return err
		}
		if err := writeUdmabuf(ws, buf.Mem, b); err != nil {
			return err
		}
		held += len(b)
		for _, id := range c {
			ws.Write(id)
		}
		// Pinned pages may be reported at every collection while pinned,
		// and once more after the unpin.
		ws.Hint(0, n, "pinned-elsewhere")
		if _, err := e.Collect(ws, t); err != nil {
			return err
		}
		if err := e.Verify(ws); err != nil {
			return err
		}
		if err := buf.Close(); err != nil {
			return err
		}
		ws.Hint(0, n, "pinned-once-more-after-unpin")
	}
	e.Note("written through a udmabuf's mapping: %d pages between collections, %d while a collection saw the pin", between, held)
	return e.Quiet(ws, t)
}
