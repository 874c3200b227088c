package checkpoint

import (
	"math/rand/v2"
	"runtime"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// sink keeps the read-back loads from being optimised away.
var sink byte

// RunWriter is the synthetic checkpoint target: it writes random pages
// of an mb MiB anonymous region forever, and pages random 1 MiB chunks out
// (MADV_PAGEOUT) so that written pages keep going through swap — the
// case where a tracker that only looks at the hardware D bit misses
// writes. ready is called once the region is populated.
func RunWriter(mb int, seed uint64, ready func()) error {
	size := mb << 20
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return err
	}
	_ = unix.Madvise(mem, unix.MADV_NOHUGEPAGE)
	r := rand.New(rand.NewPCG(seed, 0x5eed))
	for p := 0; p < size; p += pageSize {
		mem[p] = 1
	}
	ready()
	runtime.LockOSThread()
	pages := size / pageSize
	chunk := (1 << 20) / pageSize
	for i := 0; ; i++ {
		p := r.IntN(pages) * pageSize
		w := (*[pageSize / 8]uint64)(unsafe.Pointer(&mem[p]))
		v := r.Uint64()
		for k := range w {
			w[k] = v + uint64(k)
		}
		if i%512 == 511 {
			c := r.IntN(pages/chunk) * chunk * pageSize
			_ = unix.Madvise(mem[c:c+chunk*pageSize], unix.MADV_PAGEOUT)
			// Read some of it back: swapped-in pages come back clean.
			for q := c; q < c+chunk*pageSize; q += 4 * pageSize {
				sink += mem[q]
			}
		}
		if i%64 == 63 {
			time.Sleep(time.Millisecond)
		}
	}
}
