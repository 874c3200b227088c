package scenario

import (
	"fmt"
	"os"
	"slices"

	"golang.org/x/sys/unix"

	"ldtlab/guest/tracker"
)

// LDT-only state: a page whose dirtiness the hardware D bit no longer
// carries, so only LDT's own bits remember it. A path scenario that only
// writes with the CPU tests the D bit vanilla Linux already keeps; one
// that runs its path over pages in these states tests LDT (and the naive
// negative control, which has only the D bit, must miss them or lose
// their data).
//
//	lazy     MADV_FREE, rewritten, collected: clean PTE of a lazyfree page,
//	         only the OS-backup bit stops reclaim from discarding it
//	gup      written by process_vm_writev into a present, clean PTE: the
//	         kernel marks the folio dirty, the PTE's D bit stays clear
//	swapped  written, paged out and read back: the PTE maps the page clean,
//	         the dirtiness came back from the swap entry
type ldtOnly struct {
	lazy, gup, swapped []int
}

// touched keeps the reads that fault pages in from being optimised away.
var touched uint64

// prepLazy makes ids lazyfree and rewrites them; the caller collects next
// (the collection's clear is what leaves the OS-backup bit alone).
func (e *Env) prepLazy(ws *Workset, ids []int) error {
	for _, id := range ids {
		// Present first: MADV_FREE of a swap entry just frees it.
		touched += Header(ws.Page(id))
		if err := unix.Madvise(ws.Page(id), unix.MADV_FREE); err != nil {
			return fmt.Errorf("MADV_FREE page %d: %w", id, err)
		}
		ws.Write(id)
	}
	return nil
}

// pvWrite writes data at addr of this process with process_vm_writev.
func pvWrite(addr uintptr, data []byte) error {
	local := []unix.Iovec{{Base: &data[0]}}
	local[0].SetLen(len(data))
	remote := []unix.RemoteIovec{{Base: addr, Len: len(data)}}
	got, err := unix.ProcessVMWritev(os.Getpid(), local, remote, 0)
	if err == nil && got != len(data) {
		err = fmt.Errorf("short process_vm_writev: %d", got)
	}
	return err
}

// prepLDTOnly writes the gup pages with process_vm_writev and the swapped
// pages with the CPU, pages those out one by one and reads them back. It
// returns how many of the swapped pages really reached swap.
func (e *Env) prepLDTOnly(ws *Workset, o ldtOnly, ss *swapStats) error {
	for _, id := range o.swapped {
		ws.Write(id)
	}
	for _, id := range o.swapped {
		if err := ss.pageout(ws.Page(id)); err != nil {
			return err
		}
	}
	for _, id := range o.swapped {
		if !Matches(ws.Page(id), ws.Want(id)) { // the read swaps it in
			e.AddCorrupt([]Corruption{{ID: id, Addr: ws.Addr(id), Want: ws.Want(id), What: "after swap-in: " + ws.describe(id, ws.Page(id))}})
		}
	}
	for _, id := range o.gup {
		if err := ws.WriteWith(id, pvWrite); err != nil {
			return fmt.Errorf("process_vm_writev into page %d: %w", id, err)
		}
	}
	return nil
}

// pickLDTOnly draws disjoint lazy, gup and swapped pages (k of each) from
// logical ids [first, first+n).
func pickLDTOnly(e *Env, first, n, k int) ldtOnly {
	ids := Pick(e.Rand, first, n, 3*k)
	e.Rand.Shuffle(len(ids), func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })
	return ldtOnly{lazy: sortedInts(ids[:k]), gup: sortedInts(ids[k : 2*k]), swapped: sortedInts(ids[2*k:])}
}

func sortedInts(s []int) []int {
	out := slices.Clone(s)
	slices.Sort(out)
	return out
}

// ldtOnlyEpoch is the skeleton every path scenario runs per epoch:
//
//	lazy pages: MADV_FREE + write, collect (an epoch)
//	gup and swapped pages into LDT-only state, plus CPU writes of cpu
//	the path
//	page out the memory pageout returns (after the path: mremap moves it), read everything back (Verify)
//	collect (an epoch: the LDT-only pages must be reported), verify
//
// The caller's path may write more pages; it returns an error to stop.
func (e *Env) ldtOnlyEpoch(ws *Workset, t tracker.Tracker, o ldtOnly, cpu []int, ss *swapStats, pageout func() [][]byte, path func() error) error {
	if len(o.lazy) > 0 {
		if err := e.prepLazy(ws, o.lazy); err != nil {
			return err
		}
		if _, err := e.Collect(ws, t); err != nil {
			return err
		}
	}
	for _, id := range cpu {
		ws.Write(id)
	}
	if err := e.prepLDTOnly(ws, o, ss); err != nil {
		return err
	}
	if err := path(); err != nil {
		return err
	}
	for _, b := range pageout() {
		if err := ss.pageout(b); err != nil {
			return err
		}
	}
	if err := e.Verify(ws); err != nil {
		return err
	}
	if _, err := e.Collect(ws, t); err != nil {
		return err
	}
	return e.Verify(ws)
}
