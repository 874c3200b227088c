package main

// Checks that run lines of the series coverage never ran
// (docs/coverage.reasons, "scenario to write"). Each says which kernel
// lines it runs and fails if they lose or invent a report.

import (
	"errors"
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"

	"ldtlab/guest/kio"
	"ldtlab/guest/ldt"
	"ldtlab/guest/pagemap"
)

var coverageChecks = []check{
	{"device-private-evict", checkDevicePrivateEvict},
	{"device-exclusive-restore", checkDeviceExclusiveRestore},
	{"uffd-move-os-dirty", checkUffdMoveOSDirty},
	{"uffd-move-zeropage", checkUffdMoveZeropage},
	{"small-vec-ring", checkSmallVecRing},
	{"small-vec-thp", checkSmallVecTHP},
}

func init() { checks = append(checks, coverageChecks...) }

// presentAgain: are the n pages at addr present (mapped to system memory)?
func presentAgain(addr uintptr, n int, when string) error {
	for p := range n {
		e, _, err := pagemap.Self(addr + uintptr(p)*pg)
		if err != nil {
			return err
		}
		if !e.Present() {
			return fmt.Errorf("page %d not present %s (pagemap %#x)", p, when, uint64(e))
		}
	}
	return nil
}

// writtenIntact: does every page p of pages still hold what m.write(p) put
// there once (the moves and copies under test kept the data)?
func writtenIntact(m *mapping, pages ...int) error {
	for _, p := range pages {
		if got := m.mem[p*pg+p%pg]; got != 1 {
			return fmt.Errorf("page %d holds %d where it was written once", p, got)
		}
	}
	return nil
}

// checkDevicePrivateEvict: p0-3 written after the initial clear, p4-5
// written and collected before, all six migrated to the device; closing
// the device file evicts them back to system memory (dmirror_fops_release()
// -> migrate_device_range() -> try_to_migrate_one()'s device-private
// branch, mm/rmap.c "if (pte_swp_ldt_dirty(pteval))", then
// remove_migration_pte()'s "if (pte_swp_ldt_dirty(old_pte)) pte =
// pte_mkldt_dirty(pte)" in mm/migrate.c). The evicted entries are new and
// clean: only the LDT bit carried through the device-private and the
// migration entry says p0-3 were written. Dropping it fails "after the
// eviction" with p0-3 missing; setting it on every entry fails with p4-5.
func checkDevicePrivateEvict() error {
	const n = 6
	return withSelf(n, func(f *ldt.File, m *mapping) error {
		b := uint64(m.base)
		m.write(4, 5)
		if err := expect(f, m.base, m.end(), ldt.Clear, pageRegions(b, 4, 6), "p4-5 written before the migration"); err != nil {
			return err
		}
		m.write(0, 1, 2, 3)
		dev, err := hmmMigrateToDevice(m.base, n)
		if err != nil {
			return err
		}
		if err := dev.Close(); err != nil {
			return fmt.Errorf("close %s (evicts the device memory): %w", hmmDevice, err)
		}
		if err := presentAgain(m.base, n, "after the device file was closed"); err != nil {
			return err
		}
		// The negative control (hardware Dirty only, nothing cleared)
		// sees no written page: the report below comes from LDT's bit.
		if err := expect(f, m.base, m.end(), ldt.Naive, nil, "LDT_NAIVE after the eviction"); err != nil {
			return err
		}
		if err := expect(f, m.base, m.end(), ldt.Clear, pageRegions(b, 0, 4), "after the eviction"); err != nil {
			return err
		}
		if err := expect(f, m.base, m.end(), 0, nil, "after the clear"); err != nil {
			return err
		}
		return writtenIntact(m, 0, 1, 2, 3, 4, 5)
	})
}

// HMM_DMIRROR_EXCLUSIVE (lib/test_hmm_uapi.h): make_device_exclusive_range()
// of the range, so the CPU's next access must take it back.
var iocHmmExclusive = ldt.IOWR('H', 0x05, unsafe.Sizeof(hmmCmd{}))

// checkDeviceExclusiveRestore: p0-2 written after the clear are made
// device-exclusive (page_make_device_exclusive_one(), mm/rmap.c "if
// (pte_ldt_dirty(pteval)) swp_pte = pte_swp_mkldt_dirty(swp_pte)"); p0-1
// are then made read-only, which rewrites their writable device-exclusive
// entries as readable ones (change_pte_range(), mm/mprotect.c, the
// device-exclusive branch's "if (pte_swp_ldt_dirty(oldpte))"); a CPU read
// of each page faults them back (restore_exclusive_pte(), mm/memory.c "if
// (pte_swp_ldt_dirty(orig_pte)) pte = pte_mkldt_dirty(pte)"). A readable
// entry is restored clean (mk_pte), so for p0-1 only the carried bit says
// they were written: dropping it at any of the three steps fails "after
// the restore". (p2's writable entry is restored Dirty by the kernel
// itself, pte_mkdirty, so p2 cannot show a loss.) p3 was written and
// collected before and is left alone: it must not be reported. It is
// outside the exclusive range because make_device_exclusive_range() takes
// every page of the range with GUP FOLL_WRITE, which marks its entry
// LDT-dirty (the device may write it): an unwritten page inside the range
// is reported by design.
func checkDeviceExclusiveRestore() error {
	const n, excl = 4, 3
	return withSelf(n, func(f *ldt.File, m *mapping) error {
		b := uint64(m.base)
		m.write(3)
		if err := expect(f, m.base, m.end(), ldt.Clear, pageRegions(b, 3, 4), "p3 written before"); err != nil {
			return err
		}
		m.write(0, 1, 2)
		fd, err := unix.Open(hmmDevice, unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("needs lib/test_hmm (CONFIG_TEST_HMM): %w", err)
		}
		defer unix.Close(fd)
		buf := make([]byte, excl*pg)
		cmd := hmmCmd{Addr: uint64(m.base), Ptr: uint64(uintptr(unsafe.Pointer(&buf[0]))), Npages: excl}
		_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), iocHmmExclusive, uintptr(unsafe.Pointer(&cmd)))
		runtime.KeepAlive(buf)
		if e != 0 {
			return fmt.Errorf("HMM_DMIRROR_EXCLUSIVE: %w", e)
		}
		if cmd.Cpages != excl {
			return fmt.Errorf("HMM_DMIRROR_EXCLUSIVE: %d of %d pages", cmd.Cpages, excl)
		}
		// onDevice: non-present, swap-like entries, which device-exclusive
		// entries are as well.
		if err := onDevice(m.base, excl, "after HMM_DMIRROR_EXCLUSIVE"); err != nil {
			return fmt.Errorf("not device-exclusive: %w", err)
		}
		if err := unix.Mprotect(m.mem[:2*pg], unix.PROT_READ); err != nil {
			return fmt.Errorf("mprotect: %w", err)
		}
		if err := onDevice(m.base, excl, "after mprotect(PROT_READ) of p0-1"); err != nil {
			return fmt.Errorf("not device-exclusive: %w", err)
		}
		if err := writtenIntact(m, 0, 1, 2); err != nil { // the CPU reads restore them
			return err
		}
		if err := presentAgain(m.base, n, "after the CPU reads"); err != nil {
			return err
		}
		// The negative control (hardware Dirty only, nothing cleared)
		// sees p2 alone: p0-1 are reported below by LDT's bit only.
		if err := expect(f, m.base, m.end(), ldt.Naive, pageRegions(b, 2, 3), "LDT_NAIVE after the restore"); err != nil {
			return err
		}
		if err := expect(f, m.base, m.end(), ldt.Clear, pageRegions(b, 0, excl), "after the restore"); err != nil {
			return err
		}
		return expect(f, m.base, m.end(), 0, nil, "after the clear")
	})
}

// uffdForMove opens a userfaultfd with UFFD_FEATURE_MOVE and registers m
// (UFFDIO_MOVE's destination must be registered).
func uffdForMove(m *mapping) (int, error) {
	fd, _, e := unix.Syscall(unix.SYS_USERFAULTFD, unix.O_CLOEXEC|unix.O_NONBLOCK|uffdUserModeOnly, 0, 0)
	if e != 0 {
		return -1, fmt.Errorf("userfaultfd: %w", e)
	}
	api := [3]uint64{uffdAPI, uffdFeatureMove, 0}
	if err := uffdIoctl(int(fd), iocUffdioAPI, unsafe.Pointer(&api)); err != nil {
		unix.Close(int(fd))
		return -1, fmt.Errorf("UFFDIO_API with UFFD_FEATURE_MOVE: %w", err)
	}
	reg := [4]uint64{uint64(m.base), uint64(m.n * pg), uffdRegisterMissing, 0}
	if err := uffdIoctl(int(fd), iocUffdioRegister, unsafe.Pointer(&reg)); err != nil {
		unix.Close(int(fd))
		return -1, fmt.Errorf("UFFDIO_REGISTER: %w", err)
	}
	return int(fd), nil
}

// uffdMovePage moves page p of src to page p of dst.
func uffdMovePage(fd int, dst, src *mapping, p int) error {
	mv := uffdioMove{Dst: dst.addr(p), Src: src.addr(p), Len: pg}
	if err := uffdIoctl(fd, iocUffdioMove, unsafe.Pointer(&mv)); err != nil {
		return fmt.Errorf("UFFDIO_MOVE: %w (moved %d bytes)", err, int64(mv.Move))
	}
	return nil
}

// withUffdMove runs a check with src tracked (withSelf) and a destination
// mapping of as many pages registered for UFFDIO_MOVE.
func withUffdMove(n int, check func(f *ldt.File, src, dst *mapping, fd int) error) error {
	return withSelf(n, func(f *ldt.File, src *mapping) error {
		dst, err := newMapping(n)
		if err != nil {
			return err
		}
		defer dst.close()
		fd, err := uffdForMove(dst)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return check(f, src, dst, fd)
	})
}

// checkUffdMoveOSDirty: a page written and then collected with clear is
// Dirty for the OS only (OS-backup). UFFDIO_MOVE moves its folio
// (move_present_pte(), mm/userfaultfd.c "} else if
// (pte_dirty(orig_src_pte)) { orig_dst_pte = pte_mkos_dirty(...)"): the
// tracker owes nothing, at either address. A move that took the OS's
// dirtiness for LDT's (Dirty or LDT-backup at the destination) fails
// "destination after the move". (Losing the OS-backup bit itself is not
// visible to LDT: the kernel's dirtiness of an anonymous folio.) A write
// at the destination afterwards is reported there alone.
func checkUffdMoveOSDirty() error {
	return withUffdMove(2, func(f *ldt.File, src, dst *mapping, fd int) error {
		src.write(0)
		if err := expect(f, src.base, src.end(), ldt.Clear, pageRegions(uint64(src.base), 0, 1), "the write before the move"); err != nil {
			return err
		}
		pfn, _, err := pageFlags(src.base)
		if err != nil {
			return err
		}
		if err := uffdMovePage(fd, dst, src, 0); err != nil {
			return err
		}
		// The folio itself moved: move_present_pte(), not a copy.
		if got, _, err := pageFlags(dst.base); err != nil || got != pfn {
			return fmt.Errorf("setup: destination page 0 is pfn %#x (%v), the moved one was %#x", got, err, pfn)
		}
		if err := expect(f, src.base, src.end(), 0, nil, "source after the move"); err != nil {
			return err
		}
		if err := expect(f, dst.base, dst.end(), 0, nil, "destination after the move"); err != nil {
			return err
		}
		if err := writtenIntact(dst, 0); err != nil {
			return err
		}
		dst.write(0)
		if err := expect(f, dst.base, dst.end(), ldt.Clear, pageRegions(uint64(dst.base), 0, 1), "destination written after the move"); err != nil {
			return err
		}
		return expect(f, src.base, src.end(), 0, nil, "source after the write at the destination")
	})
}

// checkUffdMoveZeropage: a page only read maps the shared zero page;
// collected, then moved with UFFDIO_MOVE (move_zeropage_pte(),
// mm/userfaultfd.c, its ptep_clear_flush() and "if
// (pte_ldt_backup(orig_src_pte))", not taken: nothing was written; the
// pagemap PFN shows the zero page moved, not a copy). Nothing is reported
// at either address; a write at the destination (a copy-on-write of the
// zero page there) is. A move that marked the zero page LDT-dirty fails
// "destination after the move".
func checkUffdMoveZeropage() error {
	return withUffdMove(2, func(f *ldt.File, src, dst *mapping, fd int) error {
		sink += src.mem[0]
		zero, _, err := pageFlags(src.base)
		if err != nil {
			return err
		}
		if err := expect(f, src.base, src.end(), ldt.Clear, nil, "a read of the zero page"); err != nil {
			return err
		}
		if err := uffdMovePage(fd, dst, src, 0); err != nil {
			return err
		}
		if got, _, err := pageFlags(dst.base); err != nil || got != zero {
			return fmt.Errorf("setup: destination page 0 is pfn %#x (%v), want the zero page's %#x", got, err, zero)
		}
		if e, _, err := pagemap.Self(src.base); err != nil || e.Present() || e.Swapped() {
			return fmt.Errorf("setup: source page 0 still mapped after the move (pagemap %#x, %v)", uint64(e), err)
		}
		if err := expect(f, src.base, src.end(), 0, nil, "source after the move"); err != nil {
			return err
		}
		if err := expect(f, dst.base, dst.end(), 0, nil, "destination after the move"); err != nil {
			return err
		}
		dst.write(0)
		if err := expect(f, dst.base, dst.end(), ldt.Clear, pageRegions(uint64(dst.base), 0, 1), "destination written after the move"); err != nil {
			return err
		}
		return expect(f, src.base, src.end(), 0, nil, "source after the write at the destination")
	})
}

// collectOne makes one collection of [start,end) with vec_len 1 and LDT_CLEAR
// and wants exactly region want and walk_end wantEnd back.
func collectOne(f *ldt.File, start, end uintptr, want ldt.Region, wantEnd uintptr, what string) error {
	vec := make([]ldt.Region, 1)
	n, we, err := f.Collect(start, end, ldt.Clear, vec)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if n != 1 || vec[0] != want || we != wantEnd {
		return fmt.Errorf("%s: %d regions %s, walk_end %#x; want %s, walk_end %#x", what, n,
			fmtRegions(uint64(start), vec[:n]), we, fmtRegions(uint64(start), []ldt.Region{want}), wantEnd)
	}
	return nil
}

// checkSmallVecRing: three anonymous pages, p0 written, right below an
// io_uring SQ/CQ ring mapping (VM_MIXEDMAP: reported whole at every
// collection). With vec_len 1 the first call fills the vec with p0, and the
// ring does not fit: ldt_test_walk() (mm/ldt.c "w->stop = start; return
// -ENOSPC;") stops the walk at the ring's start, which walk_end must say;
// the next call from there returns the ring. A walk that skipped the ring
// or ended elsewhere fails.
func checkSmallVecRing() error {
	f, err := ldt.Open()
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Attach(0); err != nil {
		return err
	}
	const below = 3
	var r *kio.Ring
	var low unsafe.Pointer
	// The ring cannot be placed: map the pages below it. A ring in a hole
	// too small stays open until the end (it fills the hole) and another
	// one is made.
	for try := 0; low == nil; try++ {
		if r, err = kio.NewRing(8); err != nil {
			return fmt.Errorf("no io_uring: %w", err)
		}
		defer r.Close()
		at := unsafe.Add(unsafe.Pointer(&r.Ring[0]), -below*pg)
		p, err := unix.MmapPtr(-1, 0, at, below*pg, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_FIXED_NOREPLACE)
		if err == nil && p != at {
			unix.MunmapPtr(p, below*pg)
			err = unix.EEXIST // MAP_FIXED_NOREPLACE taken as a hint
		}
		if errors.Is(err, unix.EEXIST) && try < 8 {
			continue
		}
		if err != nil {
			return fmt.Errorf("map %d pages below the ring at %p: %w", below, &r.Ring[0], err)
		}
		low = p
	}
	defer unix.MunmapPtr(low, below*pg)
	mem := unsafe.Slice((*byte)(low), below*pg)
	start := uintptr(low)
	ring := uintptr(unsafe.Pointer(&r.Ring[0]))
	end := ring + uintptr(len(r.Ring))
	info("small-vec-ring: pages [%#x,%#x), ring [%#x,%#x)", start, ring, ring, end)
	mem[0] = 1
	ringRegion := ldt.Region{Start: uint64(ring), End: uint64(end)}
	if err := collectOne(f, start, end, ldt.Region{Start: uint64(start), End: uint64(start + pg)}, ring, "first vec_len 1 call"); err != nil {
		return err
	}
	if err := collectOne(f, ring, end, ringRegion, end, "second vec_len 1 call, from walk_end"); err != nil {
		return err
	}
	// p0 was cleared by the first call; the ring is reported again.
	return expect(f, start, end, ldt.Clear, []ldt.Region{ringRegion}, "after both calls")
}

// checkSmallVecTHP: a written small page, a clean one, then a 2 MiB-aligned
// PMD-mapped THP written whole. With vec_len 1 the first call fills the vec
// with the small page and the THP does not fit: ldt_pmd_entry()'s full
// buffer branch (mm/ldt.c "if (!ldt_emit(w, addr, end - addr)) { w->stop =
// addr; ret = 1;") stops at the THP, which walk_end must say; the next call
// returns the THP whole. (The clean page keeps the two regions apart:
// adjacent ones merge in ldt_emit() and the buffer would not be full.)
func checkSmallVecTHP() error {
	all, err := unix.Mmap(-1, 0, 3*hpage, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return err
	}
	defer unix.Munmap(all)
	first := uintptr(unsafe.Pointer(&all[0]))
	off := int((first+2*pg+hpage-1)&^(hpage-1) - first)
	small, thp := all[off-2*pg:off], all[off:off+hpage]
	if err := unix.Mprotect(all[off-2*pg:off+hpage], unix.PROT_READ|unix.PROT_WRITE); err != nil {
		return err
	}
	if err := unix.Madvise(small, unix.MADV_NOHUGEPAGE); err != nil {
		return fmt.Errorf("madvise: %w", err)
	}
	if err := unix.Madvise(thp, unix.MADV_HUGEPAGE); err != nil {
		return fmt.Errorf("MADV_HUGEPAGE: %w (THP enabled: %s)", err, thpSetting())
	}
	base := uintptr(unsafe.Pointer(&thp[0]))
	for i := 0; i < hpage; i += pg {
		thp[i] = 1
	}
	if kb, _ := anonHugeKB(base); kb < 2048 {
		cerr := unix.Madvise(thp, unix.MADV_COLLAPSE)
		if kb, err := anonHugeKB(base); err != nil || kb < 2048 {
			return fmt.Errorf("no THP backing the aligned 2 MiB region (AnonHugePages %d kB, %v; MADV_COLLAPSE: %v, THP enabled: %s)", kb, err, cerr, thpSetting())
		}
	}
	small[0] = 1
	f, err := ldt.Open()
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Attach(0); err != nil {
		return err
	}
	lo, end := base-2*pg, base+hpage
	thpRegion := ldt.Region{Start: uint64(base), End: uint64(end)}
	if err := collectOne(f, lo, end, ldt.Region{Start: uint64(lo), End: uint64(lo + pg)}, base, "first vec_len 1 call"); err != nil {
		return err
	}
	// The THP was not reported, so it is not cleared either.
	if err := expect(f, lo, end, 0, []ldt.Region{thpRegion}, "after the first call"); err != nil {
		return err
	}
	if kb, err := anonHugeKB(base); err != nil || kb < 2048 {
		return fmt.Errorf("setup: the THP was split before the second call (AnonHugePages %d kB, %v)", kb, err)
	}
	if err := collectOne(f, base, end, thpRegion, end, "second vec_len 1 call, from walk_end"); err != nil {
		return err
	}
	return expect(f, lo, end, 0, nil, "after both calls")
}
