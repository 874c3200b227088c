package fuzz

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"

	"ldtlab/guest/ldt"
)

// A co-tracker: userfaultfd async write-protection and PAGEMAP_SCAN used
// by "someone else" in the tracked process while the tracker under test
// runs (row 16: D moves to SAVED_DIRTY under the write-protection).

const (
	uffdAPI            = 0xAA
	uffdFeatureWPUnpop = 1 << 13
	uffdFeatureWPAsync = 1 << 15
	uffdRegisterWP     = 1 << 1
	uffdWPModeWP       = 1 << 0
	pageIsWritten      = 1 << 1
	pmScanWPMatching   = 1 << 0
	pmScanCheckWPAsync = 1 << 1
)

var (
	iocUffdAPI      = ldt.IOWR(uffdAPI, 0x3F, 24)
	iocUffdRegister = ldt.IOWR(uffdAPI, 0x00, 32)
	iocUffdWP       = ldt.IOWR(uffdAPI, 0x06, 24)
	iocPagemapScan  = ldt.IOWR('f', 16, 96)
)

type pmScanArg struct {
	Size, Flags, Start, End, WalkEnd, Vec, VecLen, MaxPages       uint64
	CategoryInverted, CategoryMask, CategoryAnyofMask, ReturnMask uint64
}

var _ [96 - unsafe.Sizeof(pmScanArg{})]byte

func ioctl(fd int, req uintptr, arg unsafe.Pointer) error {
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg)); e != 0 {
		return e
	}
	return nil
}

// uffdRegion registers r with the co-tracker's userfaultfd (once).
func (e *executor) uffdRegion(r *region) error {
	if r.noUffd {
		return errors.New("registration refused before")
	}
	if e.uffd < 0 {
		fd, _, errno := unix.Syscall(unix.SYS_USERFAULTFD, unix.O_CLOEXEC|unix.O_NONBLOCK, 0, 0)
		if errno != 0 {
			return fmt.Errorf("userfaultfd: %w", errno)
		}
		api := [3]uint64{uffdAPI, uffdFeatureWPAsync | uffdFeatureWPUnpop, 0}
		if err := ioctl(int(fd), iocUffdAPI, unsafe.Pointer(&api)); err != nil {
			unix.Close(int(fd))
			return fmt.Errorf("UFFDIO_API: %w", err)
		}
		e.uffd = int(fd)
	}
	if r.uffd {
		return nil
	}
	reg := [4]uint64{uint64(r.base), uint64(r.n * pg), uffdRegisterWP, 0}
	if err := ioctl(e.uffd, iocUffdRegister, unsafe.Pointer(&reg)); err != nil {
		r.noUffd = true
		return fmt.Errorf("UFFDIO_REGISTER: %w", err)
	}
	r.uffd = true
	return nil
}

func (e *executor) uffdWP(r *region, p, n int, on bool) {
	if err := e.uffdRegion(r); err != nil {
		e.failed(OpUffdWP, err)
		return
	}
	mode := uint64(0)
	if on {
		mode = uffdWPModeWP
	}
	e.zapBlocks(r, p, n, true)
	wp := [3]uint64{uint64(r.base + uintptr(p)*pg), uint64(n * pg), mode}
	if err := ioctl(e.uffd, iocUffdWP, unsafe.Pointer(&wp)); err != nil {
		e.failed(OpUffdWP, err)
		return
	}
	if on {
		e.done("uffd-wp on")
	} else {
		e.done("uffd-wp off")
	}
}

// pmScan: PAGEMAP_SCAN with WP_MATCHING over r (write-protects every
// written page again, atomically).
func (e *executor) pmScan(r *region) {
	if err := e.uffdRegion(r); err != nil {
		e.failed(OpPMScan, err)
		return
	}
	f, err := os.Open("/proc/self/pagemap")
	if err != nil {
		e.failed(OpPMScan, err)
		return
	}
	defer f.Close()
	e.zapBlocks(r, 0, r.n, true)
	vec := make([][3]uint64, 512)
	arg := pmScanArg{Size: 96, Flags: pmScanWPMatching | pmScanCheckWPAsync, Start: uint64(r.base), End: uint64(r.end()),
		Vec: uint64(uintptr(unsafe.Pointer(&vec[0]))), VecLen: uint64(len(vec)), CategoryMask: pageIsWritten, ReturnMask: pageIsWritten}
	if err := ioctl(int(f.Fd()), iocPagemapScan, unsafe.Pointer(&arg)); err != nil {
		e.failed(OpPMScan, err)
		return
	}
	e.done(OpPMScan)
}
