// Package kio drives the kernel's own I/O interfaces that write user
// memory without the CPU: io_uring (registered buffers pinned with
// FOLL_PIN|FOLL_LONGTERM and written through the pin; SQ/CQ rings the
// kernel writes through its own mapping) and Linux AIO (a completion ring
// written through folio_address()). Raw system calls only: the lab's guest
// has no liburing, and x/sys/unix carries the numbers but not the ABI.
package kio

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

const pageSize = 4096

// Linux 6.12 uapi, include/uapi/linux/io_uring.h.
const (
	setupNoSQArray = 1 << 16 // IORING_SETUP_NO_SQARRAY (6.6+)

	offSQRing = 0          // IORING_OFF_SQ_RING
	offSQEs   = 0x10000000 // IORING_OFF_SQES

	featSingleMmap = 1 << 0 // IORING_FEAT_SINGLE_MMAP

	enterGetEvents = 1 << 0 // IORING_ENTER_GETEVENTS

	registerBuffers   = 0 // IORING_REGISTER_BUFFERS
	unregisterBuffers = 1 // IORING_UNREGISTER_BUFFERS

	OpNop       = 0 // IORING_OP_NOP
	OpReadFixed = 4 // IORING_OP_READ_FIXED

	sqeSize = 64
	cqeSize = 16
)

type sqOffsets struct {
	Head, Tail, RingMask, RingEntries, Flags, Dropped, Array, Resv1 uint32
	UserAddr                                                        uint64
}

type cqOffsets struct {
	Head, Tail, RingMask, RingEntries, Overflow, Cqes, Flags, Resv1 uint32
	UserAddr                                                        uint64
}

type params struct {
	SQEntries, CQEntries, Flags, SQThreadCPU, SQThreadIdle, Features, WQFd uint32
	Resv                                                                   [3]uint32
	SQOff                                                                  sqOffsets
	CQOff                                                                  cqOffsets
}

// Ring is an io_uring instance whose SQ and CQ rings share one mapping
// (IORING_FEAT_SINGLE_MMAP) and whose SQ has no index array
// (IORING_SETUP_NO_SQARRAY): the only words of the ring mapping user space
// writes are the SQ tail and the CQ head; everything else in it — the CQEs,
// the CQ tail, the SQ head — is written by the kernel through its own
// mapping of the ring pages (vm_insert_pages(): no user PTE sees it).
type Ring struct {
	FD   int
	Ring []byte // the SQ/CQ ring mapping
	sqes []byte
	p    params
}

// NewRing sets up an io_uring with sqEntries submission slots (the CQ has
// twice as many).
func NewRing(sqEntries uint32) (*Ring, error) {
	r := &Ring{}
	r.p.Flags = setupNoSQArray
	fd, _, e := unix.Syscall(unix.SYS_IO_URING_SETUP, uintptr(sqEntries), uintptr(unsafe.Pointer(&r.p)), 0)
	if e != 0 {
		return nil, fmt.Errorf("io_uring_setup: %w", e)
	}
	r.FD = int(fd)
	if r.p.Features&featSingleMmap == 0 {
		unix.Close(r.FD)
		return nil, fmt.Errorf("io_uring without IORING_FEAT_SINGLE_MMAP")
	}
	sz := max(int(r.p.SQOff.Array), int(r.p.CQOff.Cqes)+int(r.p.CQEntries)*cqeSize)
	if r.p.SQOff.Array == 0 {
		sz = int(r.p.CQOff.Cqes) + int(r.p.CQEntries)*cqeSize
	}
	sz = (sz + pageSize - 1) &^ (pageSize - 1)
	// The SQEs first: the kernel places mappings top-down, so the ring
	// mapped last is the lowest, with free address space below it.
	sqes, err := unix.Mmap(r.FD, offSQEs, int(r.p.SQEntries)*sqeSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		unix.Close(r.FD)
		return nil, fmt.Errorf("mmap io_uring SQEs: %w", err)
	}
	ring, err := unix.Mmap(r.FD, offSQRing, sz, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		unix.Munmap(sqes)
		unix.Close(r.FD)
		return nil, fmt.Errorf("mmap io_uring rings: %w", err)
	}
	r.Ring = ring
	r.sqes = sqes
	return r, nil
}

// SQEntries and CQEntries are the ring sizes the kernel chose.
func (r *Ring) SQEntries() int { return int(r.p.SQEntries) }
func (r *Ring) CQEntries() int { return int(r.p.CQEntries) }

// CQEOffset is the byte offset of CQ slot i inside the ring mapping.
func (r *Ring) CQEOffset(i int) int {
	return int(r.p.CQOff.Cqes) + (i%int(r.p.CQEntries))*cqeSize
}

// CQTail is the kernel's CQ tail (the next slot it fills).
func (r *Ring) CQTail() uint32 { return r.load(r.p.CQOff.Tail) }

func (r *Ring) word(off uint32) *uint32 { return (*uint32)(unsafe.Pointer(&r.Ring[off])) }
func (r *Ring) load(off uint32) uint32  { return atomic.LoadUint32(r.word(off)) }

// SQE describes one submission.
type SQE struct {
	Op       uint8
	FD       int32
	Off      uint64
	Addr     uint64
	Len      uint32
	UserData uint64
	BufIndex uint16
}

// Submit queues sqes (at most SQEntries), enters the kernel and waits for
// all of them to complete; it returns their results in completion order.
func (r *Ring) Submit(sqes []SQE) ([]int32, error) {
	if len(sqes) > int(r.p.SQEntries) {
		return nil, fmt.Errorf("io_uring: %d SQEs, ring has %d", len(sqes), r.p.SQEntries)
	}
	mask := r.load(r.p.SQOff.RingMask)
	tail := r.load(r.p.SQOff.Tail)
	for _, s := range sqes {
		b := r.sqes[int(tail&mask)*sqeSize:][:sqeSize]
		clear(b)
		b[0] = s.Op
		binary.LittleEndian.PutUint32(b[4:], uint32(s.FD))
		binary.LittleEndian.PutUint64(b[8:], s.Off)
		binary.LittleEndian.PutUint64(b[16:], s.Addr)
		binary.LittleEndian.PutUint32(b[24:], s.Len)
		binary.LittleEndian.PutUint64(b[32:], s.UserData)
		binary.LittleEndian.PutUint16(b[40:], s.BufIndex)
		tail++
	}
	atomic.StoreUint32(r.word(r.p.SQOff.Tail), tail)
	n := uint32(len(sqes))
	for done := uint32(0); done < n; {
		got, _, e := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.FD), uintptr(n-done), uintptr(n-done), enterGetEvents, 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return nil, fmt.Errorf("io_uring_enter: %w", e)
		}
		done += uint32(got)
		if got == 0 {
			break // all submitted earlier; wait below
		}
	}
	return r.reap(len(sqes))
}

// reap waits for n CQEs and consumes them.
func (r *Ring) reap(n int) ([]int32, error) {
	cmask := r.load(r.p.CQOff.RingMask)
	var res []int32
	for len(res) < n {
		head := r.load(r.p.CQOff.Head)
		tail := r.load(r.p.CQOff.Tail)
		if head == tail {
			_, _, e := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.FD), 0, 1, enterGetEvents, 0, 0)
			if e != 0 && e != unix.EINTR {
				return res, fmt.Errorf("io_uring_enter (wait): %w", e)
			}
			continue
		}
		for ; head != tail && len(res) < n; head++ {
			c := r.Ring[r.CQEOffset(int(head&cmask)):][:cqeSize]
			res = append(res, int32(binary.LittleEndian.Uint32(c[8:])))
		}
		atomic.StoreUint32(r.word(r.p.CQOff.Head), head)
	}
	return res, nil
}

// Register pins bufs as the ring's fixed buffers (FOLL_WRITE |
// FOLL_LONGTERM): READ_FIXED into them is written through the pin.
func (r *Ring) Register(bufs [][]byte) error {
	iov := make([]unix.Iovec, len(bufs))
	for i, b := range bufs {
		iov[i].Base = &b[0]
		iov[i].SetLen(len(b))
	}
	_, _, e := unix.Syscall6(unix.SYS_IO_URING_REGISTER, uintptr(r.FD), registerBuffers, uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)), 0, 0)
	if e != 0 {
		return fmt.Errorf("IORING_REGISTER_BUFFERS: %w", e)
	}
	return nil
}

// Unregister drops the fixed buffers (and their pins).
func (r *Ring) Unregister() error {
	_, _, e := unix.Syscall6(unix.SYS_IO_URING_REGISTER, uintptr(r.FD), unregisterBuffers, 0, 0, 0, 0)
	if e != 0 {
		return fmt.Errorf("IORING_UNREGISTER_BUFFERS: %w", e)
	}
	return nil
}

// ReadFixed reads len(dst) bytes of fd at off into dst, which lies inside
// fixed buffer idx: the kernel writes it through its pin, never through
// this process's page tables.
func (r *Ring) ReadFixed(fd int, off int64, dst []byte, idx uint16) error {
	res, err := r.Submit([]SQE{{Op: OpReadFixed, FD: int32(fd), Off: uint64(off), Addr: uint64(uintptr(unsafe.Pointer(&dst[0]))), Len: uint32(len(dst)), BufIndex: idx}})
	if err != nil {
		return err
	}
	if res[0] < 0 {
		return fmt.Errorf("READ_FIXED: %w", unix.Errno(-res[0]))
	}
	if int(res[0]) != len(dst) {
		return fmt.Errorf("READ_FIXED: short read %d of %d", res[0], len(dst))
	}
	return nil
}

// Nops posts n NOPs (in batches of the SQ size) and reaps their CQEs.
func (r *Ring) Nops(n int) error {
	for n > 0 {
		k := min(n, int(r.p.SQEntries))
		sqes := make([]SQE, k)
		for i := range sqes {
			sqes[i] = SQE{Op: OpNop, UserData: uint64(i + 1)}
		}
		res, err := r.Submit(sqes)
		if err != nil {
			return err
		}
		for _, v := range res {
			if v != 0 {
				return fmt.Errorf("NOP completed with %d", v)
			}
		}
		n -= k
	}
	return nil
}

// Close unmaps the rings and closes the ring (its fixed buffers go too).
func (r *Ring) Close() error {
	if r.sqes != nil {
		unix.Munmap(r.sqes)
		r.sqes = nil
	}
	if r.Ring != nil {
		unix.Munmap(r.Ring)
		r.Ring = nil
	}
	return unix.Close(r.FD)
}
