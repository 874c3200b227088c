package scenario

import (
	"fmt"

	"golang.org/x/sys/unix"
)

func init() {
	register(&Scenario{
		Name:  "stale-swap-cache",
		Paths: "1, 3 (S1)",
		Doc: "disk swap only: write X, MADV_PAGEOUT, read back (mapped writable and clean, still in the swap cache), " +
			"write Y, collect+clear, MADV_PAGEOUT, read: must be Y. Without the OS-backup bit the page is dropped clean and X comes back.",
		Naive: LoseData,
		Loss:  "stale generation",
		Run:   staged(runStaleSwapCache),
	})
	register(&Scenario{
		Name:  "lazyfree",
		Paths: "9, 1 (S1)",
		Doc: "4 KiB pages: read back (present), MADV_FREE, write, collect+clear, MADV_PAGEOUT, read: must be the written data. " +
			"Without the OS-backup bit the clean lazyfree page is discarded and reads as zeros.",
		Naive: LoseData,
		Loss:  "all zeros",
		Run:   staged(func(e *Scene) error { return runLazyfree(e, false) }),
	})
	register(&Scenario{
		Name:  "lazyfree-thp",
		Paths: "9, 1 (S1), PMD discard",
		Doc: "as lazyfree on a PMD-mapped THP: fresh THP, MADV_FREE the whole 2 MiB, write all of it, collect+clear, " +
			"MADV_PAGEOUT (__discard_anon_folio_pmd_locked), read.",
		Naive: LoseData,
		Loss:  "all zeros",
		Run:   staged(func(e *Scene) error { return runLazyfree(e, true) }),
	})
	register(&Scenario{
		Name:  "swap-roundtrip",
		Paths: "1, 3 (S2)",
		Doc: "write, MADV_PAGEOUT (D moves to the folio and the swap entry), read back (the new PTE is clean), collect: " +
			"the written pages must still be reported.",
		Naive: MissPages,
		Run:   staged(runSwapRoundtrip),
	})
}

// swapStats remembers how completely MADV_PAGEOUT worked, because a
// scenario whose pages never reached swap proves nothing.
type swapStats struct{ want, got int }

func (s *swapStats) pageout(b []byte) error {
	n, err := pageout(b)
	s.want += len(b) / PageSize
	s.got += n
	return err
}

// require notes how much reached swap and turns "nothing did" into a
// skip: the scenario did not run its path, so its pass would mean nothing.
func (s *swapStats) require(e *Scene) error {
	e.Note("MADV_PAGEOUT swapped out %d of %d pages asked for", s.got, s.want)
	if s.got == 0 {
		return Skipf("nothing reached swap (MADV_PAGEOUT swapped out 0 of %d pages): the swap path was not exercised", s.want)
	}
	return nil
}

func runStaleSwapCache(e *Scene) error {
	restore, disk, err := diskSwapOnly()
	if err != nil {
		return err
	}
	e.Defer("restore zram swap", restore)
	e.Note("swap device for the scenario: %s (zram swapped off meanwhile)", disk)
	const n = 64
	ws, seg, t, err := e.Populate(Anon, n)
	if err != nil {
		return err
	}
	var ss swapStats
	for range e.Epochs {
		ids := Pick(e.Rand, 0, n, n/2)
		for _, id := range ids {
			ws.Write(id) // X
		}
		if err := ss.pageout(seg.Bytes(ws)); err != nil {
			return err
		}
		// Reading swaps every page back in: exclusive pages come back
		// writable and clean, and stay in the swap cache.
		if err := e.Verify(ws); err != nil {
			return err
		}
		for _, id := range ids {
			ws.Write(id) // Y, no fault: only the hardware D bit records it
		}
		if _, err := e.Collect(ws, t); err != nil {
			return err
		}
		if err := ss.pageout(seg.Bytes(ws)); err != nil {
			return err
		}
		if err := e.Verify(ws); err != nil {
			return err
		}
	}
	if err := e.Quiet(ws, t); err != nil {
		return err
	}
	return ss.require(e)
}

func runLazyfree(e *Scene, thp bool) error {
	if err := anySwap(); err != nil && !thp {
		return err
	}
	kind, n := Anon, 64
	if thp {
		kind, n = AnonTHP, 2*HugePage/PageSize
		e.pauseKhugepaged()
	}
	ws, seg, t, err := e.Populate(kind, n)
	if err != nil {
		return err
	}
	var ss swapStats
	thpSeen := 0
	for ep := range e.Epochs {
		if thp {
			// A fresh PMD-mapped THP every epoch: the last pageout split
			// or swapped the previous one.
			b := seg.Bytes(ws)
			if err := unix.Madvise(b, unix.MADV_DONTNEED); err != nil {
				return err
			}
			for id := range n {
				ws.Expect(id, 0)
				ws.Write(id)
			}
			// The zap leaves the page tables of a split THP behind, so
			// the faults above mapped 4 KiB pages: collapse them.
			if kb, _ := anonHugeKB(ws.Base, ws.End()); kb < n*PageSize/1024 {
				_ = unix.Madvise(b, unix.MADV_COLLAPSE)
			}
			if err := unix.Madvise(b, unix.MADV_FREE); err != nil {
				return fmt.Errorf("MADV_FREE: %w", err)
			}
			// Every page is rewritten: a lazyfree page left alone may
			// legitimately read back as zeros.
			for id := range n {
				ws.Write(id)
			}
			// The epoch reaches the PMD discard only if all of the
			// segment is PMD-mapped right before the pageout.
			if kb, _ := anonHugeKB(ws.Base, ws.End()); kb >= n*PageSize/1024 {
				thpSeen++
			} else {
				e.Logf("epoch %d: only %d KiB of %d PMD-mapped", ep+1, kb, n*PageSize/1024)
			}
		} else {
			if ep > 0 {
				// Bring swapped pages back first: MADV_FREE of a swap
				// entry just frees it, no lazyfree page to lose.
				if err := e.Verify(ws); err != nil {
					return err
				}
			}
			for _, id := range Pick(e.Rand, 0, n, n/2) {
				if err := unix.Madvise(ws.Page(id), unix.MADV_FREE); err != nil {
					return fmt.Errorf("MADV_FREE: %w", err)
				}
				ws.Write(id)
			}
		}
		if _, err := e.Collect(ws, t); err != nil {
			return err
		}
		if err := ss.pageout(seg.Bytes(ws)); err != nil {
			return err
		}
		if err := e.Verify(ws); err != nil {
			return err
		}
	}
	if err := e.Quiet(ws, t); err != nil {
		return err
	}
	if thp {
		e.Note("all %d KiB PMD-mapped before the pageout in %d of %d epochs", n*PageSize/1024, thpSeen, e.Epochs)
		if thpSeen == 0 {
			return Skipf("the segment was never fully PMD-mapped before the pageout (transparent_hugepage not madvise/always?): the PMD discard path was not reached")
		}
		// The discard drops whole THPs without swapping, so "nothing
		// reached swap" is no precondition here.
		e.Note("MADV_PAGEOUT swapped out %d of %d pages asked for", ss.got, ss.want)
		return nil
	}
	return ss.require(e)
}

func runSwapRoundtrip(e *Scene) error {
	if err := anySwap(); err != nil {
		return err
	}
	const n = 128
	ws, seg, t, err := e.Populate(Anon, n)
	if err != nil {
		return err
	}
	var ss swapStats
	for range e.Epochs {
		for _, id := range Pick(e.Rand, 0, n, n/2) {
			ws.Write(id)
		}
		if err := ss.pageout(seg.Bytes(ws)); err != nil {
			return err
		}
		if err := e.Verify(ws); err != nil { // swap-in by reading
			return err
		}
		if _, err := e.Collect(ws, t); err != nil {
			return err
		}
	}
	if err := e.Quiet(ws, t); err != nil {
		return err
	}
	return ss.require(e)
}
