package scenario

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"ldtlab/guest/numa"
	"ldtlab/guest/pagemap"
	"ldtlab/guest/tracker"
)

func init() {
	register(&Scenario{
		Name:  "ksm",
		Paths: "15 (S1+S2)",
		Doc: "MADV_MERGEABLE pages written with identical content are merged by ksmd (write_protect_page cleans the PTE, " +
			"replace_page maps the KSM page clean); later writes break the sharing (COW).",
		Naive: MissPages,
		Run:   staged(runKSM),
	})
	register(&Scenario{
		Name:  "migration",
		Paths: "4, 6 (S2)",
		Doc: "4 KiB pages and a whole PMD-mapped THP in LDT-only state (process_vm_writev, swapped out and read back, " +
			"lazyfree + collected) migrated between fake NUMA nodes with move_pages (needs numa=fake=2) and by " +
			"/proc/sys/vm/compact_memory, then paged out: the dirty state must survive the migration entry. " +
			"A migration counts only when the page frame changed.",
		Naive: MissPages,
		Run:   staged(runMigration),
	})
	register(&Scenario{
		Name:  "thp-split-collapse",
		Paths: "7, 8 (S1+S2)",
		Doc: "PMD-mapped THPs written by process_vm_writev (clean PMD: LDT-only state) then split (MADV_DONTNEED / " +
			"mprotect of 4 KiB inside) or split and collapsed again (MADV_COLLAPSE), paged out and read back; the PMD's " +
			"dirtiness must reach every PTE and back.",
		Naive: MissPages,
		NotFor: map[string]string{
			"pagemap-scan": uffdNoCollapse,
		},
		Run: staged(runTHP),
	})
	register(&Scenario{
		Name:  "mprotect",
		Paths: "13 (S1+S2)",
		Doc: "pages in LDT-only state (process_vm_writev, swapped and read back, lazyfree + collected) and CPU writes, then " +
			"RW→RO and RW→PROT_NONE cycles (pte_modify moves D into SAVED_DIRTY and back); pageout and collection run " +
			"while protected, then every page is read back.",
		Naive: MissPages,
		Run:   staged(runMprotect),
	})
	register(&Scenario{
		Name:  "mremap",
		Paths: "14",
		Doc: "pages in LDT-only state (process_vm_writev, swapped and read back, lazyfree + collected) moved with " +
			"mremap(MAYMOVE|FIXED): a 1 MiB segment to aligned and unaligned places, a 2 MiB segment of 4 KiB pages and a " +
			"PMD-mapped THP between 2 MiB aligned places (whole page tables and huge PMDs move), then paged out: " +
			"reported at the new address, data intact.",
		Naive: MissPages,
		NotFor: map[string]string{
			"pagemap-scan": "mremap drops a VMA's userfaultfd registration unless UFFD_FEATURE_EVENT_REMAP, which needs a fault-handling thread the async mode does not have",
		},
		Run: staged(runMremap),
	})
	register(&Scenario{
		Name:  "coexistence",
		Paths: "16, 17",
		Doc: "pages in LDT-only state (process_vm_writev, swapped and read back, lazyfree + collected), then soft-dirty " +
			"(clear_refs) and userfaultfd async write-protection (PAGEMAP_SCAN) track and clear the same process while LDT " +
			"does, then everything is paged out and read back: every tracker must still see every write.",
		Naive: MissPages,
		NotFor: map[string]string{
			"softdirty":    "the scenario runs soft-dirty itself as the co-tracker; clear_refs is process-wide, so it cannot also be the tracker under test",
			"pagemap-scan": "the scenario runs PAGEMAP_SCAN itself as the co-tracker; a VMA takes only one userfaultfd",
		},
		Run: staged(runCoexistence),
	})
}

const ksmDir = "/sys/kernel/mm/ksm/"

// ksmScans waits until ksmd completed two more full scans (the first
// puts pages in the unstable tree, the second merges them).
func ksmScans(n int64) error {
	start, err := readInt(ksmDir + "full_scans")
	if err != nil {
		return err
	}
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		cur, err := readInt(ksmDir + "full_scans")
		if err != nil {
			return err
		}
		if cur >= start+n {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("ksmd did not complete %d full scans in 90 s", n)
}

func runKSM(e *Scene) error {
	if _, err := os.Stat(ksmDir + "run"); err != nil {
		return Skipf("no KSM (%v)", err)
	}
	const n = 64
	ws, seg, t, err := e.Populate(Anon, n)
	if err != nil {
		return err
	}
	if err := unix.Madvise(seg.Bytes(ws), unix.MADV_MERGEABLE); err != nil {
		return fmt.Errorf("MADV_MERGEABLE: %w", err)
	}
	// Restored in reverse: ksmd stops first.
	for _, k := range [][2]string{{"pages_to_scan", "4096"}, {"sleep_millisecs", "10"}, {"run", "1"}} {
		if err := e.Set(ksmDir+k[0], k[1]); err != nil {
			return err
		}
	}
	merged := 0
	for ep := range e.Epochs {
		// Half the pages get this epoch's common content (they merge),
		// a few others unique content (some break an earlier merge).
		shared := StampFor(e.Seed, -1-ep, 1)
		ids := Pick(e.Rand, 0, n, n/2+n/4)
		for i, id := range ids {
			if i < n/2 {
				ws.WriteShared(id, shared)
			} else {
				ws.Write(id)
			}
		}
		before, _ := readInt(ksmDir + "pages_sharing")
		if err := ksmScans(2); err != nil {
			return err
		}
		after, _ := readInt(ksmDir + "pages_sharing")
		if after > before {
			merged++
		}
		e.Logf("epoch %d: pages_sharing %d -> %d", ep+1, before, after)
		if _, err := e.Collect(ws, t); err != nil {
			return err
		}
		if err := e.Verify(ws); err != nil {
			return err
		}
	}
	if err := e.Quiet(ws, t); err != nil {
		return err
	}
	e.Note("KSM merged pages in %d of %d epochs", merged, e.Epochs)
	if merged == 0 {
		return Skipf("ksmd merged nothing: the merge path was not exercised")
	}
	return nil
}

// pfns returns the page frame numbers of b's pages (0 when not present
// or when not root).
func pfns(b []byte) ([]uint64, error) {
	f, err := pagemap.Open(0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Frames(uintptr(unsafe.Pointer(&b[0])), len(b)/PageSize)
}

func movePages(b []byte, node int) (moved int, err error) {
	addrs := make([]uintptr, len(b)/PageSize)
	for i := range addrs {
		addrs[i] = uintptr(unsafe.Pointer(&b[i*PageSize]))
	}
	status, err := numa.Move(addrs, node)
	if err != nil {
		return 0, err
	}
	for _, s := range status {
		if int(s) == node {
			moved++
		}
	}
	return moved, nil
}

// framesMoved counts the pages of b whose page frame changed between two
// pfns snapshots: a migration that really happened (a page already on the
// target node, or not present, does not count).
func framesMoved(before, after []uint64) int {
	n := 0
	for i := range before {
		if before[i] != 0 && after[i] != 0 && before[i] != after[i] {
			n++
		}
	}
	return n
}

// collapse makes the THP segment one PMD-mapped huge page again and hints
// its pages: the collapsed PMD is dirty, so a tracker may report them all.
func collapse(ws *Workset, seg *Segment) bool {
	b := seg.Bytes(ws)
	if kb, _ := anonHugeKB(ws.Addr(seg.FirstID), ws.Addr(seg.FirstID)+uintptr(len(b))); kb < len(b)/1024 {
		_ = unix.Madvise(b, unix.MADV_COLLAPSE)
		ws.Hint(seg.Off, seg.Pages, "thp-collapse")
	}
	kb, _ := anonHugeKB(ws.Addr(seg.FirstID), ws.Addr(seg.FirstID)+uintptr(len(b)))
	return kb >= len(b)/1024
}

func runMigration(e *Scene) error {
	if err := anySwap(); err != nil {
		return err
	}
	e.pauseKhugepaged()
	const n = 64
	per := HugePage / PageSize
	// A 4 KiB segment at the start, a THP segment in the second 2 MiB.
	ws, err := e.Workset(2 * per)
	if err != nil {
		return err
	}
	small, err := ws.Map("small", Anon, 0, n, -1)
	if err != nil {
		return err
	}
	huge, err := ws.Map("thp", AnonTHP, per, per, -1)
	if err != nil {
		return err
	}
	for id := range ws.IDs() {
		ws.Write(id)
	}
	t, err := e.StartTracking(ws)
	if err != nil {
		return err
	}
	nodes := numa.Nodes()
	if nodes < 2 {
		e.Note("one NUMA node: move_pages part skipped (boot with numa=fake=2); compaction only")
	}
	var ss swapStats
	moved, movedTHP, hugeEpochs := 0, 0, 0
	for ep := range e.Epochs {
		isHuge := collapse(ws, huge)
		if isHuge {
			hugeEpochs++
		}
		o := pickLDTOnly(e.Env, 0, n, n/8)
		// The THP gets process_vm_writev writes only: a CPU write would
		// set the PMD's D bit, a single-page pageout would split it.
		o.gup = append(o.gup, Pick(e.Rand, huge.FirstID, per, 16)...)
		path := func() error {
			sb, hb := small.Bytes(ws), huge.Bytes(ws)
			s0, _ := pfns(sb)
			h0, _ := pfns(hb)
			hugeBefore := collapseState(ws, huge)
			if nodes >= 2 && ep%2 == 0 {
				node := (ep/2)%2 ^ 1
				if _, err := movePages(sb, node); err != nil {
					return err
				}
				if _, err := movePages(hb, node); err != nil {
					return err
				}
			} else if err := writeFile("/proc/sys/vm/compact_memory", "1"); err != nil {
				return Skipf("compaction: %v", err)
			}
			s1, _ := pfns(sb)
			h1, _ := pfns(hb)
			moved += framesMoved(s0, s1)
			if hugeBefore && collapseState(ws, huge) && framesMoved(h0[:1], h1[:1]) == 1 {
				movedTHP++
			}
			return nil
		}
		if err := e.ldtOnlyEpoch(ws, t, o, nil, &ss, func() [][]byte { return [][]byte{small.Bytes(ws), huge.Bytes(ws)} }, path); err != nil {
			return err
		}
	}
	if err := e.Quiet(ws, t); err != nil {
		return err
	}
	e.Note("page frames changed by migration: %d 4 KiB pages, %d whole THPs (PMD-mapped before and after); THP formed in %d of %d epochs",
		moved, movedTHP, hugeEpochs, e.Epochs)
	if err := ss.require(e); err != nil {
		return err
	}
	if moved == 0 {
		return Skipf("no page frame of the 4 KiB segment changed: nothing was migrated")
	}
	if nodes >= 2 && movedTHP == 0 && e.Tracker == "pagemap-scan" {
		// Not a skip: the 4 KiB half of the scenario ran; the THP half
		// cannot under this tracker's mechanics.
		e.Note("THP half not reached under pagemap-scan: %s", uffdNoCollapse)
	} else if nodes >= 2 && movedTHP == 0 {
		return Skipf("no THP was migrated whole (PMD-mapped before and after, new frame): the huge-page migration path was not reached")
	}
	return nil
}

// uffdNoCollapse is why the THP paths are out of reach under pagemap-scan.
const uffdNoCollapse = "MADV_COLLAPSE (like khugepaged) refuses page tables with uffd-wp PTEs (SCAN_PTE_UFFD_WP), " +
	"which PAGEMAP_SCAN's async write-protection leaves everywhere: no THP forms again once split or swapped"

// collapseState reports whether seg is all PMD-mapped right now.
func collapseState(ws *Workset, seg *Segment) bool {
	start := ws.Addr(seg.FirstID)
	kb, _ := anonHugeKB(start, start+uintptr(seg.Pages*PageSize))
	return kb >= seg.Pages*PageSize/1024
}

func runTHP(e *Scene) error {
	if err := anySwap(); err != nil {
		return err
	}
	e.pauseKhugepaged()
	const blocks = 2
	n := blocks * HugePage / PageSize
	ws, seg, t, err := e.Populate(AnonTHP, n)
	if err != nil {
		return err
	}
	kb, _ := anonHugeKB(ws.Base, ws.End())
	e.Note("AnonHugePages after populating: %d KiB of %d", kb, n*4)
	if kb == 0 {
		return Skipf("no THP formed (transparent_hugepage must be madvise or always)")
	}
	per := HugePage / PageSize
	var ss swapStats
	collapsed, split := 0, 0
	for ep := range e.Epochs {
		blk := e.Rand.IntN(blocks)
		first := blk * per
		b := seg.Bytes(ws)[first*PageSize : (first+per)*PageSize]
		huge := func() bool {
			kb, _ := anonHugeKB(ws.Base, ws.End())
			es, err := pagemap.Read(0, ws.Addr(first), per)
			if err != nil || !es[0].Present() {
				return false
			}
			// A PMD-mapped THP: contiguous frames, and smaps agrees.
			for i := 1; i < per; i++ {
				if es[i].PFN() != es[0].PFN()+uint64(i) {
					return false
				}
			}
			return kb >= HugePage/1024
		}
		// Start from a PMD-mapped THP (the last pageout split or swapped
		// it), then collect: the collapse's dirty PMD is history.
		if !huge() {
			if err := unix.Madvise(b, unix.MADV_COLLAPSE); err == nil {
				collapsed++
			}
			ws.Hint(first, per, "thp-collapse")
		}
		if _, err := e.Collect(ws, t); err != nil {
			return err
		}
		wasHuge := huge()
		// LDT-only state in the THP: process_vm_writev leaves the PMD clean.
		for _, id := range Pick(e.Rand, first, per, 16) {
			if err := ws.WriteWith(id, pvWrite); err != nil {
				return fmt.Errorf("process_vm_writev into page %d: %w", id, err)
			}
		}
		switch ep % 3 {
		case 0: // split by zapping one 4 KiB page: the rest keeps its bits
			p := first + e.Rand.IntN(per)
			if err := unix.Madvise(ws.Page(p), unix.MADV_DONTNEED); err != nil {
				return err
			}
			ws.Expect(p, 0)
			delete(ws.written, p) // zapped: its content is gone, not written
			ws.Hint(first, per, "thp-split")
		case 1: // split by changing the protection of one 4 KiB page
			p := ws.Page(first + e.Rand.IntN(per))
			if err := unix.Mprotect(p, unix.PROT_READ); err != nil {
				return err
			}
			if err := unix.Mprotect(p, unix.PROT_READ|unix.PROT_WRITE); err != nil {
				return err
			}
			ws.Hint(first, per, "thp-split")
		case 2: // split, then collapse the split block back into a THP
			p := ws.Page(first + e.Rand.IntN(per))
			if err := unix.Mprotect(p, unix.PROT_READ); err != nil {
				return err
			}
			if err := unix.Mprotect(p, unix.PROT_READ|unix.PROT_WRITE); err != nil {
				return err
			}
			if err := unix.Madvise(b, unix.MADV_COLLAPSE); err != nil {
				e.Logf("MADV_COLLAPSE: %v", err)
			} else {
				collapsed++
			}
			ws.Hint(first, per, "thp-collapse")
		}
		if wasHuge && ep%3 != 2 && !huge() {
			split++
		}
		// Writes after the split/collapse too.
		for _, id := range Pick(e.Rand, first, per, 8) {
			ws.Write(id)
		}
		if err := ss.pageout(b); err != nil {
			return err
		}
		if err := e.Verify(ws); err != nil {
			return err
		}
		if _, err := e.Collect(ws, t); err != nil {
			return err
		}
		if err := e.Verify(ws); err != nil {
			return err
		}
	}
	if err := e.Quiet(ws, t); err != nil {
		return err
	}
	e.Note("THPs split %d times, MADV_COLLAPSE succeeded %d times", split, collapsed)
	if err := ss.require(e); err != nil {
		return err
	}
	if collapsed == 0 {
		return Skipf("MADV_COLLAPSE never succeeded: the collapse path was not reached")
	}
	if split == 0 {
		return Skipf("no PMD-mapped THP was split: the split path was not reached")
	}
	return nil
}

func runMprotect(e *Scene) error {
	if err := anySwap(); err != nil {
		return err
	}
	const n = 64
	ws, seg, t, err := e.Populate(Anon, n)
	if err != nil {
		return err
	}
	b := seg.Bytes(ws)
	rw := unix.PROT_READ | unix.PROT_WRITE
	var ss swapStats
	for ep := range e.Epochs {
		prot := unix.PROT_READ
		if ep%2 == 1 {
			prot = unix.PROT_NONE
		}
		o := pickLDTOnly(e.Env, 0, n, n/8)
		if err := e.prepLazy(ws, o.lazy); err != nil {
			return err
		}
		if _, err := e.Collect(ws, t); err != nil {
			return err
		}
		if err := e.prepLDTOnly(ws, o, &ss); err != nil {
			return err
		}
		for round := range 2 {
			for _, id := range Pick(e.Rand, 0, n, n/4) {
				if !slices.Contains(o.gup, id) && !slices.Contains(o.swapped, id) && !slices.Contains(o.lazy, id) {
					ws.Write(id)
				}
			}
			if err := unix.Mprotect(b, prot); err != nil {
				return err
			}
			if round == 0 {
				if err := unix.Mprotect(b, rw); err != nil {
					return err
				}
			}
		}
		// Page out and collect while protected: D lives in SAVED_DIRTY
		// (or the swap entry) now.
		if err := ss.pageout(b); err != nil {
			return err
		}
		if _, err := e.Collect(ws, t); err != nil {
			return err
		}
		if err := unix.Mprotect(b, rw); err != nil {
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

// mremapSeg is one segment of the mremap scenario and the places it
// cycles through (consecutive ones do not overlap).
type mremapSeg struct {
	seg    *Segment
	places []int
}

func runMremap(e *Scene) error {
	if err := anySwap(); err != nil {
		return err
	}
	e.pauseKhugepaged()
	const n = 256
	per := HugePage / PageSize
	ws, err := e.Workset(3584)
	if err != nil {
		return err
	}
	// A 1 MiB segment to 2 MiB aligned and unaligned places (PTEs move
	// one by one), a 2 MiB segment of 4 KiB pages between aligned places
	// (the whole page table moves: move_normal_pmd) and a PMD-mapped THP
	// (the huge PMD moves: move_huge_pmd).
	segs := []*mremapSeg{{places: []int{0, 513, 1024, 259, 768}}, {places: []int{1536, 2560}}, {places: []int{2048, 3072}}}
	for i, sp := range []struct {
		name string
		kind Kind
		n    int
	}{{"moving", Anon, n}, {"pmd-table", Anon, per}, {"thp", AnonTHP, per}} {
		if segs[i].seg, err = ws.Map(sp.name, sp.kind, segs[i].places[0], sp.n, -1); err != nil {
			return err
		}
	}
	for id := range ws.IDs() {
		ws.Write(id)
	}
	t, err := e.StartTracking(ws)
	if err != nil {
		return err
	}
	huge := segs[2].seg
	var ss swapStats
	thpMoves := 0
	for ep := range e.Epochs {
		collapse(ws, huge)
		o := pickLDTOnly(e.Env, 0, n, n/16)
		o2 := pickLDTOnly(e.Env, segs[1].seg.FirstID, per, 8)
		o.lazy, o.gup, o.swapped = append(o.lazy, o2.lazy...), append(o.gup, o2.gup...), append(o.swapped, o2.swapped...)
		o.gup = append(o.gup, Pick(e.Rand, huge.FirstID, per, 16)...)
		path := func() error {
			wasHuge := collapseState(ws, huge)
			for _, m := range segs {
				from, to := m.seg.Off, m.places[(ep+1)%len(m.places)]
				old := m.seg.Bytes(ws)
				dst := ws.mem[to*PageSize:]
				if _, err := unix.MremapPtr(unsafe.Pointer(&old[0]), uintptr(len(old)), unsafe.Pointer(&dst[0]), uintptr(len(old)), unix.MREMAP_MAYMOVE|unix.MREMAP_FIXED); err != nil {
					return fmt.Errorf("mremap %s %d -> %d: %w", m.seg.Name, from, to, err)
				}
				ws.Move(m.seg, to)
				// Keep the reservation whole: the old place becomes
				// PROT_NONE again (a new VMA, all soft-dirty).
				if _, err := unix.MmapPtr(-1, 0, unsafe.Pointer(&old[0]), uintptr(len(old)), unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_FIXED|unix.MAP_NORESERVE); err != nil {
					return err
				}
				ws.Hint(from, m.seg.Pages, "new-vma")
				ws.Hint(to, m.seg.Pages, "mremap")
			}
			if wasHuge && collapseState(ws, huge) {
				thpMoves++
			}
			for _, id := range Pick(e.Rand, 0, n, n/8) {
				ws.Write(id)
			}
			return nil
		}
		pageout := func() [][]byte { return [][]byte{segs[0].seg.Bytes(ws), segs[1].seg.Bytes(ws), huge.Bytes(ws)} }
		if err := e.ldtOnlyEpoch(ws, t, o, nil, &ss, pageout, path); err != nil {
			return err
		}
	}
	if err := e.Quiet(ws, t); err != nil {
		return err
	}
	e.Note("a PMD-mapped THP moved whole in %d of %d epochs", thpMoves, e.Epochs)
	if err := ss.require(e); err != nil {
		return err
	}
	if thpMoves == 0 {
		return Skipf("the THP segment was never PMD-mapped before and after its mremap: move_huge_pmd was not reached")
	}
	return nil
}

// coTracker is a second tracker on the same process with its own truth.
type coTracker struct {
	t       tracker.Tracker
	start   uintptr
	end     uintptr
	written tracker.Set
}

func (c *coTracker) wrote(addr uintptr) {
	if addr >= c.start && addr < c.end {
		c.written.Add(addr)
	}
}

// collect checks the co-tracker's own report against its truth.
func (c *coTracker) collect(e *Env) error {
	rs, err := c.t.Collect(c.start, c.end, true)
	if err != nil {
		return fmt.Errorf("co-tracker %s: %w", c.t.Name(), err)
	}
	missed, _ := tracker.Diff(tracker.NewSet(rs...), c.written)
	if missed.Len() > 0 {
		e.res.Missed += missed.Len()
		e.sample(fmt.Sprintf("co-tracker %s missed %d pages (first %#x)", c.t.Name(), missed.Len(), missed.Sorted()[0]))
	}
	c.written = tracker.Set{}
	return nil
}

func runCoexistence(e *Scene) error {
	const n = 64
	ws, seg, t, err := e.Populate(Anon, n)
	if err != nil {
		return err
	}
	var cos []*coTracker
	half := ws.Base + n/2*PageSize
	for _, c := range []struct {
		name       string
		start, end uintptr
	}{{"softdirty", ws.Base, ws.End()}, {"pagemap-scan", half, ws.End()}} {
		ct, err := tracker.Open(c.name, 0, c.start, c.end)
		if errors.Is(err, tracker.ErrUnsupported) {
			// The scenario claims both co-existence paths.
			return Skipf("co-tracker %s unavailable: %v", c.name, err)
		}
		if err != nil {
			return err
		}
		e.closeAtEnd(ct.Close)
		cos = append(cos, &coTracker{t: ct, start: c.start, end: c.end, written: tracker.Set{}})
		e.Note("co-tracker %s on [%#x,%#x)", c.name, c.start, c.end)
	}
	write := func(k int) {
		for _, id := range Pick(e.Rand, 0, n, k) {
			ws.Write(id)
			for _, c := range cos {
				c.wrote(ws.Addr(id))
			}
		}
	}
	wrote := func(ids []int) {
		for _, id := range ids {
			for _, c := range cos {
				c.wrote(ws.Addr(id))
			}
		}
	}
	var ss swapStats
	for range e.Epochs {
		o := pickLDTOnly(e.Env, 0, n, n/16)
		if err := e.prepLazy(ws, o.lazy); err != nil {
			return err
		}
		wrote(o.lazy)
		if _, err := e.Collect(ws, t); err != nil {
			return err
		}
		if err := e.prepLDTOnly(ws, o, &ss); err != nil {
			return err
		}
		wrote(o.gup)
		wrote(o.swapped)
		// Each co-tracker clears (write-protects) mid-epoch, between
		// writes the tracker under test must all report.
		for _, c := range cos {
			write(n / 4)
			if err := c.collect(e.Env); err != nil {
				return err
			}
		}
		write(n / 4)
		if err := ss.pageout(seg.Bytes(ws)); err != nil {
			return err
		}
		if err := e.Verify(ws); err != nil {
			return err
		}
		if _, err := e.Collect(ws, t); err != nil {
			return err
		}
		if err := e.Verify(ws); err != nil {
			return err
		}
	}
	for _, c := range cos {
		if err := c.collect(e.Env); err != nil {
			return err
		}
	}
	if err := e.Quiet(ws, t); err != nil {
		return err
	}
	return ss.require(e)
}
