package fuzz

import (
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// io_uring through raw system calls (include/uapi/linux/io_uring.h, 6.12).
const (
	ioringOffSQRing = 0
	ioringOffSQEs   = 0x10000000

	ioringSetupCQSize = 1 << 3
	ioringFeatSingle  = 1 << 0 // IORING_FEAT_SINGLE_MMAP

	ioringEnterGetEvents = 1 << 0

	ioringRegisterBuffers   = 0
	ioringUnregisterBuffers = 1

	ioringOpNop       = 0
	ioringOpReadFixed = 4
	ioringOpRead      = 22
)

type sqringOffsets struct {
	Head, Tail, RingMask, RingEntries, Flags, Dropped, Array, Resv1 uint32
	UserAddr                                                        uint64
}

type cqringOffsets struct {
	Head, Tail, RingMask, RingEntries, Overflow, CQEs, Flags, Resv1 uint32
	UserAddr                                                        uint64
}

type uringParams struct {
	SQEntries, CQEntries, Flags, SQThreadCPU, SQThreadIdle, Features, WQFd uint32
	Resv                                                                   [3]uint32
	SQOff                                                                  sqringOffsets
	CQOff                                                                  cqringOffsets
}

type uringSQE struct {
	Opcode, Flags uint8
	Ioprio        uint16
	Fd            int32
	Off, Addr     uint64
	Len           uint32
	RWFlags       uint32
	UserData      uint64
	BufIndex      uint16
	Personality   uint16
	SpliceFdIn    int32
	Addr3, Pad2   uint64
}

type uringCQE struct {
	UserData uint64
	Res      int32
	Flags    uint32
}

var (
	_ [120 - unsafe.Sizeof(uringParams{})]byte
	_ [unsafe.Sizeof(uringParams{}) - 120]byte
	_ [64 - unsafe.Sizeof(uringSQE{})]byte
	_ [unsafe.Sizeof(uringSQE{}) - 64]byte
	_ [16 - unsafe.Sizeof(uringCQE{})]byte
)

// uring is one io_uring instance with its rings mapped.
type uring struct {
	fd              int
	ring            []byte // SQ and CQ rings, one mapping (IORING_FEAT_SINGLE_MMAP)
	sqes            []byte
	p               uringParams
	sqHead, sqTail  *uint32
	sqMask          uint32
	sqArray         uintptr
	cqHead, cqTail  *uint32
	cqMask          uint32
	cqes            uintptr
	registered      bool
	regAddr, regLen uintptr
}

// newUring sets up an instance with sq SQ entries and cq CQ entries.
func newUring(sq, cq uint32) (*uring, error) {
	u := &uring{fd: -1}
	u.p.Flags = ioringSetupCQSize
	u.p.CQEntries = cq
	fd, _, e := unix.Syscall(unix.SYS_IO_URING_SETUP, uintptr(sq), uintptr(unsafe.Pointer(&u.p)), 0)
	if e != 0 {
		return nil, fmt.Errorf("io_uring_setup: %w", e)
	}
	u.fd = int(fd)
	if u.p.Features&ioringFeatSingle == 0 {
		u.close()
		return nil, fmt.Errorf("io_uring without IORING_FEAT_SINGLE_MMAP")
	}
	size := max(int(u.p.SQOff.Array)+int(u.p.SQEntries)*4, int(u.p.CQOff.CQEs)+int(u.p.CQEntries)*16)
	ring, err := unix.Mmap(u.fd, ioringOffSQRing, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		u.close()
		return nil, fmt.Errorf("mmap io_uring rings: %w", err)
	}
	u.ring = ring
	sqes, err := unix.Mmap(u.fd, ioringOffSQEs, int(u.p.SQEntries)*64, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		u.close()
		return nil, fmt.Errorf("mmap io_uring SQEs: %w", err)
	}
	u.sqes = sqes
	base := uintptr(unsafe.Pointer(&ring[0]))
	u.sqHead = (*uint32)(ptrAt(base + uintptr(u.p.SQOff.Head)))
	u.sqTail = (*uint32)(ptrAt(base + uintptr(u.p.SQOff.Tail)))
	u.sqMask = *(*uint32)(ptrAt(base + uintptr(u.p.SQOff.RingMask)))
	u.sqArray = base + uintptr(u.p.SQOff.Array)
	u.cqHead = (*uint32)(ptrAt(base + uintptr(u.p.CQOff.Head)))
	u.cqTail = (*uint32)(ptrAt(base + uintptr(u.p.CQOff.Tail)))
	u.cqMask = *(*uint32)(ptrAt(base + uintptr(u.p.CQOff.RingMask)))
	u.cqes = base + uintptr(u.p.CQOff.CQEs)
	return u, nil
}

func (u *uring) close() {
	if u.sqes != nil {
		unix.Munmap(u.sqes)
		u.sqes = nil
	}
	if u.ring != nil {
		unix.Munmap(u.ring)
		u.ring = nil
	}
	if u.fd >= 0 {
		unix.Close(u.fd)
		u.fd = -1
	}
}

// ringRange is the SQ/CQ ring mapping.
func (u *uring) ringRange() (uintptr, int) {
	return uintptr(unsafe.Pointer(&u.ring[0])), len(u.ring)
}

// submit queues sqes and waits for all their completions; it returns
// their results in order of submission (matched by user data).
func (u *uring) submit(sqes []uringSQE) ([]int32, error) {
	res := make([]int32, len(sqes))
	for start := 0; start < len(sqes); {
		n := min(len(sqes)-start, int(u.p.SQEntries))
		tail := atomic.LoadUint32(u.sqTail)
		for i := 0; i < n; i++ {
			idx := (tail + uint32(i)) & u.sqMask
			s := sqes[start+i]
			s.UserData = uint64(start + i)
			*(*uringSQE)(unsafe.Pointer(&u.sqes[idx*64])) = s
			*(*uint32)(ptrAt(u.sqArray + uintptr(idx)*4)) = idx
		}
		atomic.StoreUint32(u.sqTail, tail+uint32(n))
		sub, got := 0, 0
		for got < n {
			r, _, e := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(u.fd), uintptr(n-sub), uintptr(n-got), ioringEnterGetEvents, 0, 0)
			switch {
			case e == unix.EINTR:
			case e != 0:
				return res, fmt.Errorf("io_uring_enter: %w", e)
			default:
				sub += int(r)
			}
			got += u.reap(res)
		}
		start += n
	}
	return res, nil
}

// reap consumes every posted CQE; the CQ head is the one word of the
// ring the process writes.
func (u *uring) reap(res []int32) int {
	head := atomic.LoadUint32(u.cqHead)
	tail := atomic.LoadUint32(u.cqTail)
	n := 0
	for ; head != tail; head++ {
		c := *(*uringCQE)(ptrAt(u.cqes + uintptr(head&u.cqMask)*16))
		if c.UserData < uint64(len(res)) {
			res[c.UserData] = c.Res
		}
		n++
	}
	atomic.StoreUint32(u.cqHead, head)
	return n
}

// register makes [addr, addr+len) fixed buffer 0: GUP with
// FOLL_WRITE|FOLL_PIN|FOLL_LONGTERM pins every page until unregister.
func (u *uring) register(addr uintptr, n int) error {
	if u.registered {
		if err := u.unregister(); err != nil {
			return err
		}
	}
	iov := unix.Iovec{Base: (*byte)(ptrAt(addr)), Len: uint64(n)}
	_, _, e := unix.Syscall6(unix.SYS_IO_URING_REGISTER, uintptr(u.fd), ioringRegisterBuffers, uintptr(unsafe.Pointer(&iov)), 1, 0, 0)
	if e != 0 {
		return fmt.Errorf("IORING_REGISTER_BUFFERS: %w", e)
	}
	u.registered, u.regAddr, u.regLen = true, addr, uintptr(n)
	return nil
}

func (u *uring) unregister() error {
	if !u.registered {
		return nil
	}
	_, _, e := unix.Syscall6(unix.SYS_IO_URING_REGISTER, uintptr(u.fd), ioringUnregisterBuffers, 0, 0, 0, 0)
	if e != 0 {
		return fmt.Errorf("IORING_UNREGISTER_BUFFERS: %w", e)
	}
	u.registered = false
	return nil
}

// readFixed reads n bytes of fd at off into fixed buffer 0 at addr.
func (u *uring) readFixed(fd int, addr uintptr, n int, off int64) (int, error) {
	res, err := u.submit([]uringSQE{{Opcode: ioringOpReadFixed, Fd: int32(fd), Off: uint64(off), Addr: uint64(addr), Len: uint32(n)}})
	if err != nil {
		return 0, err
	}
	if res[0] < 0 {
		return 0, fmt.Errorf("READ_FIXED: %w", unix.Errno(-res[0]))
	}
	return int(res[0]), nil
}

// read reads n bytes of fd at off into addr (not a fixed buffer).
func (u *uring) read(fd int, addr uintptr, n int, off int64) (int, error) {
	res, err := u.submit([]uringSQE{{Opcode: ioringOpRead, Fd: int32(fd), Off: uint64(off), Addr: uint64(addr), Len: uint32(n)}})
	if err != nil {
		return 0, err
	}
	if res[0] < 0 {
		return 0, fmt.Errorf("READ: %w", unix.Errno(-res[0]))
	}
	return int(res[0]), nil
}

// nops posts n NOPs: n CQEs the kernel writes into the CQ ring.
func (u *uring) nops(n int) error {
	sqes := make([]uringSQE, n)
	for i := range sqes {
		sqes[i].Opcode = ioringOpNop
	}
	_, err := u.submit(sqes)
	return err
}

// AIO (include/uapi/linux/aio_abi.h).
const iocbCmdPread = 0

type iocb struct {
	Data      uint64
	Key       uint32
	RWFlags   uint32
	Opcode    uint16
	Reqprio   int16
	Fildes    uint32
	Buf       uint64
	Nbytes    uint64
	Offset    int64
	Reserved2 uint64
	Flags     uint32
	Resfd     uint32
}

type ioEvent struct {
	Data, Obj uint64
	Res, Res2 int64
}

var (
	_ [64 - unsafe.Sizeof(iocb{})]byte
	_ [unsafe.Sizeof(iocb{}) - 64]byte
	_ [32 - unsafe.Sizeof(ioEvent{})]byte
)

// aioCtx is an AIO context; its id is the address of its ring, mapped in
// the process and written by aio_complete through the kernel's mapping.
type aioCtx struct{ id uint64 }

func newAIO(nr int) (*aioCtx, error) {
	var id uint64
	if _, _, e := unix.Syscall(unix.SYS_IO_SETUP, uintptr(nr), uintptr(unsafe.Pointer(&id)), 0); e != 0 {
		return nil, fmt.Errorf("io_setup: %w", e)
	}
	return &aioCtx{id: id}, nil
}

func (a *aioCtx) close() {
	if a != nil && a.id != 0 {
		unix.Syscall(unix.SYS_IO_DESTROY, uintptr(a.id), 0, 0)
		a.id = 0
	}
}

// pread reads n bytes of fd at off into addr and waits for the event.
func (a *aioCtx) pread(fd int, addr uintptr, n int, off int64) (int, error) {
	cb := iocb{Opcode: iocbCmdPread, Fildes: uint32(fd), Buf: uint64(addr), Nbytes: uint64(n), Offset: off}
	p := &cb
	if _, _, e := unix.Syscall(unix.SYS_IO_SUBMIT, uintptr(a.id), 1, uintptr(unsafe.Pointer(&p))); e != 0 {
		return 0, fmt.Errorf("io_submit: %w", e)
	}
	var ev ioEvent
	for {
		r, _, e := unix.Syscall6(unix.SYS_IO_GETEVENTS, uintptr(a.id), 1, 1, uintptr(unsafe.Pointer(&ev)), 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return 0, fmt.Errorf("io_getevents: %w", e)
		}
		if r == 1 {
			break
		}
	}
	if ev.Res < 0 {
		return 0, fmt.Errorf("aio pread: %w", unix.Errno(-ev.Res))
	}
	return int(ev.Res), nil
}
