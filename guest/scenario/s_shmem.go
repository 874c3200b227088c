package scenario

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

func init() {
	register(&Scenario{
		Name:  "shmem-thp-split",
		Paths: "7 (file/shmem branch), 2",
		Doc: "a PMD-mapped shmem THP (memfd, shmem_enabled=advise + MADV_HUGEPAGE) written by the CPU after a " +
			"collection, then split by an mprotect of 4 KiB inside: __split_huge_pmd_locked zaps a non-anonymous PMD " +
			"and the pages refault clean from the page cache. LDT keeps the zapped PMD's pages for the next collection " +
			"(kmod/README row 7, 0014: all 512 of them, the PMD's dirtiness covers the 2 MiB); soft-dirty loses the " +
			"writes: KNOWN-GAP; the data itself must stay intact.",
		Naive: MissPages,
		NotFor: map[string]string{
			"pagemap-scan": "its uffd-wp registration on a shmem THP split by mprotect is not what this scenario shows (the LDT/soft-dirty gap)",
		},
		Run: staged(runShmemSplit),
	})
}

const shmemEnabled = "/sys/kernel/mm/transparent_hugepage/shmem_enabled"

// shmemPmdKB is ShmemPmdMapped of the mapping that contains addr.
func shmemPmdKB(addr uintptr) (int, error) {
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	in := false
	for sc.Scan() {
		l := sc.Text()
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		// A mapping's header line starts "start-end perms ...".
		if lo, hi, ok := strings.Cut(f[0], "-"); ok {
			a, e1 := strconv.ParseUint(lo, 16, 64)
			b, e2 := strconv.ParseUint(hi, 16, 64)
			if e1 == nil && e2 == nil {
				in = uint64(addr) >= a && uint64(addr) < b
				continue
			}
		}
		if v, ok := strings.CutPrefix(l, "ShmemPmdMapped:"); ok && in {
			return strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
		}
	}
	return 0, sc.Err()
}

func runShmemSplit(e *Scene) error {
	if _, err := os.Stat(shmemEnabled); err != nil {
		return Skipf("no shmem THP: %v", err)
	}
	if err := e.Set(shmemEnabled, "advise"); err != nil {
		return Skipf("cannot enable shmem THP: %v", err)
	}
	e.pauseKhugepaged()

	n := HugePage / PageSize
	fd, err := unix.MemfdCreate("ldtlab-shmem-thp", unix.MFD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("memfd_create: %w", err)
	}
	e.closeAtEnd(func() error { return unix.Close(fd) })
	if err := unix.Ftruncate(fd, HugePage); err != nil {
		return fmt.Errorf("ftruncate: %w", err)
	}
	ws, err := e.Workset(n)
	if err != nil {
		return err
	}
	seg, err := ws.Map("shmem", File, 0, n, fd)
	if err != nil {
		return err
	}
	if err := unix.Madvise(seg.Bytes(ws), unix.MADV_HUGEPAGE); err != nil {
		return fmt.Errorf("MADV_HUGEPAGE on shmem: %w", err)
	}
	for id := range n {
		ws.Write(id)
	}
	t, err := e.StartTracking(ws)
	if err != nil {
		return err
	}

	huge := func() bool { kb, _ := shmemPmdKB(ws.Base); return kb >= HugePage/1024 }
	split := 0
	for range e.Epochs {
		if !huge() {
			// Back to a PMD mapping for the next split: the collapse is
			// history once collected.
			if err := unix.Madvise(seg.Bytes(ws), unix.MADV_COLLAPSE); err != nil || !huge() {
				e.Note("MADV_COLLAPSE of the shmem range did not give a PMD mapping (%v)", err)
				break
			}
			ws.Hint(0, n, "thp-collapse")
			if _, err := e.Collect(ws, t); err != nil {
				return err
			}
		}
		for _, id := range Pick(e.Rand, 0, n, 16) {
			ws.Write(id)
		}
		p := e.Rand.IntN(n)
		if err := unix.Mprotect(ws.Page(p), unix.PROT_READ); err != nil {
			return fmt.Errorf("mprotect RO inside the shmem THP: %w", err)
		}
		if !huge() {
			split++
			// The zapped PMD was dirty as a whole: LDT reports its
			// 512 pages.
			ws.Hint(0, n, "thp-split")
		}
		if err := unix.Mprotect(ws.Page(p), unix.PROT_READ|unix.PROT_WRITE); err != nil {
			return fmt.Errorf("mprotect RW: %w", err)
		}
		if _, err := e.Collect(ws, t); err != nil {
			return err
		}
		if err := e.Verify(ws); err != nil {
			return err
		}
	}
	e.Note("shmem THP split by mprotect in %d epochs", split)
	if split == 0 {
		return Skipf("no shmem THP was ever PMD-mapped and split (shmem_enabled=advise, MADV_HUGEPAGE)")
	}
	return e.Quiet(ws, t)
}
