package tracker

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"ldtlab/guest/ldt"
)

// Linux 6.12 uapi, include/uapi/linux/fs.h and userfaultfd.h. x/sys/unix
// does not carry these yet.
const (
	pageIsWritten = 1 << 1 // PAGE_IS_WRITTEN

	pmScanWPMatching   = 1 << 0 // PM_SCAN_WP_MATCHING
	pmScanCheckWPAsync = 1 << 1 // PM_SCAN_CHECK_WPASYNC

	uffdAPI             = 0xAA    // UFFD_API
	uffdUserModeOnly    = 1       // UFFD_USER_MODE_ONLY
	uffdFeatureWPUnpop  = 1 << 13 // UFFD_FEATURE_WP_UNPOPULATED
	uffdFeatureWPAsync  = 1 << 15 // UFFD_FEATURE_WP_ASYNC
	uffdRegisterModeWP  = 1 << 1  // UFFDIO_REGISTER_MODE_WP
	uffdWriteprotectWP  = 1 << 0  // UFFDIO_WRITEPROTECT_MODE_WP
	uffdioWriteprotectN = 0x06    // _UFFDIO_WRITEPROTECT

	sizeofPageRegion = 24
	sizeofPmScanArg  = 96
	sizeofUffdioAPI  = 24
	sizeofUffdioReg  = 32
	sizeofUffdioWP   = 24
)

// Request numbers; the tests pin them against hand-derived values.
var (
	iocPagemapScan        = ldt.IOWR('f', 16, sizeofPmScanArg)                     // PAGEMAP_SCAN
	iocUffdioAPI          = ldt.IOWR(uffdAPI, 0x3F, sizeofUffdioAPI)               // UFFDIO_API
	iocUffdioRegister     = ldt.IOWR(uffdAPI, 0x00, sizeofUffdioReg)               // UFFDIO_REGISTER
	iocUffdioWriteprotect = ldt.IOWR(uffdAPI, uffdioWriteprotectN, sizeofUffdioWP) // UFFDIO_WRITEPROTECT
)

type pageRegion struct{ Start, End, Categories uint64 }

type pmScanArg struct {
	Size, Flags, Start, End, WalkEnd, Vec, VecLen, MaxPages       uint64
	CategoryInverted, CategoryMask, CategoryAnyofMask, ReturnMask uint64
}

type uffdioAPI struct{ API, Features, Ioctls uint64 }

type uffdioRange struct{ Start, Len uint64 }

type uffdioRegister struct {
	Range  uffdioRange
	Mode   uint64
	Ioctls uint64
}

type uffdioWriteprotect struct {
	Range uffdioRange
	Mode  uint64
}

var (
	_ [sizeofPageRegion - unsafe.Sizeof(pageRegion{})]byte
	_ [sizeofPmScanArg - unsafe.Sizeof(pmScanArg{})]byte
	_ [sizeofUffdioAPI - unsafe.Sizeof(uffdioAPI{})]byte
	_ [sizeofUffdioReg - unsafe.Sizeof(uffdioRegister{})]byte
	_ [sizeofUffdioWP - unsafe.Sizeof(uffdioWriteprotect{})]byte
)

// scanBatch is the page_region buffer capacity; a variable so tests can
// force walk_end resumption.
var scanBatch = 1024

// pagemapScan tracks the caller's own memory with userfaultfd async
// write-protection: a write to a protected page is resolved by the kernel
// without a handler and leaves the page "written"; PAGEMAP_SCAN with
// WP_MATCHING reports written pages and re-protects them atomically under
// the mmap read lock (no read/clear race, unlike soft-dirty).
type pagemapScan struct {
	uffd       int
	pagemap    *os.File
	start, end uintptr
	mu         sync.Mutex
	buf        []pageRegion
	last       int          // regions of the last collection (under mu), as in ldt
	calls      atomic.Int64 // PAGEMAP_SCAN ioctls
	ns         atomic.Int64 // inside them
}

func ioctlPtr(fd int, req uintptr, arg unsafe.Pointer) (uintptr, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
	if errno != 0 {
		return 0, errno
	}
	return r, nil
}

func newUffd() (int, error) {
	fd, _, errno := unix.Syscall(unix.SYS_USERFAULTFD, unix.O_CLOEXEC|unix.O_NONBLOCK, 0, 0)
	if errno == unix.EPERM {
		// vm.unprivileged_userfaultfd=0 without CAP_SYS_PTRACE: user-mode
		// faults are all async write faults need, so ask for those only.
		fd, _, errno = unix.Syscall(unix.SYS_USERFAULTFD, unix.O_CLOEXEC|unix.O_NONBLOCK|uffdUserModeOnly, 0, 0)
	}
	if errno != 0 {
		return -1, errno
	}
	return int(fd), nil
}

// uffdFeatures asks the kernel which features a fresh userfaultfd offers.
// UFFDIO_API can be issued once per fd, so the probe uses its own fd.
func uffdFeatures() (uint64, error) {
	fd, err := newUffd()
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	api := uffdioAPI{API: uffdAPI}
	if _, err := ioctlPtr(fd, iocUffdioAPI, unsafe.Pointer(&api)); err != nil {
		return 0, err
	}
	return api.Features, nil
}

func openPagemapScan(name string, pid int, start, end uintptr) (Tracker, error) {
	if pid != 0 && pid != os.Getpid() {
		return nil, fmt.Errorf("tracker %s: %w: it tracks only the calling process (pid 0), because its write-protection needs a userfaultfd registered from inside the tracked process", name, ErrUnsupported)
	}
	feats, err := uffdFeatures()
	if errors.Is(err, unix.ENOSYS) {
		return nil, fmt.Errorf("tracker %s: %w: no userfaultfd (CONFIG_USERFAULTFD off)", name, ErrUnsupported)
	}
	if err != nil {
		return nil, fmt.Errorf("tracker %s: userfaultfd: %w", name, err)
	}
	if feats&uffdFeatureWPAsync == 0 {
		return nil, fmt.Errorf("tracker %s: %w: userfaultfd lacks UFFD_FEATURE_WP_ASYNC (needs Linux 6.7+ with CONFIG_PTE_MARKER_UFFD_WP)", name, ErrUnsupported)
	}
	t := &pagemapScan{uffd: -1, start: start, end: end}
	if err := t.setup(feats); err != nil {
		t.Close()
		return nil, fmt.Errorf("tracker %s: %w", name, err)
	}
	return t, nil
}

func (t *pagemapScan) setup(feats uint64) error {
	fd, err := newUffd()
	if err != nil {
		return fmt.Errorf("userfaultfd: %w", err)
	}
	t.uffd = fd
	// WP_UNPOPULATED makes never-touched pages protected too (markers in
	// empty PTEs); WP_ASYNC implies it on current kernels, ask anyway.
	api := uffdioAPI{API: uffdAPI, Features: uffdFeatureWPAsync | feats&uffdFeatureWPUnpop}
	if _, err := ioctlPtr(fd, iocUffdioAPI, unsafe.Pointer(&api)); err != nil {
		return fmt.Errorf("UFFDIO_API: %w", err)
	}
	if t.start == t.end {
		return nil
	}
	rng := uffdioRange{Start: uint64(t.start), Len: uint64(t.end - t.start)}
	reg := uffdioRegister{Range: rng, Mode: uffdRegisterModeWP}
	if _, err := ioctlPtr(fd, iocUffdioRegister, unsafe.Pointer(&reg)); err != nil {
		return fmt.Errorf("UFFDIO_REGISTER MODE_WP [%#x,%#x) (range must be mapped anonymous/shmem memory): %w", t.start, t.end, err)
	}
	if reg.Ioctls&(1<<uffdioWriteprotectN) == 0 {
		return fmt.Errorf("%w: UFFDIO_WRITEPROTECT not available on [%#x,%#x)", ErrUnsupported, t.start, t.end)
	}
	// Start clean: protect everything so only later writes show.
	wp := uffdioWriteprotect{Range: rng, Mode: uffdWriteprotectWP}
	if _, err := ioctlPtr(fd, iocUffdioWriteprotect, unsafe.Pointer(&wp)); err != nil {
		return fmt.Errorf("UFFDIO_WRITEPROTECT: %w", err)
	}
	pm, err := os.Open("/proc/self/pagemap")
	if err != nil {
		return err
	}
	t.pagemap = pm
	return nil
}

func (t *pagemapScan) Name() string { return "pagemap-scan" }

func (t *pagemapScan) Collect(start, end uintptr, clear bool) ([]Region, error) {
	if err := checkRange(start, end); err != nil {
		return nil, fmt.Errorf("tracker pagemap-scan: %w", err)
	}
	if start < t.start || end > t.end {
		// Outside the registered range nothing is protected, so
		// everything would look written (or CHECK_WPASYNC fails).
		return nil, fmt.Errorf("tracker pagemap-scan: [%#x,%#x) outside the tracked range [%#x,%#x)", start, end, t.start, t.end)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.buf) != scanBatch {
		t.buf = make([]pageRegion, scanBatch)
	}
	// CHECK_WPASYNC makes the kernel fail with EPERM rather than report a
	// range that is not under async write-protection.
	flags := uint64(pmScanCheckWPAsync)
	if clear {
		flags |= pmScanWPMatching
	}
	out := make([]Region, 0, t.last)
	defer func() { t.last = len(out) }()
	for cur := start; cur < end; {
		arg := pmScanArg{
			Size:         sizeofPmScanArg,
			Flags:        flags,
			Start:        uint64(cur),
			End:          uint64(end),
			Vec:          uint64(uintptr(unsafe.Pointer(&t.buf[0]))),
			VecLen:       uint64(len(t.buf)),
			CategoryMask: pageIsWritten,
			ReturnMask:   pageIsWritten,
		}
		var r uintptr
		var errno unix.Errno
		t.calls.Add(1)
		ctlErr := func() error {
			rc, err := t.pagemap.SyscallConn()
			if err != nil {
				return err
			}
			return rc.Control(func(fd uintptr) {
				t0 := time.Now()
				r, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, iocPagemapScan, uintptr(unsafe.Pointer(&arg)))
				t.ns.Add(time.Since(t0).Nanoseconds())
			})
		}()
		runtime.KeepAlive(t.buf)
		if ctlErr != nil {
			return nil, fmt.Errorf("tracker pagemap-scan: %w", ctlErr)
		}
		if errno != 0 {
			return nil, fmt.Errorf("tracker pagemap-scan: PAGEMAP_SCAN [%#x,%#x): %w", cur, end, errno)
		}
		n := int(r)
		if n > len(t.buf) {
			return nil, fmt.Errorf("tracker pagemap-scan: kernel reported %d regions for a vec of %d", n, len(t.buf))
		}
		for _, pr := range t.buf[:n] {
			out = appendMerged(out, Region{uintptr(pr.Start), uintptr(pr.End)})
		}
		we := uintptr(arg.WalkEnd)
		if we <= cur || we > end {
			return nil, fmt.Errorf("tracker pagemap-scan: walk_end %#x outside (%#x,%#x]", we, cur, end)
		}
		cur = we
	}
	return out, nil
}

// Calls counts PAGEMAP_SCAN ioctls (UFFDIO_* setup calls are not collections).
func (t *pagemapScan) Calls() int64 { return t.calls.Load() }

// CallNS is the time spent inside those ioctls.
func (t *pagemapScan) CallNS() int64 { return t.ns.Load() }

func (t *pagemapScan) Close() error {
	var errs []error
	if t.pagemap != nil {
		errs = append(errs, t.pagemap.Close())
	}
	if t.uffd >= 0 {
		// Closing the userfaultfd unregisters and unprotects the range.
		errs = append(errs, unix.Close(t.uffd))
		t.uffd = -1
	}
	return errors.Join(errs...)
}
