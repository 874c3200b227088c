package main

import (
	"fmt"
	"math/rand"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"ldtlab/guest/ldt"
	"ldtlab/guest/numa"
)

// A PMD THP migrated back and forth between two NUMA nodes for a few
// seconds while this process forks, mprotects it whole and in part,
// writes it (CPU, /proc/self/mem, process_vm_writev) and collects it.
// Each of those may meet the PMD while it is a migration entry: lines of
// the series only such a race runs (docs/coverage.reasons, "race window";
// gcov shows copy_huge_pmd()'s and __split_huge_pmd_locked()'s ran, the
// others it aims at did not in a 3 s run). Every page written since a
// collection must be in the next one, and every page must hold what was
// last written to it.

func init() {
	checks = append(checks, check{"thp-migration-race", checkTHPMigrationRace})
}

// thpRaceFor is how long the race runs: 3 s, or LDT_SELFTEST_RACE_FOR
// (a Go duration) for a coverage run that hunts the rarer windows.
func thpRaceFor() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("LDT_SELFTEST_RACE_FOR")); err == nil && d > 0 {
		return d
	}
	return 3 * time.Second
}

func checkTHPMigrationRace() error {
	if numa.Nodes() < 2 {
		return skipf("one NUMA node: nothing to migrate to (boot with numa=fake=2)")
	}
	return withTHP(func(f *ldt.File, thp []byte, base, end uintptr) error {
		if _, err := f.CollectAll(base, end, ldt.Clear); err != nil {
			return err
		}

		mem, err := os.OpenFile("/proc/self/mem", os.O_RDWR, 0)
		if err != nil {
			return err
		}
		defer mem.Close()

		// The mover moves the THP until stopped; pauseMover returns once it is
		// between two moves and holds it there until resume is called.
		var moves atomic.Int64
		stop, done, pauses := make(chan struct{}), make(chan struct{}), make(chan chan struct{})
		go func() {
			defer close(done)
			for node := 0; ; node ^= 1 {
				select {
				case <-stop:
					return
				case resume := <-pauses:
					<-resume
				default:
				}
				numa.Move([]uintptr{base}, node)
				moves.Add(1)
			}
		}()
		stopMover := sync.OnceFunc(func() {
			close(stop)
			<-done
		})
		defer stopMover()
		pauseMover := func() (resume func()) {
			r := make(chan struct{})
			pauses <- r
			return func() { close(r) }
		}

		const n = hpage / pg
		want := make([]byte, n) // the first byte of every page
		for p := range want {
			want[p] = thp[p*pg]
		}
		written := map[int]bool{}
		rnd := rand.New(rand.NewSource(1))
		counts := map[string]int{}
		pid := os.Getpid()
		huge := func() bool { kb, _ := anonHugeKB(base); return kb >= 2048 }
		deadline := time.Now().Add(thpRaceFor())
		for i := 0; time.Now().Before(deadline); i++ {
			p := rnd.Intn(n)
			v := byte(rnd.Intn(255) + 1)
			switch op := i % 6; op {
			case 0:
				thp[p*pg] = v
			case 1:
				// GUP writes; /proc/self/mem re-marks the entry after its copy
				// (gup_ldt_mark_written()), which may meet the page moved.
				if i%12 == 1 {
					if _, err := mem.WriteAt([]byte{v}, int64(base)+int64(p)*pg); err != nil {
						return fmt.Errorf("/proc/self/mem: %w", err)
					}
				} else if err := vmWrite(pid, base+uintptr(p)*pg, []byte{v}); err != nil {
					return err
				}
			case 2:
				cpid, err := forkExitingChild()
				if err != nil {
					return err
				}
				var ws unix.WaitStatus
				unix.Wait4(cpid, &ws, 0, nil)
			case 3:
				if err := unix.Mprotect(thp, unix.PROT_READ); err != nil {
					return err
				}
				if err := unix.Mprotect(thp, unix.PROT_READ|unix.PROT_WRITE); err != nil {
					return err
				}
			case 4:
				// Part of the THP, now and then: the PMD is split (maybe
				// while it is a migration entry), then the THP made again
				// with the mover paused.
				if i%60 == 4 {
					half := thp[:hpage/2]
					if err := unix.Mprotect(half, unix.PROT_READ); err != nil {
						return err
					}
					if err := unix.Mprotect(half, unix.PROT_READ|unix.PROT_WRITE); err != nil {
						return err
					}
					counts["split"]++
				}
				// Look with the mover paused: AnonHugePages does not count a
				// THP while it is a migration entry.
				resume := pauseMover()
				counts["looks"]++
				if huge() {
					counts["huge"]++
				} else {
					// A new THP by fault in a fresh mapping (MADV_COLLAPSE
					// refuses a range split after a fork, and a page table
					// left in place refaults 4 KiB pages). Its pages are
					// written again, so all of them are owed.
					if err := remapTHP(thp); err != nil {
						resume()
						return err
					}
					for q := range want {
						thp[q*pg], want[q], written[q] = byte(i), byte(i), true
					}
					counts["refault"]++
				}
				resume()
			case 5:
				got, err := f.CollectAll(base, end, ldt.Clear)
				if err != nil {
					return err
				}
				if missed := notIn(written, got, uint64(base)); len(missed) > 0 {
					return fmt.Errorf("collection %d missed pages %v written since the last one (%d moves so far)", counts["collect"], missed, moves.Load())
				}
				clear(written)
				counts["collect"]++
			}
			if op := i % 6; op < 2 {
				want[p] = v
				written[p] = true
			}
			if i%6 == 2 || i%6 == 3 {
				runtime.Gosched()
			}
		}
		stopMover()
		got, err := f.CollectAll(base, end, ldt.Clear)
		if err != nil {
			return err
		}
		if missed := notIn(written, got, uint64(base)); len(missed) > 0 {
			return fmt.Errorf("the last collection missed pages %v", missed)
		}
		for p := range want {
			if thp[p*pg] != want[p] {
				return fmt.Errorf("page %d holds %d, last written %d", p, thp[p*pg], want[p])
			}
		}
		info("%d THP moves, %d collections, %d splits, %d THPs made again; a PMD THP in %d of %d looks", moves.Load(), counts["collect"], counts["split"], counts["refault"], counts["huge"], counts["looks"])
		if moves.Load() < 10 || counts["huge"] < counts["looks"]/2 {
			return fmt.Errorf("setup: %d moves, a PMD THP in %d of %d looks", moves.Load(), counts["huge"], counts["looks"])
		}
		return nil
	})
}

// notIn lists the pages of set (numbered from base) that no region holds.
func notIn(set map[int]bool, rs []ldt.Region, base uint64) []int {
	var out []int
	for p := range set {
		a := base + uint64(p)*pg
		found := false
		for _, r := range rs {
			if r.Start <= a && a < r.End {
				found = true
				break
			}
		}
		if !found {
			out = append(out, p)
		}
	}
	return out
}

// remapTHP replaces the 2 MiB-aligned thp with a fresh anonymous mapping
// that faults in as a PMD THP.
func remapTHP(thp []byte) error {
	addr := uintptr(unsafe.Pointer(&thp[0]))
	// MAP_FIXED replaces the old mapping, page table and all.
	_, _, e := unix.Syscall6(unix.SYS_MMAP, addr, hpage, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_FIXED, ^uintptr(0), 0)
	if e != 0 {
		return fmt.Errorf("mmap MAP_FIXED: %w", e)
	}
	if err := unix.Madvise(thp, unix.MADV_HUGEPAGE); err != nil {
		return err
	}
	return nil
}
