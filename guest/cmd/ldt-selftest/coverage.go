package main

// Checks that run lines of the series coverage never ran
// (docs/coverage.reasons, "scenario to write"). Each says which kernel
// lines it runs and fails if they lose or invent a report.

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
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
	{"perf-ring-reported", checkPerfRingReported},
	{"small-vec-kept", checkSmallVecKept},
	{"swapoff-unuse", checkSwapoffUnuse},
	{"collapse-retract", checkCollapseRetract},
	{"split-zeropage", checkSplitZeropage},
	{"shared-mapped-swapped", checkSharedMappedSwapped},
	{"shared-mapped-resched", checkSharedMappedResched},
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
	f, err := attachedSelf()
	if err != nil {
		return err
	}
	defer f.Close()
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
	base, err := backTHP(thp)
	if err != nil {
		return err
	}
	small[0] = 1
	f, err := attachedSelf()
	if err != nil {
		return err
	}
	defer f.Close()
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

// backTHP makes the 2 MiB-aligned, 2 MiB long, read-write thp one PMD THP,
// every page of it holding 1 at its first byte; it returns its address.
func backTHP(thp []byte) (uintptr, error) {
	if err := unix.Madvise(thp, unix.MADV_HUGEPAGE); err != nil {
		return 0, fmt.Errorf("MADV_HUGEPAGE: %w (THP enabled: %s)", err, thpSetting())
	}
	base := uintptr(unsafe.Pointer(&thp[0]))
	for i := 0; i < hpage; i += pg {
		thp[i] = 1
	}
	if kb, _ := anonHugeKB(base); kb < 2048 {
		cerr := unix.Madvise(thp, unix.MADV_COLLAPSE)
		if kb, err := anonHugeKB(base); err != nil || kb < 2048 {
			return 0, fmt.Errorf("no THP backing the aligned 2 MiB region (AnonHugePages %d kB, %v; MADV_COLLAPSE: %v, THP enabled: %s)", kb, err, cerr, thpSetting())
		}
	}
	return base, nil
}

// checkSplitZeropage: a PMD THP, collected, then one of its pages written
// with zeroes and the folio split (debugfs split_huge_pages). The split
// maps the zero-filled page to the shared zero page and gives it
// LDT-backup from its migration entry (mm/migrate.c
// try_to_map_unused_to_zeropage(), row 5). The collection must report it
// through ldt_present()'s zero-page branch (mm/ldt.c "*newval = val &
// ~_PAGE_LDT_DIRTY") and clear it there: reported once, then not again.
// Dropping the LDT-backup at the remap misses the write; not clearing it
// reports the zero page forever.
func checkSplitZeropage() error {
	return withTHP(func(f *ldt.File, thp []byte, base, end uintptr) error {
		whole := []ldt.Region{{Start: uint64(base), End: uint64(end)}}
		if err := expect(f, base, end, ldt.Clear, whole, "the THP written before the attach"); err != nil {
			return err
		}
		const zp = 5
		thp[zp*pg] = 0
		if err := splitFolio(base, end); err != nil {
			return err
		}
		if kb, err := anonHugeKB(base); err != nil || kb != 0 {
			return fmt.Errorf("setup: the THP is not split (AnonHugePages %d kB, %v)", kb, err)
		}
		zeroPFN, err := zeroPagePFN()
		if err != nil {
			return fmt.Errorf("setup: the zero page: %w", err)
		}
		if got, _, err := pageFlags(base + zp*pg); err != nil || got != zeroPFN {
			return fmt.Errorf("setup: page %d is pfn %#x (%v) after the split, want the zero page's %#x", zp, got, err, zeroPFN)
		}
		// The PMD was dirty: every page of the folio is reported, p5 through
		// the zero page's LDT-backup alone.
		if err := expect(f, base, end, ldt.Clear, whole, "after the split"); err != nil {
			return err
		}
		if err := expect(f, base, end, 0, nil, "the collection after"); err != nil {
			return err
		}
		thp[zp*pg] = 1
		return expect(f, base, end, 0, pageRegions(uint64(base), zp, zp+1), "the zero page written again")
	})
}

// zeroPagePFN is the shared zero page's pfn: what a read of a page never
// written maps.
func zeroPagePFN() (uint64, error) {
	b, err := unix.Mmap(-1, 0, pg, unix.PROT_READ, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return 0, err
	}
	defer unix.Munmap(b)
	sink += b[0]
	pfn, _, err := pageFlags(uintptr(unsafe.Pointer(&b[0])))
	return pfn, err
}

// splitFolio splits the THPs of this process in [start,end) to small
// folios through debugfs (mm/huge_memory.c split_huge_pages_pid()).
func splitFolio(start, end uintptr) error {
	const knob = "/sys/kernel/debug/split_huge_pages"
	arg := fmt.Sprintf("%d,%#x,%#x", os.Getpid(), start, end)
	if err := os.WriteFile(knob, []byte(arg), 0); err != nil {
		return fmt.Errorf("setup: write %q to %s: %w", arg, knob, err)
	}
	return nil
}

// setKnob writes v to a sysfs knob; the function returned writes the old
// value back (the bracketed choice of a "always [never]" knob).
func setKnob(path, v string) (func(), error) {
	old, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	prev := strings.TrimSpace(string(old))
	if i, j := strings.IndexByte(prev, '['), strings.IndexByte(prev, ']'); i >= 0 && j > i {
		prev = prev[i+1 : j]
	}
	if err := os.WriteFile(path, []byte(v), 0); err != nil {
		return nil, fmt.Errorf("write %q to %s: %w", v, path, err)
	}
	return func() { os.WriteFile(path, []byte(prev), 0) }, nil
}

const (
	shmemEnabledKnob = "/sys/kernel/mm/transparent_hugepage/shmem_enabled"
	khugepagedSleep  = "/sys/kernel/mm/transparent_hugepage/khugepaged/scan_sleep_millisecs"
)

// memfdOf is a memfd of size bytes.
func memfdOf(name string, size int) (int, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC)
	if err != nil {
		return -1, fmt.Errorf("memfd_create: %w", err)
	}
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("ftruncate memfd: %w", err)
	}
	return fd, nil
}

// The perf ring: the user page and 2^2 data pages.
const perfRingPages = 1 + 4

// checkPerfRingReported: a software perf event of this thread (cpu-clock,
// sampling every 100 us) with its ring buffer mapped between two untouched
// anonymous pages. perf_mmap() (kernel/events/core.c) marks the mapping
// VM_LDT_KWRITE: the kernel writes the samples and the user page through
// its own mapping of the ring pages, so no user PTE sees them. Every
// collection, clearing or not, reports the whole ring mapping
// (ldt_vma_kwrite() in ldt_test_walk(), mm/ldt.c) and leaves its entries
// alone (ldt_clear_test_walk()); the negative control walks the ring's
// entries, which the CPU never wrote, and reports nothing. Without the
// flag a collection after the samples reports nothing ("after the
// samples" fails); the neighbours are reported only once written.
func checkPerfRingReported() error {
	f, err := attachedSelf()
	if err != nil {
		return err
	}
	defer f.Close()
	// below | ring | above, carved out of one reservation.
	all, err := unix.Mmap(-1, 0, (perfRingPages+2)*pg, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return err
	}
	defer unix.Munmap(all)
	lo := uintptr(unsafe.Pointer(&all[0]))
	hi := lo + uintptr(len(all))
	below, above := all[:pg], all[(perfRingPages+1)*pg:]
	for _, b := range [][]byte{below, above} {
		if err := unix.Mprotect(b, unix.PROT_READ|unix.PROT_WRITE); err != nil {
			return fmt.Errorf("mprotect: %w", err)
		}
	}
	// The event counts the thread that opens it: keep this goroutine on it.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	attr := unix.PerfEventAttr{
		Type:        unix.PERF_TYPE_SOFTWARE,
		Config:      unix.PERF_COUNT_SW_CPU_CLOCK,
		Sample:      100000, // ns of CPU time per sample
		Sample_type: unix.PERF_SAMPLE_IP | unix.PERF_SAMPLE_TID,
	}
	attr.Size = uint32(unsafe.Sizeof(attr))
	fd, err := unix.PerfEventOpen(&attr, 0, -1, -1, unix.PERF_FLAG_FD_CLOEXEC)
	if err != nil {
		paranoid, _ := os.ReadFile("/proc/sys/kernel/perf_event_paranoid")
		if errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) || errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("perf_event_open(PERF_TYPE_SOFTWARE, PERF_COUNT_SW_CPU_CLOCK, this thread): %w: not allowed or no software events (/proc/sys/kernel/perf_event_paranoid = %s; the check runs as root)", err, strings.TrimSpace(string(paranoid)))
		}
		return fmt.Errorf("perf_event_open: %w", err)
	}
	defer unix.Close(fd)
	ringAt := unsafe.Pointer(&all[pg])
	p, err := unix.MmapPtr(fd, 0, ringAt, perfRingPages*pg, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_FIXED)
	if err != nil {
		return fmt.Errorf("mmap the perf ring (%d pages): %w", perfRingPages, err)
	}
	if p != ringAt {
		return fmt.Errorf("setup: the perf ring mapped at %p, not %p", p, ringAt)
	}
	info("perf-ring-reported: below %#x, ring [%#x,%#x), above %#x", lo, lo+pg, lo+(perfRingPages+1)*pg, lo+(perfRingPages+1)*pg)
	b := uint64(lo)
	ring := pageRegions(b, 1, 1+perfRingPages)
	if err := expect(f, lo, hi, ldt.Clear, ring, "first collection"); err != nil {
		return err
	}
	// Burn CPU until the kernel has written samples (data_head moves).
	up := (*unix.PerfEventMmapPage)(p)
	spin := 0
	for deadline := time.Now().Add(5 * time.Second); atomic.LoadUint64(&up.Data_head) == 0; {
		if time.Now().After(deadline) {
			return fmt.Errorf("setup: no perf sample in the ring after 5 s (data_head 0)")
		}
		for i := 0; i < 100000; i++ {
			spin += i
		}
	}
	sink += byte(spin)
	head := atomic.LoadUint64(&up.Data_head)
	if err := unix.IoctlSetInt(fd, unix.PERF_EVENT_IOC_DISABLE, 0); err != nil {
		return fmt.Errorf("PERF_EVENT_IOC_DISABLE: %w", err)
	}
	info("perf-ring-reported: %d bytes of samples in the ring", head)
	// The negative control: the ring's own entries never saw a write.
	if err := expect(f, lo, hi, ldt.Naive, nil, "LDT_NAIVE after the samples"); err != nil {
		return err
	}
	if err := expect(f, lo, hi, ldt.Clear, ring, "after the samples"); err != nil {
		return err
	}
	sink += below[0] // a read is not a write
	above[0] = 1
	if err := expect(f, lo, hi, ldt.Clear, pageRegions(b, 1, 2+perfRingPages), "the page above the ring written"); err != nil {
		return err
	}
	if err := expect(f, lo, hi, 0, ring, "a collection without LDT_CLEAR"); err != nil {
		return err
	}
	return expect(f, lo, hi, ldt.Clear, ring, "one more collection")
}

// checkSmallVecKept: a memfd of six small folios (shmem_enabled=never)
// mapped MAP_SHARED twice: A alone in a 2 MiB-aligned block (its page
// table freed first, never touched after: no page table under it), and B,
// whose pages 0, 2 and 4 are registered as io_uring fixed buffers, then
// unregistered. The pin (pin_user_pages_fast() FOLL_WRITE ->
// gup_ldt_write_pinned() -> ldt_pages_write_pinned(), mm/ldt.c, 0022)
// walks the rmap of each pinned folio and keeps its page in every tracked
// shared mapping, A's unmapped ones included (ldt_pin_keep_one() ->
// ldt_entry_lost()): A keeps p0, p2, p4 and nothing else. A is then
// collected with vec_len 1 from walk_end: its PMD is none, so the walk
// calls ldt_pte_hole() -> ldt_lost_emit(), which emits the first kept
// page, finds the next one and stops with the vec full ("w->stop = next;
// return 1;"): walk_end is that next kept page; the call that emits p4
// walks on to the end. (Kept pages are kept apart by unpinned ones:
// adjacent pages would merge into one region in ldt_emit() and the vec
// would never be full.) The clear walk forgets each page reported (its
// folio is no longer pinned, ldt_lost_reported()), so the next collection
// reports nothing. Without 0022's keep nothing is reported; a full vec
// that skipped a page or stopped elsewhere fails too.
func checkSmallVecKept() error {
	return withSmallFolioMemfd("ldt-selftest-kept", smallMemfdPages, smallVecKept)
}

// smallMemfdPages is the size of small-vec-kept's and
// shared-mapped-swapped's memfds.
const smallMemfdPages = 6

// withSmallFolioMemfd runs check with this process tracked and a memfd
// of n pages in small folios (shmem_enabled=never meanwhile).
func withSmallFolioMemfd(name string, n int, check func(f *ldt.File, fd int) error) error {
	restore, err := setKnob(shmemEnabledKnob, "never")
	if err != nil {
		return fmt.Errorf("needs shmem THP control: %w", err)
	}
	defer restore()
	f, err := attachedSelf()
	if err != nil {
		return err
	}
	defer f.Close()
	fd, err := memfdOf(name, n*pg)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return check(f, fd)
}

func smallVecKept(f *ldt.File, fd int) error {
	const n = smallMemfdPages
	res, err := unix.Mmap(-1, 0, 3*hpage, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return err
	}
	defer unix.Munmap(res) // everything mapped below lies inside it
	first := uintptr(unsafe.Pointer(&res[0]))
	off := int((first+hpage-1)&^(hpage-1) - first)
	a := first + uintptr(off)
	// Unmapping the aligned block whole frees any page table under it
	// (free_pgtables() with the reservation's parts as floor and ceiling).
	if err := unix.MunmapPtr(unsafe.Pointer(&res[off]), hpage); err != nil {
		return fmt.Errorf("munmap: %w", err)
	}
	if p, err := unix.MmapPtr(fd, 0, unsafe.Pointer(&res[off]), n*pg, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_FIXED_NOREPLACE); err != nil || uintptr(p) != a {
		return fmt.Errorf("setup: map A at %#x: %p, %v", a, p, err)
	}
	if p, err := unix.MmapPtr(-1, 0, unsafe.Pointer(&res[off+n*pg]), hpage-n*pg, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE|unix.MAP_FIXED_NOREPLACE); err != nil || uintptr(p) != a+n*pg {
		return fmt.Errorf("setup: fill the rest of A's block: %p, %v", p, err)
	}
	mb, err := unix.Mmap(fd, 0, n*pg, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("map B: %w", err)
	}
	defer unix.Munmap(mb)
	pinned := []int{0, 2, 4}
	var bufs [][]byte
	for _, p := range pinned {
		bufs = append(bufs, mb[p*pg:(p+1)*pg])
	}
	unpin, err := pinBuffers(bufs)
	if err != nil {
		return err
	}
	defer unpin()
	bAddr := uintptr(unsafe.Pointer(&mb[0]))
	for _, p := range pinned {
		_, flags, err := pageFlags(bAddr + uintptr(p)*pg)
		if err != nil {
			return fmt.Errorf("setup: B page %d after the registration: %w", p, err)
		}
		if flags&(pagemap.KPFCompoundHead|pagemap.KPFCompoundTail) != 0 {
			return fmt.Errorf("setup: B page %d is part of a large folio (kpageflags %#x) with shmem_enabled=never", p, flags)
		}
	}
	if err := unpin(); err != nil {
		return err
	}
	es, err := pagemap.Read(0, a, n)
	if err != nil {
		return err
	}
	for p, e := range es {
		if e.Present() || e.Swapped() {
			return fmt.Errorf("setup: A page %d is mapped (pagemap %#x): A must stay untouched", p, uint64(e))
		}
	}
	end := a + n*pg
	info("small-vec-kept: A [%#x,%#x), B %#x", a, end, bAddr)
	if err := expect(f, a, end, 0, pageRegions(uint64(a), 0, 1, 2, 3, 4, 5), "A after the unregistration"); err != nil {
		return err
	}
	for i, p := range pinned {
		at, walkEnd := a+uintptr(p)*pg, end
		if i+1 < len(pinned) {
			walkEnd = a + uintptr(pinned[i+1])*pg
		}
		if err := collectOne(f, at, end, ldt.Region{Start: uint64(at), End: uint64(at + pg)}, walkEnd, fmt.Sprintf("vec_len 1 call %d, from walk_end", i)); err != nil {
			return err
		}
	}
	return expect(f, a, end, 0, nil, "after the kept pages were reported")
}

// swapDev is an active swap device of /proc/swaps.
type swapDev struct {
	name string
	prio int
}

func activeSwaps() ([]swapDev, error) {
	b, err := os.ReadFile("/proc/swaps")
	if err != nil {
		return nil, err
	}
	var out []swapDev
	for i, l := range strings.Split(string(b), "\n") {
		fs := strings.Fields(l)
		if i == 0 || len(fs) < 5 {
			continue
		}
		prio, err := strconv.Atoi(fs[4])
		if err != nil {
			return nil, fmt.Errorf("/proc/swaps: %q: %w", l, err)
		}
		out = append(out, swapDev{fs[0], prio})
	}
	return out, nil
}

func swapSyscall(nr uintptr, name string, flags int) error {
	p, err := unix.BytePtrFromString(name)
	if err != nil {
		return err
	}
	if _, _, e := unix.Syscall(nr, uintptr(unsafe.Pointer(p)), uintptr(flags), 0); e != 0 {
		return e
	}
	return nil
}

// swapOn enables d as it was: SWAP_FLAG_PREFER | prio for a priority
// given at swapon, none for a negative one (the kernel's own, which it
// hands out in decreasing order).
func swapOn(d swapDev) error {
	flags := 0
	if d.prio >= 0 {
		flags = 0x8000 | d.prio&0x7fff
	}
	if err := swapSyscall(unix.SYS_SWAPON, d.name, flags); err != nil {
		return fmt.Errorf("swapon %s (priority %d): %w", d.name, d.prio, err)
	}
	return nil
}

// swapCycle swaps every device of devs off, then on again with its
// priority, also when a swapoff fails; it checks /proc/swaps after.
func swapCycle(devs []swapDev) (err error) {
	var off []swapDev
	defer func() {
		sort.SliceStable(off, func(i, j int) bool { return off[i].prio > off[j].prio })
		for _, d := range off {
			if e := swapOn(d); e != nil && err == nil {
				err = e
			}
		}
		if err != nil {
			return
		}
		now, e := activeSwaps()
		if e != nil {
			err = e
			return
		}
		want := map[swapDev]bool{}
		for _, d := range devs {
			want[d] = true
		}
		for _, d := range now {
			delete(want, d)
		}
		if len(want) > 0 || len(now) != len(devs) {
			err = fmt.Errorf("swap not restored: /proc/swaps has %v, had %v", now, devs)
		}
	}()
	for _, d := range devs {
		if err := swapSyscall(unix.SYS_SWAPOFF, d.name, 0); err != nil {
			return fmt.Errorf("swapoff %s: %w", d.name, err)
		}
		off = append(off, d)
	}
	return nil
}

// pageOut swaps the pages of mem out with MADV_PAGEOUT and fails unless
// every one is a swap entry.
func pageOut(mem []byte) error {
	addr, n := uintptr(unsafe.Pointer(&mem[0])), len(mem)/pg
	var es []pagemap.Entry
	ok, err := pageOutUntil(mem, func() (bool, error) {
		var err error
		if es, err = pagemap.Read(0, addr, n); err != nil {
			return false, err
		}
		for _, e := range es {
			if !e.Swapped() || e.Present() {
				return false, nil
			}
		}
		return true, nil
	})
	if ok || err != nil {
		return err
	}
	for p, e := range es {
		if !e.Swapped() || e.Present() {
			return fmt.Errorf("setup: page %d not swapped out by MADV_PAGEOUT (pagemap %#x)", p, uint64(e))
		}
	}
	return nil
}

// pageOutUntil runs MADV_PAGEOUT over b from every CPU in turn (a folio
// still in another CPU's LRU batch cannot be isolated) until done says
// the pages are out, four rounds at most.
func pageOutUntil(b []byte, done func() (bool, error)) (bool, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var old unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		return false, err
	}
	defer unix.SchedSetaffinity(0, &old)
	for try := range 4 {
		for cpu := range runtime.NumCPU() {
			var set unix.CPUSet
			set.Set(cpu)
			if err := unix.SchedSetaffinity(0, &set); err != nil {
				return false, fmt.Errorf("sched_setaffinity %d: %w", cpu, err)
			}
			if err := unix.Madvise(b, unix.MADV_PAGEOUT); err != nil {
				return false, fmt.Errorf("MADV_PAGEOUT: %w", err)
			}
		}
		if ok, err := done(); ok || err != nil {
			return ok, err
		}
		time.Sleep(time.Duration(10*(try+1)) * time.Millisecond)
	}
	return false, nil
}

// checkSwapoffUnuse: eight anonymous pages written and collected, p1 and
// p4-5 written again, all swapped out (their swap entries carry LDT's bit
// for p1, p4, p5 only), then every active swap device swapped off, which
// maps each page back (unuse_pte(), mm/swapfile.c "if
// (pte_swp_ldt_dirty(old_pte)) new_pte = pte_mkldt_dirty(new_pte)"), and
// on again as it was. unuse_pte() makes a clean, old, read-only entry:
// only the carried bit says p1, p4, p5 were written. Dropping it fails
// "after swapoff" with them missing; setting it on every entry fails with
// the others. The negative control sees nothing: no hardware Dirty bit.
func checkSwapoffUnuse() error {
	devs, err := activeSwaps()
	if err != nil {
		return err
	}
	if len(devs) == 0 {
		return fmt.Errorf("no active swap device (/proc/swaps is empty): swapoff-unuse needs one (the lab guest has zram)")
	}
	const n = 8
	return withSelf(n, func(f *ldt.File, m *mapping) error {
		b := uint64(m.base)
		for p := range n {
			m.write(p) // no page left all zeros
		}
		if err := expect(f, m.base, m.end(), ldt.Clear, pageRegions(b, 0, n), "written before the pageout"); err != nil {
			return err
		}
		m.write(1, 4, 5)
		if err := pageOut(m.mem); err != nil {
			return err
		}
		info("swapoff-unuse: swapping off and on %v", devs)
		if err := swapCycle(devs); err != nil {
			return err
		}
		if err := presentAgain(m.base, n, "after swapoff"); err != nil {
			return err
		}
		if err := expect(f, m.base, m.end(), ldt.Naive, nil, "LDT_NAIVE after swapoff"); err != nil {
			return err
		}
		if err := expect(f, m.base, m.end(), ldt.Clear, pageRegions(b, 1, 2, 4, 6), "after swapoff"); err != nil {
			return err
		}
		if err := expect(f, m.base, m.end(), 0, nil, "after the clear"); err != nil {
			return err
		}
		for p := range n {
			want := byte(1)
			if p == 1 || p == 4 || p == 5 {
				want = 2
			}
			if got := m.mem[p*pg+p%pg]; got != want {
				return fmt.Errorf("page %d holds %d after swapoff, want %d", p, got, want)
			}
		}
		return nil
	})
}

// checkCollapseRetract: a memfd whose page cache holds one PMD-size THP
// (shmem_enabled=always), mapped MAP_SHARED at a 2 MiB boundary and
// written whole (a PMD mapping), then mprotect of its first page
// PROT_READ, which zaps the PMD (a file THP splits by unmapping), every
// page read while the VMA is split (PTEs: the VMA no longer covers the 2
// MiB), and mprotect back: the THP is mapped by 512 PTEs. After a
// collection p5 is written and MADV_COLLAPSE retracts the page table
// (hpage_collapse_scan_file() finds the THP: SCAN_PTE_MAPPED_HUGEPAGE ->
// collapse_pte_mapped_thp(mm, addr, true), mm/khugepaged.c): step 2 clears
// every PTE and sets ldt_dirty ("if (pte_ldt_dirty(ptent) ||
// pte_write(ptent))"), step 5 installs a clean PMD (set_huge_pmd(), no
// write fault) and collapse_ldt_mark_pmd() sets LDT's bit on it. The code
// owes the whole 2 MiB, not p5 alone: the new PMD has one bit, and any
// writable PTE counts as written (it may be written through a stale TLB
// entry until the flush), which every PTE of a writable shared shmem
// mapping is. So the collection after the collapse reports exactly the 2
// MiB; without the mark it reports nothing (p5's write lost with its PTE)
// and the negative control, which ignores LDT's bit, does. khugepaged is
// paused meanwhile: its own retract would race the check.
func checkCollapseRetract() error {
	return withP5OnPTEMappedShmemTHP(func(f *ldt.File, mem []byte, pfn0 uint64) error {
		base := uintptr(unsafe.Pointer(&mem[0]))
		end := base + hpage
		b := uint64(base)
		if err := unix.Madvise(mem, unix.MADV_COLLAPSE); err != nil {
			return fmt.Errorf("MADV_COLLAPSE: %w", err)
		}
		if kb, _ := pagemap.SmapsKB(base, "ShmemPmdMapped"); kb != 2048 {
			return fmt.Errorf("MADV_COLLAPSE did not map the THP by a PMD (ShmemPmdMapped %d kB)", kb)
		}
		if pfn, _, err := pageFlags(base); err != nil || pfn != pfn0 {
			return fmt.Errorf("setup: after MADV_COLLAPSE page 0 is pfn %#x (%v), the THP was %#x: not the retract path", pfn, err, pfn0)
		}
		if err := expect(f, base, end, ldt.Naive, nil, "LDT_NAIVE after the collapse"); err != nil {
			return err
		}
		whole := []ldt.Region{{Start: b, End: uint64(end)}}
		if err := expect(f, base, end, ldt.Clear, whole, "after MADV_COLLAPSE"); err != nil {
			return err
		}
		if err := expect(f, base, end, 0, nil, "after the clear"); err != nil {
			return err
		}
		if mem[5*pg+1] != 7 {
			return fmt.Errorf("p5 holds %d after the collapse, want 7", mem[5*pg+1])
		}
		mem[9*pg] = 2
		return expect(f, base, end, ldt.Clear, whole, "a write to the PMD-mapped THP")
	})
}

// withP5OnPTEMappedShmemTHP is the retract checks' setup: shmem_enabled
// always and khugepaged paused (the write wakes it for one pass: let that
// end first), a PTE-mapped shmem THP (pteMappedShmemTHP) under a tracker
// of this process, collected and cleared, then p5 written and reported
// alone. check gets the tracker, the mapping and the THP's first frame.
func withP5OnPTEMappedShmemTHP(check func(f *ldt.File, mem []byte, pfn0 uint64) error) error {
	restoreShmem, err := setKnob(shmemEnabledKnob, "always")
	if err != nil {
		return fmt.Errorf("needs shmem THP: %w", err)
	}
	defer restoreShmem()
	restoreKh, err := setKnob(khugepagedSleep, "3600000")
	if err != nil {
		return fmt.Errorf("pause khugepaged: %w", err)
	}
	defer restoreKh()
	time.Sleep(100 * time.Millisecond)
	mem, pfn0, release, err := pteMappedShmemTHP()
	if err != nil {
		return err
	}
	defer release()
	base := uintptr(unsafe.Pointer(&mem[0]))
	end := base + hpage
	f, err := attachedSelf()
	if err != nil {
		return err
	}
	defer f.Close()
	if err := expect(f, base, end, ldt.Clear, nil, "first collection (PTEs mapped by reads)"); err != nil {
		return err
	}
	mem[5*pg+1] = 7
	if err := expect(f, base, end, 0, pageRegions(uint64(base), 5, 6), "p5 written, PTE-mapped"); err != nil {
		return err
	}
	return check(f, mem, pfn0)
}

// pteMappedShmemTHP maps a memfd whose page cache holds one PMD-size THP
// (the caller sets shmem_enabled=always) at a 2 MiB boundary, MAP_SHARED,
// every page written, and leaves the THP mapped by 512 PTEs: mprotect of
// its first page PROT_READ zaps the PMD (a file THP splits by unmapping),
// every page is read while the VMA is split (PTEs: no VMA covers the 2 MiB)
// and the mprotect is undone. It returns the mapping, the THP's first
// frame and what unmaps it.
func pteMappedShmemTHP() ([]byte, uint64, func(), error) {
	const n = hpage / pg
	fd, err := memfdOf("ldt-selftest-retract", hpage)
	if err != nil {
		return nil, 0, nil, err
	}
	res, err := unix.Mmap(-1, 0, 2*hpage, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		unix.Close(fd)
		return nil, 0, nil, err
	}
	release := func() {
		unix.Munmap(res)
		unix.Close(fd)
	}
	fail := func(err error) ([]byte, uint64, func(), error) {
		release()
		return nil, 0, nil, err
	}
	first := uintptr(unsafe.Pointer(&res[0]))
	off := int((first+hpage-1)&^(hpage-1) - first)
	base := first + uintptr(off)
	if p, err := unix.MmapPtr(fd, 0, unsafe.Pointer(&res[off]), hpage, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_FIXED); err != nil || uintptr(p) != base {
		return fail(fmt.Errorf("setup: map the memfd at %#x: %p, %v", base, p, err))
	}
	mem := res[off : off+hpage]
	for p := range n {
		mem[p*pg] = 1
	}
	pmdKB := func() int { kb, _ := pagemap.SmapsKB(base, "ShmemPmdMapped"); return kb }
	if pmdKB() < 2048 {
		cerr := unix.Madvise(mem, unix.MADV_COLLAPSE)
		if kb := pmdKB(); kb < 2048 {
			return fail(fmt.Errorf("setup: no PMD-mapped shmem THP (ShmemPmdMapped %d kB, MADV_COLLAPSE: %v)", kb, cerr))
		}
	}
	if err := unix.Mprotect(mem[:pg], unix.PROT_READ); err != nil {
		return fail(fmt.Errorf("mprotect PROT_READ: %w", err))
	}
	for p := range n {
		sink += mem[p*pg] // read faults map PTEs: no VMA covers the 2 MiB now
	}
	if err := unix.Mprotect(mem[:pg], unix.PROT_READ|unix.PROT_WRITE); err != nil {
		return fail(fmt.Errorf("mprotect back: %w", err))
	}
	pfn0, flags, err := pageFlags(base)
	if err != nil {
		return fail(err)
	}
	if kb := pmdKB(); kb != 0 {
		return fail(fmt.Errorf("setup: the THP is still PMD-mapped after the mprotect split (ShmemPmdMapped %d kB)", kb))
	}
	if ok, err := largeFolio(base, n); err != nil || !ok || flags&pagemap.KPFTHP == 0 {
		return fail(fmt.Errorf("setup: the 512 PTEs do not map one THP (large=%v, kpageflags %#x, %v)", ok, flags, err))
	}
	return mem, pfn0, release, nil
}

// checkSharedMappedSwapped: a shared mapping made in a tracked mm keeps
// the pages of folios pinned at that moment (ldt_shared_mapped(), 0022,
// called from mmap_region()), found by walking the file's page cache; a
// shmem page swapped out is a value entry there, which the walk must step
// over ("xa_is_value(folio)) continue;") and go on. A memfd of six small
// folios (shmem_enabled=never) is mapped as A and written whole; p3 is
// registered as an io_uring fixed buffer (pinned), and p1 swapped out
// through A (MADV_PAGEOUT; A's smaps shows the swap). Then B, a second
// shared mapping of the memfd, is made: its walk meets p1's value entry
// before p3's pinned folio. B maps nothing yet, so its collection reports
// exactly the kept p3; after the unpin a clearing collection reports p3
// once more and the next nothing; p1 comes back from swap intact. Before
// 0022 (no keep) nothing is reported; a walk that stopped at the value
// entry would miss p3.
func checkSharedMappedSwapped() error {
	return withSmallFolioMemfd("ldt-selftest-swapped", smallMemfdPages, sharedMappedSwapped)
}

func sharedMappedSwapped(f *ldt.File, fd int) error {
	const n = smallMemfdPages
	a, err := unix.Mmap(fd, 0, n*pg, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("map A: %w", err)
	}
	defer unix.Munmap(a)
	for p := range n {
		a[p*pg] = byte(p + 1)
	}
	unpin, err := pinBuffers([][]byte{a[3*pg : 4*pg]})
	if err != nil {
		return err
	}
	defer unpin()
	if err := shmemPageOut(a, 1); err != nil {
		return err
	}
	b, err := unix.Mmap(fd, 0, n*pg, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("map B: %w", err)
	}
	defer unix.Munmap(b)
	base := uintptr(unsafe.Pointer(&b[0]))
	end := base + n*pg
	if err := expect(f, base, end, 0, pageRegions(uint64(base), 3, 4), "B while p3 is pinned (p1 swapped out)"); err != nil {
		return err
	}
	if err := unpin(); err != nil {
		return err
	}
	if err := expect(f, base, end, ldt.Clear, pageRegions(uint64(base), 3, 4), "B after the unpin"); err != nil {
		return err
	}
	if err := expect(f, base, end, 0, nil, "B after the clear"); err != nil {
		return err
	}
	if got := b[pg]; got != 2 {
		return fmt.Errorf("p1 holds %d after its swap-in, want 2", got)
	}
	return nil
}

// shmemPageOut swaps page p of mem, a shared mapping of shmem, out until
// the mapping's smaps counts it (pagemap shows a swapped-out shmem page
// as none).
func shmemPageOut(mem []byte, p int) error {
	addr := uintptr(unsafe.Pointer(&mem[0]))
	ok, err := pageOutUntil(mem[p*pg:(p+1)*pg], func() (bool, error) {
		kb, err := pagemap.SmapsKB(addr, "Swap")
		return kb >= pg/1024, err
	})
	if !ok && err == nil {
		err = fmt.Errorf("setup: shmem page %d not swapped out by MADV_PAGEOUT (smaps Swap stays 0 kB)", p)
	}
	return err
}

// checkSharedMappedResched: ldt_shared_mapped() walks the whole page
// cache of a shared mapping made in a tracked mm, and every 4096 folios
// lets the CPU go if it must ("xas_pause(&xas); rcu_read_unlock();
// cond_resched();"), then goes on from where it stopped. A 256 MiB memfd
// in small folios (fallocate; shmem_enabled=never) whose last page is
// pinned (an io_uring fixed buffer through a one-page mapping) is mapped
// whole, eight times, while another thread spins on the same CPU, so the
// scheduler wants the CPU back during the walk. Each mapping must keep
// the pinned last page, the one the walk reaches last, and nothing else;
// after the unpin a clearing collection reports it once more and the
// next nothing. A walk that lost its place at a pause would miss it (or
// report pages nobody pinned).
func checkSharedMappedResched() error {
	const n, maps = 65536, 8
	return withSmallFolioMemfd("ldt-selftest-resched", n, func(f *ldt.File, fd int) error {
		if err := unix.Fallocate(fd, 0, 0, n*pg); err != nil {
			return fmt.Errorf("fallocate the memfd: %w", err)
		}
		last, err := unix.Mmap(fd, (n-1)*pg, pg, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			return fmt.Errorf("map the last page: %w", err)
		}
		defer unix.Munmap(last)
		last[0] = 1
		unpin, err := pinBuffers([][]byte{last})
		if err != nil {
			return err
		}
		defer unpin()
		// This thread and a spinner share CPU 0.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var old, cpu0 unix.CPUSet
		if err := unix.SchedGetaffinity(0, &old); err != nil {
			return err
		}
		defer unix.SchedSetaffinity(0, &old)
		cpu0.Set(0)
		if err := unix.SchedSetaffinity(0, &cpu0); err != nil {
			return fmt.Errorf("sched_setaffinity: %w", err)
		}
		var stop atomic.Bool
		spun := make(chan error, 1)
		go func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			if err := unix.SchedSetaffinity(0, &cpu0); err != nil {
				spun <- fmt.Errorf("setup: the spinner's sched_setaffinity: %w", err)
				return
			}
			for !stop.Load() {
			}
			spun <- nil
		}()
		stopSpinner := sync.OnceValue(func() error {
			stop.Store(true)
			return <-spun
		})
		defer stopSpinner()
		// mapped makes mapping i, which must keep the pinned last page and
		// nothing else.
		mapped := func(i int) ([]byte, uintptr, error) {
			b, err := unix.Mmap(fd, 0, n*pg, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
			if err != nil {
				return nil, 0, fmt.Errorf("map %d: %w", i, err)
			}
			base := uintptr(unsafe.Pointer(&b[0]))
			if err := expect(f, base, base+n*pg, 0, pageRegions(uint64(base), n-1, n), fmt.Sprintf("mapping %d, the last page pinned", i)); err != nil {
				unix.Munmap(b)
				return nil, 0, err
			}
			return b, base, nil
		}
		for i := range maps - 1 {
			b, _, err := mapped(i)
			if err != nil {
				return err
			}
			unix.Munmap(b)
		}
		b, base, err := mapped(maps - 1)
		if err != nil {
			return err
		}
		defer unix.Munmap(b)
		if err := stopSpinner(); err != nil {
			return err
		}
		if err := unpin(); err != nil {
			return err
		}
		if err := expect(f, base, base+n*pg, ldt.Clear, pageRegions(uint64(base), n-1, n), "the last mapping after the unpin"); err != nil {
			return err
		}
		return expect(f, base, base+n*pg, 0, nil, "the last mapping after the clear")
	})
}

// pinBuffers registers bufs as io_uring fixed buffers: FOLL_PIN |
// FOLL_LONGTERM pins, held until unpin drops them and closes the ring.
// unpin acts once; defer it for the error paths.
func pinBuffers(bufs [][]byte) (unpin func() error, err error) {
	r, err := kio.NewRing(4)
	if err != nil {
		return nil, fmt.Errorf("no io_uring: %w", err)
	}
	if err := r.Register(bufs); err != nil {
		r.Close()
		return nil, err
	}
	return sync.OnceValue(func() error {
		defer r.Close()
		return r.Unregister()
	}), nil
}
