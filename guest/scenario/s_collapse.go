package scenario

import (
	"os"

	"golang.org/x/sys/unix"

	"ldtlab/guest/pagemap"
)

func init() {
	register(&Scenario{
		Name:  "shmem-collapse",
		Paths: "24, 8 (file/shmem), 2",
		Doc: "a MAP_SHARED memfd of small folios (shmem_enabled=never), one 2 MiB block per epoch: a few of its pages " +
			"written after everything was collected, then MADV_COLLAPSE of the block (collapse_file() unmaps the small " +
			"folios with try_to_unmap(): the PTEs become none before any LDT-aware code runs, then a clean PMD is " +
			"installed), then collect; pages of blocks not collapsed are written too (the same write without a " +
			"collapse).",
		Naive: MissPages,
		Run:   staged(runShmemCollapse),
	})
}

func runShmemCollapse(e *Scene) error {
	if _, err := os.Stat(shmemEnabled); err != nil {
		return Skipf("no shmem THP: %v", err)
	}
	if err := e.Set(shmemEnabled, "never"); err != nil {
		return Skipf("cannot set shmem_enabled: %v", err)
	}
	e.pauseKhugepaged()
	per := HugePage / PageSize
	blocks := e.Epochs
	n := blocks * per
	fd, err := memfdOf("ldtlab-shmem-collapse", n)
	if err != nil {
		return err
	}
	ws, err := e.Workset(n)
	if err != nil {
		unix.Close(fd)
		return err
	}
	seg, err := ws.Map("shmem", File, 0, n, fd)
	if err != nil {
		unix.Close(fd)
		return err
	}
	for id := range n {
		ws.Write(id)
	}
	if kb, _ := shmemPmdKB(ws.Base); kb > 0 {
		return Skipf("shmem_enabled=never still gave PMD mappings (%d KiB)", kb)
	}
	t, err := e.StartTracking(ws)
	if err != nil {
		return err
	}
	collapsed, pmdMapped := 0, 0
	for blk := range blocks {
		first := blk * per
		b := seg.Bytes(ws)[first*PageSize : (first+per)*PageSize]
		// The same kind of write in a block that is not collapsed.
		if blk+1 < blocks {
			for _, id := range Pick(e.Rand, first+per, n-first-per, 4) {
				ws.Write(id)
			}
		}
		for _, id := range Pick(e.Rand, first, per, 4) {
			ws.Write(id)
		}
		before, _ := shmemPmdKB(ws.Base)
		cerr := unix.Madvise(b, unix.MADV_COLLAPSE)
		after, _ := shmemPmdKB(ws.Base)
		// The page cache folio behind the block is a THP now (the PMD
		// itself may be left to a later fault, e.g. under uffd-wp).
		touched += uint64(b[0])
		_, flags, _ := pagemap.Self(ws.Addr(first))
		if flags&pagemap.KPFTHP != 0 {
			collapsed++
		} else {
			e.Note("block %d: MADV_COLLAPSE did not collapse it (%v)", blk, cerr)
		}
		if after > before {
			pmdMapped++
		}
		ws.Hint(first, per, "thp-collapse")
		if _, err := e.Collect(ws, t); err != nil {
			return err
		}
		if err := e.Verify(ws); err != nil {
			return err
		}
	}
	e.Note("%d of %d blocks collapsed (%d PMD-mapped by MADV_COLLAPSE)", collapsed, blocks, pmdMapped)
	if collapsed == 0 {
		return Skipf("MADV_COLLAPSE collapsed no shmem block")
	}
	return e.Quiet(ws, t)
}
