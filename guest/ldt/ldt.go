// Package ldt is the Go binding of the /dev/ldt interface
// (kmod/include/uapi/linux/ldt.h): attach an open file to a process's
// address space, then collect the pages written since they were last
// reported with Clear.
//
// Layouts and numbers mirror the C header exactly; x86-64 only, like LDT.
package ldt

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// DevicePath is the misc device the LDT kernel creates.
const DevicePath = "/dev/ldt"

// Flags are the ldt_collect flags.
type Flags uint64

const (
	// Clear resets the state of every page reported (LDT_CLEAR).
	Clear Flags = 1 << 0
	// Naive is the negative control (LDT_NAIVE): hardware D bit only.
	Naive Flags = 1 << 1
)

// Region is struct ldt_region: one run of written pages, End exclusive.
type Region struct {
	Start uint64
	End   uint64
}

// CollectArg is struct ldt_collect, 9 x u64 = 72 bytes, field for field.
// A kernel before 0026 knows only the first 56 bytes (SizeofCollectArgVer0):
// it has no counts.
type CollectArg struct {
	Size    uint64 // in: sizeof(struct ldt_collect)
	Flags   uint64 // in: Clear | Naive
	Start   uint64 // in: page-aligned start
	End     uint64 // in: page-aligned end, exclusive
	WalkEnd uint64 // out: first address not walked; == End when done
	Vec     uint64 // in: user pointer to Region[VecLen]
	VecLen  uint64 // in: capacity of Vec, in regions
	Visited uint64 // out: entries the walks decided on (0026)
	Changed uint64 // out: entries Clear rewrote (0026)
}

// Sizes of the C structs; the blank arrays fail to compile if the Go
// layout ever drifts from them.
const (
	SizeofRegion         = 16
	SizeofCollectArg     = 72
	SizeofCollectArgVer0 = 56 // LDT_COLLECT_SIZE_VER0: up to VecLen
)

var (
	_ [SizeofRegion - unsafe.Sizeof(Region{})]byte
	_ [unsafe.Sizeof(Region{}) - SizeofRegion]byte
	_ [SizeofCollectArg - unsafe.Sizeof(CollectArg{})]byte
	_ [unsafe.Sizeof(CollectArg{}) - SizeofCollectArg]byte
)

// IocMagic is LDT_IOC_MAGIC.
const IocMagic = 'L'

// Request numbers: LDT_IOC_ATTACH = _IOW('L', 0x40, __s32),
// LDT_IOC_COLLECT = _IOWR('L', 0x41, struct ldt_collect) and
// LDT_IOC_COLLECT_VER0, the same call with the 56-byte struct.
var (
	IocAttach      = IOW(IocMagic, 0x40, 4)
	IocCollect     = IOWR(IocMagic, 0x41, SizeofCollectArg)
	IocCollectVer0 = IOWR(IocMagic, 0x41, SizeofCollectArgVer0)
)

// Error is a failed /dev/ldt operation. It unwraps to the underlying error
// (a unix.Errno for kernel failures) so errors.Is(err, unix.EPERM) works.
type Error struct {
	Op  string // "open", "attach" or "collect"
	Err error
}

func (e *Error) Error() string {
	s := "ldt " + e.Op + ": " + e.Err.Error()
	if m := Meaning(e.Op, e.Err); m != "" {
		s += " (" + m + ")"
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// Meaning explains an errno of operation op the way the ABI defines it, so
// that a failure in a check log says what went wrong without the header at
// hand. It returns "" for errors the ABI does not assign a meaning to.
func Meaning(op string, err error) string {
	var errno unix.Errno
	if !errors.As(err, &errno) {
		return ""
	}
	switch op {
	case "open":
		switch errno {
		case unix.ENOENT, unix.ENODEV, unix.ENXIO:
			return DevicePath + " absent: not running an LDT kernel"
		case unix.EACCES, unix.EPERM:
			return "no permission to open " + DevicePath
		}
	case "attach":
		switch errno {
		case unix.EPERM:
			return "caller lacks ptrace-attach rights over the target"
		case unix.ESRCH:
			return "no such process"
		case unix.EBUSY:
			return "file already attached"
		case unix.ENOTTY:
			return "not an LDT device"
		case unix.EFAULT:
			return "bad pid pointer"
		}
	case "collect":
		switch errno {
		case unix.EINVAL:
			return "unaligned or inverted range, unknown flags, wrong size or vec_len 0"
		case unix.EFAULT:
			return "bad vec or argument pointer"
		case unix.ENXIO:
			return "file not attached yet"
		case unix.ESRCH:
			return "target address space is gone"
		case unix.ENOTTY:
			return "not an LDT device"
		}
	}
	return ""
}

// defaultBatch is CollectAll's buffer capacity in regions (128 KiB): the
// kernel's chunk since 0021, so a collection of 256 MiB with every other
// page dirty takes 4 ioctls (and, since 0021, 4 TLB flushes) instead of 32;
// small enough to keep per file.
const defaultBatch = 8192

// File is an open /dev/ldt. Collect may be called concurrently; CollectAll
// serialises on its reusable buffer.
type File struct {
	f  *os.File
	rc syscall.RawConn

	mu    sync.Mutex
	buf   []Region
	batch int

	// calls counts ioctls issued, failed ones included (benchmarks report
	// the system calls a collection needs).
	calls atomic.Int64
	ns    atomic.Int64 // inside the ioctls

	// visited and changed sum the kernel's counts over every collection.
	visited, changed atomic.Int64
	argSize          atomic.Uint64 // ArgSize's answer; 0: not asked yet

	// ioctlHook replaces the system call in tests of the loops.
	ioctlHook func(req uintptr, arg unsafe.Pointer) (uintptr, error)
}

// Open opens /dev/ldt.
func Open() (*File, error) {
	f, err := os.OpenFile(DevicePath, os.O_RDWR, 0)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, &Error{Op: "open", Err: err}
	}
	file, err := NewFile(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	return file, nil
}

// NewFile wraps an already open /dev/ldt, e.g. one inherited from a parent
// process (the EPERM check hands an fd to an unprivileged child so the
// device's file mode does not matter).
func NewFile(f *os.File) (*File, error) {
	// RawConn.Control holds a reference on the fd for the duration of each
	// ioctl, so a concurrent Close cannot make us hit a reused fd number.
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, &Error{Op: "open", Err: err}
	}
	return &File{f: f, rc: rc, batch: defaultBatch}, nil
}

// SetBatch sets CollectAll's buffer capacity in regions (minimum 1).
func (f *File) SetBatch(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.batch = max(n, 1)
	f.buf = nil
}

// Fd returns the file descriptor (valid until Close).
func (f *File) Fd() uintptr { return f.f.Fd() }

// Close closes the file, dropping the reference on the address space.
func (f *File) Close() error {
	if f.f == nil {
		return nil
	}
	return f.f.Close()
}

// Calls is the number of ioctls issued on f so far.
func (f *File) Calls() int64 { return f.calls.Load() }

// CallNS is the wall time spent inside those ioctls so far.
func (f *File) CallNS() int64 { return f.ns.Load() }

// Entries returns the page table entries the kernel's collections on f
// decided on and rewrote so far, and false when the kernel does not count
// them (a series before 0026).
func (f *File) Entries() (visited, changed int64, ok bool) {
	return f.visited.Load(), f.changed.Load(), f.ArgSize() == SizeofCollectArg
}

// ioctl is a counted and timed system call (Calls, CallNS).
func (f *File) ioctl(req uintptr, arg unsafe.Pointer) (uintptr, error) {
	f.calls.Add(1)
	r, ns, err := f.rawIoctl(req, arg)
	f.ns.Add(ns)
	return r, err
}

// rawIoctl issues one ioctl (or the test hook) and returns the time spent
// inside the system call.
func (f *File) rawIoctl(req uintptr, arg unsafe.Pointer) (uintptr, int64, error) {
	if f.ioctlHook != nil {
		r, err := f.ioctlHook(req, arg)
		return r, 0, err
	}
	var r uintptr
	var ns int64
	var errno unix.Errno
	err := f.rc.Control(func(fd uintptr) {
		t0 := time.Now()
		r, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, req, uintptr(arg))
		ns = time.Since(t0).Nanoseconds()
	})
	if err != nil {
		// Control fails only when the file is closed.
		return 0, 0, os.ErrClosed
	}
	if errno != 0 {
		return 0, ns, errno
	}
	return r, ns, nil
}

// Attach binds the file to pid's address space (0 = the caller). The ABI
// declares the argument as _IOW(__s32): the kernel reads the pid through
// the pointer passed as the ioctl argument.
func (f *File) Attach(pid int) error {
	p := int32(pid)
	if int(p) != pid {
		return &Error{Op: "attach", Err: unix.EINVAL}
	}
	if _, err := f.ioctl(IocAttach, unsafe.Pointer(&p)); err != nil {
		return &Error{Op: "attach", Err: err}
	}
	return nil
}

// Collect walks [start, end) once, filling vec, and returns the number of
// regions written and where the walk stopped (== end when complete). It
// passes everything to the kernel unchecked, so an empty vec yields EINVAL
// as the ABI says.
func (f *File) Collect(start, end uintptr, flags Flags, vec []Region) (n int, walkEnd uintptr, err error) {
	arg := CollectArg{
		Size:   f.ArgSize(),
		Flags:  uint64(flags),
		Start:  uint64(start),
		End:    uint64(end),
		VecLen: uint64(len(vec)),
	}
	if len(vec) > 0 {
		arg.Vec = uint64(uintptr(unsafe.Pointer(&vec[0])))
	}
	n, err = f.CollectRaw(&arg)
	if err != nil {
		return 0, 0, err
	}
	if n > len(vec) {
		return 0, 0, &Error{Op: "collect", Err: fmt.Errorf("kernel reported %d regions for a vec of %d", n, len(vec))}
	}
	return n, uintptr(arg.WalkEnd), nil
}

// CollectRaw issues LDT_IOC_COLLECT with arg exactly as given, for tests
// that need malformed arguments: the command for a Size of
// SizeofCollectArgVer0 is LDT_IOC_COLLECT_VER0, for any other size but
// SizeofCollectArg the one the kernel takes (ArgSize). The caller keeps
// the memory Vec points to alive and mapped.
func (f *File) CollectRaw(arg *CollectArg) (int, error) {
	req := IocCollect
	if arg.Size == SizeofCollectArgVer0 || (arg.Size != SizeofCollectArg && f.ArgSize() == SizeofCollectArgVer0) {
		req = IocCollectVer0
	}
	r, err := f.ioctl(req, unsafe.Pointer(arg))
	if err != nil {
		return 0, &Error{Op: "collect", Err: err}
	}
	if req == IocCollect {
		f.visited.Add(int64(arg.Visited))
		f.changed.Add(int64(arg.Changed))
	}
	return int(r), nil
}

// ArgSize is the size of struct ldt_collect the running kernel takes:
// SizeofCollectArg, or SizeofCollectArgVer0 for a series before 0026, which
// has no counts. A size of 0 is refused with EINVAL before anything else
// by a command the kernel knows, with ENOTTY by one it does not; the probe
// is not counted among the calls.
func (f *File) ArgSize() uint64 {
	if n := f.argSize.Load(); n != 0 {
		return n
	}
	for _, c := range []struct {
		req  uintptr
		size uint64
	}{{IocCollect, SizeofCollectArg}, {IocCollectVer0, SizeofCollectArgVer0}} {
		var probe CollectArg
		_, _, err := f.rawIoctl(c.req, unsafe.Pointer(&probe))
		if errors.Is(err, os.ErrClosed) {
			break
		}
		if errors.Is(err, unix.EINVAL) {
			f.argSize.Store(c.size)
			return c.size
		}
	}
	// Not /dev/ldt, or closed: the call itself will say so.
	return SizeofCollectArg
}

// CollectAll walks all of [start, end), resuming at walk_end whenever the
// buffer fills, and returns every region found. Regions that touch across
// a resumption point are merged, so the result is what one call with an
// unbounded vec would return.
func (f *File) CollectAll(start, end uintptr, flags Flags) ([]Region, error) {
	var out []Region
	err := f.CollectEach(start, end, flags, func(rs []Region) {
		for _, r := range rs {
			if k := len(out); k > 0 && out[k-1].End == r.Start {
				out[k-1].End = r.End
				continue
			}
			out = append(out, r)
		}
	})
	return out, err
}

// CollectEach is CollectAll handing each call's regions to fn as the
// kernel returned them, for a caller that keeps regions in its own type:
// regions that touch across a resumption point come in two calls and are
// the caller's to merge. fn runs with f's lock held and must not keep rs.
func (f *File) CollectEach(start, end uintptr, flags Flags, fn func(rs []Region)) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.buf == nil {
		f.buf = make([]Region, f.batch)
	}
	for cur := start; cur < end; {
		n, we, err := f.Collect(cur, end, flags, f.buf)
		if err != nil {
			return err
		}
		fn(f.buf[:n])
		// A walk_end that does not advance would loop forever; it can
		// only come from a kernel bug, which the checks want to see.
		if we <= cur || we > end {
			return &Error{Op: "collect", Err: fmt.Errorf("walk_end %#x outside (%#x, %#x] after %d regions", we, cur, end, n)}
		}
		cur = we
	}
	return nil
}
