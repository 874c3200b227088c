package kio

import (
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Linux AIO (include/uapi/linux/aio_abi.h).
const (
	iocbCmdPread = 0 // IOCB_CMD_PREAD
	iocbSize     = 64
	ioEventSize  = 32
)

// AIO is a Linux AIO context. Its completion ring is a MAP_SHARED mapping
// of an internal file whose pages aio_complete() writes through
// folio_address(): the kernel's mapping, never this process's PTEs. The
// context id is the ring's user address, so it follows the ring when the
// ring is moved with mremap (aio_ring_mremap()).
type AIO struct {
	ctx  uintptr
	size int
}

// NewAIO sets up a context for nr events.
func NewAIO(nr int) (*AIO, error) {
	var ctx uintptr
	_, _, e := unix.Syscall(unix.SYS_IO_SETUP, uintptr(nr), uintptr(unsafe.Pointer(&ctx)), 0)
	if e != 0 {
		return nil, fmt.Errorf("io_setup: %w", e)
	}
	a := &AIO{ctx: ctx}
	size, err := mappingSize(ctx)
	if err != nil {
		a.Close()
		return nil, fmt.Errorf("the AIO ring: %w", err)
	}
	a.size = size
	return a, nil
}

// mappingSize is the size of the mapping that starts at addr, from
// /proc/self/maps.
func mappingSize(addr uintptr) (int, error) {
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		lo, rest, ok := strings.Cut(l, "-")
		if !ok {
			continue
		}
		hi, _, _ := strings.Cut(rest, " ")
		a, e1 := strconv.ParseUint(lo, 16, 64)
		z, e2 := strconv.ParseUint(hi, 16, 64)
		if e1 == nil && e2 == nil && uintptr(a) == addr {
			return int(z - a), nil
		}
	}
	return 0, fmt.Errorf("no mapping starts at %#x", addr)
}

// Ring is the address of the completion ring (== the context id).
func (a *AIO) Ring() uintptr { return a.ctx }

// RingSize is the ring mapping's size in bytes.
func (a *AIO) RingSize() int { return a.size }

// MoveRing mremaps the completion ring to addr (which the caller owns:
// MREMAP_FIXED replaces what is there) and follows it with the context id.
func (a *AIO) MoveRing(addr uintptr) error {
	got, _, e := unix.Syscall6(unix.SYS_MREMAP, a.ctx, uintptr(a.size), uintptr(a.size), unix.MREMAP_MAYMOVE|unix.MREMAP_FIXED, addr, 0)
	if e != 0 {
		return fmt.Errorf("mremap the AIO ring: %w", e)
	}
	a.ctx = got
	return nil
}

// Pread reads len(buf) bytes of fd at off into buf and waits for the
// completion, which the kernel posts into the ring.
func (a *AIO) Pread(fd int, off int64, buf []byte) error {
	var cb [iocbSize]byte
	binary.LittleEndian.PutUint64(cb[0:], 0x1d7)
	binary.LittleEndian.PutUint16(cb[16:], iocbCmdPread)
	binary.LittleEndian.PutUint32(cb[20:], uint32(fd))
	binary.LittleEndian.PutUint64(cb[24:], uint64(uintptr(unsafe.Pointer(&buf[0]))))
	binary.LittleEndian.PutUint64(cb[32:], uint64(len(buf)))
	binary.LittleEndian.PutUint64(cb[40:], uint64(off))
	cbs := [1]uintptr{uintptr(unsafe.Pointer(&cb[0]))}
	n, _, e := unix.Syscall(unix.SYS_IO_SUBMIT, a.ctx, 1, uintptr(unsafe.Pointer(&cbs[0])))
	if e != 0 {
		return fmt.Errorf("io_submit: %w", e)
	}
	if n != 1 {
		return fmt.Errorf("io_submit: %d submitted", n)
	}
	var ev [ioEventSize]byte
	for {
		got, _, e := unix.Syscall6(unix.SYS_IO_GETEVENTS, a.ctx, 1, 1, uintptr(unsafe.Pointer(&ev[0])), 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return fmt.Errorf("io_getevents: %w", e)
		}
		if got == 1 {
			break
		}
	}
	res := int64(binary.LittleEndian.Uint64(ev[16:]))
	if res != int64(len(buf)) {
		return fmt.Errorf("AIO pread: result %d, want %d", res, len(buf))
	}
	return nil
}

// Close destroys the context; the kernel unmaps the ring.
func (a *AIO) Close() error {
	_, _, e := unix.Syscall(unix.SYS_IO_DESTROY, a.ctx, 0, 0)
	if e != 0 {
		return fmt.Errorf("io_destroy: %w", e)
	}
	return nil
}
