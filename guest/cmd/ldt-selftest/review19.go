package main

// Checks for the second review of the series (issue 19, findings 5 and 9):
// each failed on 0001-0014 and passes with the patch that fixed it.

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"ldtlab/guest/ldt"
	"ldtlab/guest/pagemap"
)

var issue19Checks = []check{
	{"device-private-mprotect", checkDevicePrivateMprotect},
	{"device-private-fork", checkDevicePrivateFork},
	{"swapin-mthp-mixed-ldt", checkSwapinMTHP},
	{"thp-clear-refs-stays-collected", checkTHPClearRefs},
	{"fork-mthp-batch", checkForkMTHP},
}

func init() { checks = append(checks, issue19Checks...) }

// lib/test_hmm (lib/test_hmm_uapi.h): a pseudo device whose "device
// memory" is device-private ZONE_DEVICE pages. The debug kernel has it
// built in (images/config/debug.config).
const hmmDevice = "/dev/hmm_dmirror0"

type hmmCmd struct{ Addr, Ptr, Npages, Cpages, Faults uint64 }

var iocHmmMigrateToDev = ldt.IOWR('H', 0x02, unsafe.Sizeof(hmmCmd{}))

// hmmMigrateToDevice moves the n present anonymous pages at addr to the
// device: their PTEs become device-private swap entries, which carry the
// pages' LDT state in the swap bit (0002). The pages stay on the device
// only while the returned file is open: test_hmm's release evicts every
// chunk back to system memory (dmirror_fops_release()), which once made
// these checks pass without the fix they test.
func hmmMigrateToDevice(addr uintptr, n int) (*os.File, error) {
	fd, err := unix.Open(hmmDevice, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("needs lib/test_hmm (CONFIG_TEST_HMM): %w", err)
	}
	dev := os.NewFile(uintptr(fd), hmmDevice)
	buf := make([]byte, n*pg) // the driver copies the migrated data back here
	cmd := hmmCmd{Addr: uint64(addr), Ptr: uint64(uintptr(unsafe.Pointer(&buf[0]))), Npages: uint64(n)}
	_, _, e := unix.Syscall(unix.SYS_IOCTL, dev.Fd(), iocHmmMigrateToDev, uintptr(unsafe.Pointer(&cmd)))
	runtime.KeepAlive(buf)
	if e != 0 {
		dev.Close()
		return nil, fmt.Errorf("HMM_DMIRROR_MIGRATE_TO_DEV: %w", e)
	}
	if cmd.Cpages != uint64(n) {
		dev.Close()
		return nil, fmt.Errorf("HMM_DMIRROR_MIGRATE_TO_DEV moved %d of %d pages", cmd.Cpages, n)
	}
	if err := onDevice(addr, n, "after the migration"); err != nil {
		dev.Close()
		return nil, err
	}
	return dev, nil
}

// onDevice: are the n pages at addr device-private (swap-like) entries?
// Checked right before the rewrite under test, so that a check cannot pass
// on entries that are no longer device-private.
func onDevice(addr uintptr, n int, when string) error {
	for p := range n {
		e, _, err := pagemap.Self(addr + uintptr(p)*pg)
		if err != nil {
			return err
		}
		if e.Present() || !e.Swapped() {
			return fmt.Errorf("page %d is not a device-private entry %s (pagemap %#x)", p, when, uint64(e))
		}
	}
	return nil
}

// withDevicePrivate: n pages written after the initial clear (so LDT owes
// them all), then migrated to the device; the check runs with the
// tracker and the mapping while the device holds the pages.
func withDevicePrivate(n int, check func(f *ldt.File, m *mapping) error) error {
	return withSelf(n, func(f *ldt.File, m *mapping) error {
		for p := range n {
			m.write(p)
		}
		dev, err := hmmMigrateToDevice(m.base, n)
		if err != nil {
			return err
		}
		defer dev.Close()
		return check(f, m)
	})
}

// checkDevicePrivateMprotect: mprotect(PROT_READ) rewrites a writable
// device-private entry as a readable one (change_pte_range()); the write
// made before the migration is still reported (0015).
func checkDevicePrivateMprotect() error {
	const n = 4 // p0-1 made read-only, p2-3 left alone as the control
	return withDevicePrivate(n, func(f *ldt.File, m *mapping) error {
		if err := onDevice(m.base, n, "before mprotect"); err != nil {
			return err
		}
		if err := unix.Mprotect(m.mem[:2*pg], unix.PROT_READ); err != nil {
			return fmt.Errorf("mprotect: %w", err)
		}
		if err := expect(f, m.base, m.end(), ldt.Clear, pageRegions(uint64(m.base), 0, n), "after mprotect(PROT_READ) of p0-1"); err != nil {
			return err
		}
		return expect(f, m.base, m.end(), 0, nil, "after the clear")
	})
}

// checkDevicePrivateFork: fork() makes the parent's writable device-private
// entries of a private mapping readable (copy_nonpresent_pte()); the
// parent's writes are still reported (0015).
func checkDevicePrivateFork() error {
	const n = 4
	return withDevicePrivate(n, func(f *ldt.File, m *mapping) error {
		if err := onDevice(m.base, n, "before fork"); err != nil {
			return err
		}
		if err := forkAndReap(); err != nil {
			return err
		}
		if err := expect(f, m.base, m.end(), ldt.Clear, pageRegions(uint64(m.base), 0, n), "parent after fork"); err != nil {
			return err
		}
		return expect(f, m.base, m.end(), 0, nil, "after the clear")
	})
}

// forkAndReap forks a child that exits at once (forkExitingChild) and
// reaps it: what the fork did to this process's page tables is all a
// check wants.
func forkAndReap() error {
	pid, err := forkExitingChild()
	if err != nil {
		return err
	}
	var ws unix.WaitStatus
	if _, err := unix.Wait4(pid, &ws, 0, nil); err != nil {
		return fmt.Errorf("wait for the forked child: %w", err)
	}
	if !ws.Exited() || ws.ExitStatus() != 0 {
		return fmt.Errorf("forked child: status %v", ws)
	}
	return nil
}

// forkExitingChild forks this process (a real fork: the child gets a copy
// of the page tables, which os.StartProcess's vfork does not) and the
// child exits at once without running any Go code.
func forkExitingChild() (int, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	pid, e := rawForkExit()
	if e != 0 {
		return 0, fmt.Errorf("fork: %w", e)
	}
	return pid, nil
}

//go:nosplit
func rawForkExit() (int, syscall.Errno) {
	r, _, e := syscall.RawSyscall6(syscall.SYS_CLONE, uintptr(syscall.SIGCHLD), 0, 0, 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	if r == 0 {
		syscall.RawSyscall(syscall.SYS_EXIT_GROUP, 0, 0, 0)
	}
	return int(r), 0
}

// mthp64K runs fn with /dev/ldt attached to this process on `folios`
// 64 KiB-aligned 64 KiB folios of private anonymous memory, each mapped
// whole by one write fault and with no page left all zeros (those are not
// written to swap), under 64 KiB mTHP "always" (restored after). mem spans
// the folios back to back; nothing is collected yet.
func mthp64K(folios int, fn func(f *ldt.File, mem []byte) error) error {
	const knob = "/sys/kernel/mm/transparent_hugepage/hugepages-64kB/enabled"
	const n = 16
	old, err := os.ReadFile(knob)
	if err != nil {
		return fmt.Errorf("needs 64 KiB mTHP: %w", err)
	}
	if err := os.WriteFile(knob, []byte("always"), 0); err != nil {
		return fmt.Errorf("enable 64 KiB mTHP: %w", err)
	}
	defer func() {
		// The file shows "always [inherit] madvise never": keep the choice.
		s := string(old)
		if i, j := strings.IndexByte(s, '['), strings.IndexByte(s, ']'); i >= 0 && j > i {
			os.WriteFile(knob, []byte(s[i+1:j]), 0)
		}
	}()
	all, err := unix.Mmap(-1, 0, (folios+1)*n*pg, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return err
	}
	defer unix.Munmap(all)
	off := int((n*pg - uintptr(unsafe.Pointer(&all[0]))%(n*pg)) % (n * pg))
	mem := all[off : off+folios*n*pg]
	for i := range folios {
		b := mem[i*n*pg : (i+1)*n*pg]
		b[0] = 1 // one write fault maps the whole mTHP
		for p := range n {
			b[p*pg+1] = 1
		}
		if ok, err := largeFolio(uintptr(unsafe.Pointer(&b[0])), n); err != nil || !ok {
			return fmt.Errorf("setup: no 64 KiB folio after the first write (large=%v, err=%v)", ok, err)
		}
	}
	f, err := attachedSelf()
	if err != nil {
		return err
	}
	defer f.Close()
	return fn(f, mem)
}

// checkSwapinMTHP: a 64 KiB folio swapped out after a collection, of which
// one page was written again, has swap entries that differ only in LDT's
// bit. It swaps back in as one folio (as a control whose pages were all
// written does, and as without LDT), and only the written page is reported
// (0016). Needs a synchronous swap device (the guest's zram, which has the
// highest priority): only those swap large folios in.
func checkSwapinMTHP() error {
	const n = 16
	return mthp64K(3, func(f *ldt.File, mem []byte) error {
		ctl, mixed := mem[:n*pg], mem[2*n*pg:3*n*pg] // a folio apart
		base := uintptr(unsafe.Pointer(&mem[0]))
		addrOf := func(b []byte) uintptr { return uintptr(unsafe.Pointer(&b[0])) }
		if _, err := f.CollectAll(base, base+uintptr(len(mem)), ldt.Clear); err != nil {
			return err
		}
		for p := range n {
			ctl[p*pg+2] = 2 // every swap entry will carry the bit
		}
		mixed[3*pg+2] = 2 // only p3's will
		for _, b := range [][]byte{ctl, mixed} {
			if err := unix.Madvise(b, unix.MADV_PAGEOUT); err != nil {
				return fmt.Errorf("MADV_PAGEOUT: %w", err)
			}
			for p := range n {
				e, _, err := pagemap.Self(addrOf(b) + uintptr(p)*pg)
				if err != nil {
					return err
				}
				if !e.Swapped() {
					return fmt.Errorf("setup: page %d not swapped out by MADV_PAGEOUT (pagemap %#x)", p, uint64(e))
				}
			}
		}
		sink += ctl[0] + mixed[0] // read faults: swap-in
		if ok, err := largeFolio(addrOf(ctl), n); err != nil || !ok {
			return fmt.Errorf("setup: the control (all 16 pages written) did not swap in as one 64 KiB folio (large=%v, err=%v): no large swap-in here (zram swap, mTHP swap-out)", ok, err)
		}
		if ok, err := largeFolio(addrOf(mixed), n); err != nil || !ok {
			return fmt.Errorf("the 64 KiB folio whose swap entries differ only in LDT's bit swapped in as small pages (large=%v, err=%v)", ok, err)
		}
		want := []ldt.Region{
			{Start: uint64(addrOf(ctl)), End: uint64(addrOf(ctl)) + n*pg},
			{Start: uint64(addrOf(mixed)) + 3*pg, End: uint64(addrOf(mixed)) + 4*pg},
		}
		return expect(f, base, base+uintptr(len(mem)), ldt.Clear, want, "after the swap-in")
	})
}

// checkTHPClearRefs: soft-dirty's clear_refs write-protects a THP the
// tracker has already collected; the next collection reports nothing
// (before 0018 the whole 2 MiB again), and a write after it is reported.
func checkTHPClearRefs() error {
	return withTHP(func(f *ldt.File, mem []byte, base, end uintptr) error {
		whole := []ldt.Region{{Start: uint64(base), End: uint64(end)}}
		if err := expect(f, base, end, ldt.Clear, whole, "first collect of the written THP"); err != nil {
			return err
		}
		if err := os.WriteFile("/proc/self/clear_refs", []byte("4"), 0); err != nil {
			return fmt.Errorf("clear_refs 4: %w", err)
		}
		if kb, err := anonHugeKB(base); err != nil || kb < 2048 {
			return fmt.Errorf("setup: clear_refs split the THP (AnonHugePages %d kB, %v)", kb, err)
		}
		if err := expect(f, base, end, ldt.Clear, nil, "after clear_refs, nothing written"); err != nil {
			return err
		}
		mem[5*pg] = 7
		return expect(f, base, end, ldt.Clear, whole, "a write after clear_refs")
	})
}

// alignedTHP maps one 2 MiB-aligned anonymous region backed by a THP,
// every page written (backTHP).
func alignedTHP() ([]byte, func(), error) {
	all, err := unix.Mmap(-1, 0, 2*hpage, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, nil, err
	}
	release := func() { unix.Munmap(all) }
	start := uintptr(unsafe.Pointer(&all[0]))
	off := int((start+hpage-1)&^(hpage-1) - start)
	mem := all[off : off+hpage]
	if err := unix.Mprotect(mem, unix.PROT_READ|unix.PROT_WRITE); err != nil {
		release()
		return nil, nil, err
	}
	if _, err := backTHP(mem); err != nil {
		release()
		return nil, nil, err
	}
	return mem, release, nil
}

// withTHP runs check with /dev/ldt attached to this process and an
// aligned THP (alignedTHP) at [base, end), not collected yet.
func withTHP(check func(f *ldt.File, thp []byte, base, end uintptr) error) error {
	thp, release, err := alignedTHP()
	if err != nil {
		return err
	}
	defer release()
	f, err := attachedSelf()
	if err != nil {
		return err
	}
	defer f.Close()
	base := uintptr(unsafe.Pointer(&thp[0]))
	return check(f, thp, base, base+hpage)
}

// checkForkMTHP: fork copies a 64 KiB mTHP's 16 entries as one batch
// with one value. After a collection only page 5 is written again, so the
// batch's first entry is not LDT-dirty and a later one is: the copied
// value is made LDT-dirty (0007; the child may report extra pages, never
// miss one), and the parent, whose entries fork write-protects, still
// reports exactly page 5.
func checkForkMTHP() error {
	const n = 16
	return mthp64K(1, func(f *ldt.File, mem []byte) error {
		base := uintptr(unsafe.Pointer(&mem[0]))
		if _, err := f.CollectAll(base, base+n*pg, ldt.Clear); err != nil {
			return err
		}
		mem[5*pg+8] = 3
		if ok, err := largeFolio(base, n); err != nil || !ok {
			return fmt.Errorf("setup: the 64 KiB folio was split before the fork (large=%v, err=%v)", ok, err)
		}
		if err := forkAndReap(); err != nil {
			return err
		}
		return expect(f, base, base+n*pg, ldt.Clear, pageRegions(uint64(base), 5, 6), "parent after fork")
	})
}
