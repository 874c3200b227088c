package main

// Checks for what the independent review of the series found (issue 7):
// each failed on the series before its fix.

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"ldtlab/guest/ldt"
	"ldtlab/guest/pagemap"
)

var reviewChecks = []check{
	{"uffd-move-keeps-state", checkUffdMove},
	{"efault-partial-vec", checkEfaultPartialVec},
	{"efault-readonly-arg", checkEfaultReadonlyArg},
	{"efault-readonly-counts", checkEfaultReadonlyCounts},
	{"mthp-batch-ignores-ldt", checkMTHPBatch},
	{"naive-needs-cap-sys-admin", checkNaiveNeedsCap},
	{"ebusy-second-tracker", checkSecondTracker},
}

func init() { checks = append(checks, reviewChecks...) }

// userfaultfd's UFFDIO_MOVE (include/uapi/linux/userfaultfd.h).
const (
	uffdAPI              = 0xAA
	uffdUserModeOnly     = 1
	uffdFeatureMove      = 1 << 16
	uffdRegisterMissing  = 1 << 0
	sizeofUffdioAPI      = 24
	sizeofUffdioRegister = 32
	sizeofUffdioMove     = 40
)

var (
	iocUffdioAPI      = ldt.IOWR(uffdAPI, 0x3F, sizeofUffdioAPI)
	iocUffdioRegister = ldt.IOWR(uffdAPI, 0x00, sizeofUffdioRegister)
	iocUffdioMove     = ldt.IOWR(uffdAPI, 0x05, sizeofUffdioMove)
)

type uffdioMove struct{ Dst, Src, Len, Mode, Move uint64 }

func uffdIoctl(fd int, req uintptr, arg unsafe.Pointer) error {
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg)); e != 0 {
		return e
	}
	return nil
}

// checkUffdMove: pages moved with UFFDIO_MOVE are reported at the
// destination whatever LDT state they carried: hardware Dirty, LDT-backup
// (MADV_FREE cleaned them after the write) or a swap entry's bit.
func checkUffdMove() error {
	const n = 6 // p0-1 MADV_FREE'd, p2-3 Dirty, p4-5 paged out
	return withSelf(n, func(f *ldt.File, src *mapping) error {
		dst, err := newMapping(n)
		if err != nil {
			return err
		}
		defer dst.close()

		fd, _, e := unix.Syscall(unix.SYS_USERFAULTFD, unix.O_CLOEXEC|unix.O_NONBLOCK|uffdUserModeOnly, 0, 0)
		if e != 0 {
			return fmt.Errorf("userfaultfd: %w", e)
		}
		defer unix.Close(int(fd))
		api := [3]uint64{uffdAPI, uffdFeatureMove, 0}
		if err := uffdIoctl(int(fd), iocUffdioAPI, unsafe.Pointer(&api)); err != nil {
			return fmt.Errorf("UFFDIO_API with UFFD_FEATURE_MOVE: %w", err)
		}
		reg := [4]uint64{uint64(dst.base), uint64(n * pg), uffdRegisterMissing, 0}
		if err := uffdIoctl(int(fd), iocUffdioRegister, unsafe.Pointer(&reg)); err != nil {
			return fmt.Errorf("UFFDIO_REGISTER: %w", err)
		}

		for p := range n {
			src.mem[p*pg] = byte(0xa0 + p)
		}
		if _, err := f.CollectAll(src.base, src.end(), ldt.Clear); err != nil {
			return fmt.Errorf("collect after the first writes: %w", err)
		}
		for p := range n { // written again: LDT-dirty from here on
			src.mem[p*pg+1] = byte(0xb0 + p)
		}
		if err := unix.Madvise(src.mem[0:2*pg], unix.MADV_FREE); err != nil {
			return fmt.Errorf("MADV_FREE: %w", err)
		}
		if err := unix.Madvise(src.mem[4*pg:6*pg], unix.MADV_PAGEOUT); err != nil {
			return fmt.Errorf("MADV_PAGEOUT: %w", err)
		}
		mv := uffdioMove{Dst: uint64(dst.base), Src: uint64(src.base), Len: n * pg}
		if err := uffdIoctl(int(fd), iocUffdioMove, unsafe.Pointer(&mv)); err != nil {
			return fmt.Errorf("UFFDIO_MOVE: %w (moved %d bytes)", err, int64(mv.Move))
		}
		if err := expect(f, src.base, src.end(), ldt.Clear, nil, "source after the move"); err != nil {
			return err
		}
		if err := expect(f, dst.base, dst.end(), ldt.Clear, pageRegions(uint64(dst.base), 0, n), "destination after the move"); err != nil {
			return err
		}
		for p := 2; p < n; p++ { // p0-1 may be discarded: they are lazyfree
			if got, want := dst.mem[p*pg+1], byte(0xb0+p); got != want {
				return fmt.Errorf("destination page %d holds %#x, want %#x", p, got, want)
			}
		}
		return nil
	})
}

// vecWithRoomFor maps room for exactly that many regions, followed by an
// address that was mapped a moment ago and is not any more.
func vecWithRoomFor(regions int) ([]byte, func(), error) {
	size := regions * ldt.SizeofRegion
	all, err := unix.Mmap(-1, 0, size+pg, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, nil, err
	}
	// unix.Munmap only takes whole mappings it made: unmap the tail raw.
	if _, _, e := unix.Syscall(unix.SYS_MUNMAP, uintptr(unsafe.Pointer(&all[size])), pg, 0); e != 0 {
		unix.Munmap(all)
		return nil, nil, fmt.Errorf("munmap the tail: %w", e)
	}
	return all[:size], func() {
		unix.Syscall(unix.SYS_MUNMAP, uintptr(unsafe.Pointer(&all[0])), uintptr(size), 0)
	}, nil
}

// reportedPages expands regions into the set of page numbers of m.
func reportedPages(m *mapping, rs []ldt.Region) map[int]bool {
	out := map[int]bool{}
	for _, r := range rs {
		for a := r.Start; a < r.End; a += pg {
			out[int((a-uint64(m.base))/pg)] = true
		}
	}
	return out
}

// checkEfaultPartialVec: a vec with room for 256 regions (the rest of it
// unmapped) and 1024 separate dirty pages. The collection may return a
// short count or EFAULT, but every page must be reported by it or by the
// next good collection.
func checkEfaultPartialVec() error {
	const regions = 1024
	return withSelf(2*regions, func(f *ldt.File, m *mapping) error {
		vec, unmap, err := vecWithRoomFor(256)
		if err != nil {
			return err
		}
		defer unmap()
		for p := 0; p < 2*regions; p += 2 {
			m.write(p)
		}
		arg := ldt.CollectArg{Size: f.ArgSize(), Flags: uint64(ldt.Clear), Start: uint64(m.base),
			End: uint64(m.end()), Vec: uint64(uintptr(unsafe.Pointer(&vec[0]))), VecLen: regions}
		got, err := f.CollectRaw(&arg)
		var first []ldt.Region
		switch {
		case errors.Is(err, unix.EFAULT):
			info("vec fault: EFAULT")
		case err != nil:
			return fmt.Errorf("collect into a short vec: %w", err)
		case got > 256:
			return fmt.Errorf("collect into a vec of 256 regions returned %d", got)
		default:
			info("vec fault: short count %d, walk_end %#x", got, arg.WalkEnd)
			first = unsafe.Slice((*ldt.Region)(unsafe.Pointer(&vec[0])), got)
			if got > 0 && arg.WalkEnd < first[got-1].End {
				return fmt.Errorf("short count %d but walk_end %#x is before the last region returned", got, arg.WalkEnd)
			}
		}
		rest, err := f.CollectAll(m.base, m.end(), ldt.Clear)
		if err != nil {
			return fmt.Errorf("good collection after the fault: %w", err)
		}
		seen := reportedPages(m, append(append([]ldt.Region{}, first...), rest...))
		var lost []int
		for p := 0; p < 2*regions; p += 2 {
			if !seen[p] {
				lost = append(lost, p)
			}
		}
		if len(lost) > 0 {
			return fmt.Errorf("%d of %d written pages never reported after the fault (first: page %d)", len(lost), regions, lost[0])
		}
		return nil
	})
}

// checkEfaultReadonlyArg: struct ldt_collect in a read-only page, so the
// kernel cannot write walk_end back. It must fail without clearing.
func checkEfaultReadonlyArg() error {
	const n = 64
	return withSelf(n, func(f *ldt.File, m *mapping) error {
		return collectEfaults(f, m, n, 0, 0, f.ArgSize(), "collect with a read-only argument")
	})
}

// checkEfaultReadonlyCounts: struct ldt_collect across a page boundary,
// walk_end in a writable page and the counts (visited, changed: 0026) in
// a read-only one. The kernel zeroes the counts before any walk (mm/ldt.c
// ldt_collect(), "put_user(0, &argp->visited)"): it must fail there with
// EFAULT and clear nothing.
func checkEfaultReadonlyCounts() error {
	const n = 16
	return withSelf(n, func(f *ldt.File, m *mapping) error {
		if f.ArgSize() != ldt.SizeofCollectArg {
			return skipf("the kernel has no counts (a series before 0026)")
		}
		off := pg - int(unsafe.Offsetof(ldt.CollectArg{}.Visited))
		return collectEfaults(f, m, n, off, pg, ldt.SizeofCollectArg, "collect with read-only counts")
	})
}

// collectEfaults puts a collect+clear of m's n written pages (struct
// ldt_collect of size bytes) at byte off of two fresh pages, makes them
// read-only from byte ro on, and collects: the call must fail with EFAULT
// and clear nothing, so the next collection reports every page.
func collectEfaults(f *ldt.File, m *mapping, n, off, ro int, size uint64, what string) error {
	two, err := unix.Mmap(-1, 0, 2*pg, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return err
	}
	defer unix.Munmap(two)
	vec := make([]ldt.Region, n)
	arg := (*ldt.CollectArg)(unsafe.Pointer(&two[off]))
	*arg = ldt.CollectArg{Size: size, Flags: uint64(ldt.Clear), Start: uint64(m.base),
		End: uint64(m.end()), Vec: uint64(uintptr(unsafe.Pointer(&vec[0]))), VecLen: uint64(n)}
	if err := unix.Mprotect(two[ro:], unix.PROT_READ); err != nil {
		return err
	}
	for p := range n {
		m.write(p)
	}
	_, err = f.CollectRaw(arg)
	if err := wantErrno(err, unix.EFAULT, what); err != nil {
		return err
	}
	return expect(f, m.base, m.end(), ldt.Clear, pageRegions(uint64(m.base), 0, n), "after the EFAULT")
}

// kpageflags of the page mapped at addr (needs root): the folio structure.
func pageFlags(addr uintptr) (pfn, flags uint64, err error) {
	e, flags, err := pagemap.Self(addr)
	if err != nil {
		return 0, 0, err
	}
	if !e.Present() {
		return 0, 0, fmt.Errorf("page %#x not present", addr)
	}
	return e.PFN(), flags, nil
}

// largeFolio says whether the n pages at addr are one large folio.
func largeFolio(addr uintptr, n int) (bool, error) {
	const head, tail = pagemap.KPFCompoundHead, pagemap.KPFCompoundTail
	pfn0, f0, err := pageFlags(addr)
	if err != nil {
		return false, err
	}
	if f0&head == 0 {
		return false, nil
	}
	for i := 1; i < n; i++ {
		pfn, f, err := pageFlags(addr + uintptr(i)*pg)
		if err != nil {
			return false, err
		}
		if f&tail == 0 || pfn != pfn0+uint64(i) {
			return false, nil
		}
	}
	return true, nil
}

// checkMTHPBatch: entries of one 64 KiB mTHP that differ only in LDT state
// are batched as in a kernel without LDT, so MADV_COLD keeps the folio
// whole (as the vanilla kernel does: its batch ignores Dirty) instead of
// splitting it; and the write is still reported.
func checkMTHPBatch() error {
	const n = 16
	return mthp64K(1, func(f *ldt.File, mem []byte) error {
		base := uintptr(unsafe.Pointer(&mem[0]))
		if _, err := f.CollectAll(base, base+n*pg, ldt.Clear); err != nil {
			return err
		}
		mem[5*pg] = 2 // one entry Dirty, the others OS-backup only
		if err := unix.Madvise(mem, unix.MADV_COLD); err != nil {
			return fmt.Errorf("MADV_COLD: %w", err)
		}
		ok, err := largeFolio(base, n)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("MADV_COLD split the 64 KiB folio: its entries differed only in LDT state")
		}
		return expect(f, base, base+n*pg, ldt.Clear, pageRegions(uint64(base), 5, 6), "after MADV_COLD")
	})
}

// checkNaiveNeedsCap: the negative control makes the kernel lose data, so
// an unprivileged process may not use it, not even on itself.
func checkNaiveNeedsCap() error {
	if os.Getuid() != 0 {
		return fmt.Errorf("must run as root (to start the uid 65534 helper)")
	}
	s, err := runUnprivileged("naive-unpriv", nil)
	if err != nil {
		return err
	}
	if !strings.Contains(s, "plain ok\n") {
		return fmt.Errorf("unprivileged collect on itself should work: %q", strings.TrimSpace(s))
	}
	if !strings.Contains(s, "naive EPERM\n") {
		return fmt.Errorf("unprivileged LDT_NAIVE: %q, want EPERM", strings.TrimSpace(s))
	}
	return nil
}

// naiveUnprivChild runs as uid 65534: attach to itself, collect without and
// with LDT_NAIVE, print both outcomes.
func naiveUnprivChild() int {
	f, err := ldt.Open()
	if err != nil {
		fmt.Println("open", err)
		return 0
	}
	defer f.Close()
	if err := f.Attach(0); err != nil {
		fmt.Println("attach", err)
		return 0
	}
	m, err := newMapping(4)
	if err != nil {
		fmt.Println("mmap", err)
		return 0
	}
	defer m.close()
	m.write(1)
	for _, c := range []struct {
		name  string
		flags ldt.Flags
	}{{"plain", ldt.Clear}, {"naive", ldt.Naive | ldt.Clear}} {
		_, err := f.CollectAll(m.base, m.end(), c.flags)
		var errno unix.Errno
		switch {
		case err == nil:
			fmt.Println(c.name, "ok")
		case errors.As(err, &errno):
			fmt.Println(c.name, unix.ErrnoName(errno))
		default:
			fmt.Println(c.name, strconv.Quote(err.Error()))
		}
	}
	return 0
}

// checkSecondTracker: a second file attaching to an address space that is
// already tracked gets EBUSY; once the first is closed, a new one attaches.
func checkSecondTracker() error {
	first, err := ldt.Open()
	if err != nil {
		return err
	}
	defer first.Close()
	if err := first.Attach(0); err != nil {
		return fmt.Errorf("first tracker: %w", err)
	}
	second, err := ldt.Open()
	if err != nil {
		return err
	}
	defer second.Close()
	if err := wantErrno(second.Attach(0), unix.EBUSY, "second tracker of the same mm"); err != nil {
		return err
	}
	first.Close()
	third, err := ldt.Open()
	if err != nil {
		return err
	}
	defer third.Close()
	if err := third.Attach(0); err != nil {
		return fmt.Errorf("attach after the first tracker closed: %w", err)
	}
	return nil
}
