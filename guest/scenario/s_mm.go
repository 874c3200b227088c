package scenario

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"ldtlab/guest/tracker"
)

func init() {
	register(&Scenario{
		Name:  "ksm",
		Paths: "15 (S1+S2)",
		Doc: "MADV_MERGEABLE pages written with identical content are merged by ksmd (write_protect_page cleans the PTE, " +
			"replace_page maps the KSM page clean); later writes break the sharing (COW).",
		Naive: MissPages,
		Known: map[string]string{
			"softdirty": "mm/ksm.c replace_page() installs the KSM page with mk_pte(), without the soft-dirty bit, so a page written and merged before the collection is not reported",
		},
		Run: runKSM,
	})
	register(&Scenario{
		Name:  "migration",
		Paths: "4, 6 (S2)",
		Doc: "written pages migrated between fake NUMA nodes with move_pages (needs numa=fake=2) and by " +
			"/proc/sys/vm/compact_memory; the dirty state must survive the migration entry.",
		Naive: Nothing,
		Run:   runMigration,
	})
	register(&Scenario{
		Name:  "thp-split-collapse",
		Paths: "7, 8 (S1+S2)",
		Doc: "PMD-mapped THPs written then split (MADV_DONTNEED / mprotect of 4 KiB inside) and collapsed again " +
			"(MADV_COLLAPSE); the PMD's dirtiness must reach every PTE and back.",
		Naive: Nothing,
		Run:   runTHP,
	})
	register(&Scenario{
		Name:  "mprotect",
		Paths: "13 (S1+S2)",
		Doc:   "writes followed by RW→RO and RW→PROT_NONE cycles (pte_modify moves D into SAVED_DIRTY and back); collections run while protected.",
		Naive: Nothing,
		Run:   runMprotect,
	})
	register(&Scenario{
		Name:  "mremap",
		Paths: "14",
		Doc:   "written pages moved with mremap(MAYMOVE|FIXED) to 2 MiB aligned and unaligned places: reported at the new address.",
		Naive: Nothing,
		NotFor: map[string]string{
			"pagemap-scan": "mremap drops a VMA's userfaultfd registration unless UFFD_FEATURE_EVENT_REMAP, which needs a fault-handling thread the async mode does not have",
		},
		Run: runMremap,
	})
	register(&Scenario{
		Name:  "coexistence",
		Paths: "16, 17",
		Doc: "soft-dirty (clear_refs) and userfaultfd async write-protection (PAGEMAP_SCAN) track and clear the same " +
			"process while LDT does: every tracker must still see every write.",
		Naive: Nothing,
		NotFor: map[string]string{
			"softdirty":    "the scenario runs soft-dirty itself as the co-tracker; clear_refs is process-wide, so it cannot also be the tracker under test",
			"pagemap-scan": "the scenario runs PAGEMAP_SCAN itself as the co-tracker; a VMA takes only one userfaultfd",
		},
		Run: runCoexistence,
	})
}

// ksmKnobs saves and restores /sys/kernel/mm/ksm settings.
type ksmKnobs map[string]string

const ksmDir = "/sys/kernel/mm/ksm/"

func saveKSM() (ksmKnobs, error) {
	k := ksmKnobs{}
	for _, n := range []string{"run", "pages_to_scan", "sleep_millisecs"} {
		b, err := os.ReadFile(ksmDir + n)
		if err != nil {
			return nil, err
		}
		k[n] = string(b)
	}
	return k, nil
}

func (k ksmKnobs) restore() error {
	var errs []error
	for _, n := range []string{"pages_to_scan", "sleep_millisecs", "run"} {
		errs = append(errs, writeFile(ksmDir+n, k[n]))
	}
	return errors.Join(errs...)
}

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

func runKSM(e *Env) (err error) {
	if _, err := os.Stat(ksmDir + "run"); err != nil {
		return Skipf("no KSM (%v)", err)
	}
	knobs, err := saveKSM()
	if err != nil {
		return err
	}
	defer func() {
		if rerr := knobs.restore(); rerr != nil && err == nil {
			err = rerr
		}
	}()
	const n = 64
	ws, seg, t, err := populated(e, Anon, n)
	if err != nil {
		return err
	}
	defer ws.Close()
	defer t.Close()
	if err := unix.Madvise(seg.Bytes(ws), unix.MADV_MERGEABLE); err != nil {
		return fmt.Errorf("MADV_MERGEABLE: %w", err)
	}
	for k, v := range map[string]string{"pages_to_scan": "4096", "sleep_millisecs": "10", "run": "1"} {
		if err := writeFile(ksmDir+k, v); err != nil {
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
	e.Note("KSM merged pages in %d of %d epochs", merged, e.Epochs)
	if merged == 0 {
		return Skipf("ksmd merged nothing: the merge path was not exercised")
	}
	return nil
}

// pfns returns the page frame numbers of b's pages (0 when not present
// or when not root).
func pfns(b []byte) ([]uint64, error) {
	es, err := pagemap(0, uintptr(unsafe.Pointer(&b[0])), len(b)/PageSize)
	if err != nil {
		return nil, err
	}
	for i, v := range es {
		if v&pmPresent != 0 {
			es[i] = v & pmPFN
		} else {
			es[i] = 0
		}
	}
	return es, nil
}

func movePages(b []byte, node int) (moved int, err error) {
	n := len(b) / PageSize
	addrs := make([]uintptr, n)
	nodes := make([]int32, n)
	status := make([]int32, n)
	for i := range n {
		addrs[i] = uintptr(unsafe.Pointer(&b[i*PageSize]))
		nodes[i] = int32(node)
	}
	_, _, e := unix.Syscall6(unix.SYS_MOVE_PAGES, 0, uintptr(n), uintptr(unsafe.Pointer(&addrs[0])),
		uintptr(unsafe.Pointer(&nodes[0])), uintptr(unsafe.Pointer(&status[0])), unix.MPOL_MF_MOVE)
	if e != 0 {
		return 0, fmt.Errorf("move_pages: %w", e)
	}
	for _, s := range status {
		if int(s) == node {
			moved++
		}
	}
	return moved, nil
}

func runMigration(e *Env) error {
	const n = 64
	ws, seg, t, err := populated(e, Anon, n)
	if err != nil {
		return err
	}
	defer ws.Close()
	defer t.Close()
	nodes := numaNodes()
	if nodes < 2 {
		e.Note("one NUMA node: move_pages part skipped (boot with numa=fake=2); compaction only")
	}
	movedNUMA, movedCompact := 0, 0
	for ep := range e.Epochs {
		for _, id := range Pick(e.Rand, 0, n, n/2) {
			ws.Write(id)
		}
		b := seg.Bytes(ws)
		if nodes >= 2 && ep%2 == 0 {
			m, err := movePages(b, (ep/2)%2^1)
			if err != nil {
				return err
			}
			movedNUMA += m
		} else {
			before, _ := pfns(b)
			if err := writeFile("/proc/sys/vm/compact_memory", "1"); err != nil {
				return Skipf("compaction: %v", err)
			}
			after, _ := pfns(b)
			for i := range before {
				if before[i] != 0 && after[i] != 0 && before[i] != after[i] {
					movedCompact++
				}
			}
		}
		if _, err := e.Collect(ws, t); err != nil {
			return err
		}
		if err := e.Verify(ws); err != nil {
			return err
		}
	}
	e.Note("pages migrated: %d by move_pages, %d seen moving under compaction", movedNUMA, movedCompact)
	if movedNUMA+movedCompact == 0 {
		e.Note("WARNING: no page of the working set was migrated; the scenario had no teeth this run")
	}
	return nil
}

func runTHP(e *Env) error {
	const blocks = 2
	n := blocks * HugePage / PageSize
	ws, seg, t, err := populated(e, AnonTHP, n)
	if err != nil {
		return err
	}
	defer ws.Close()
	defer t.Close()
	kb, _ := anonHugeKB(ws.Base, ws.End())
	e.Note("AnonHugePages after populating: %d KiB of %d", kb, n*4)
	if kb == 0 {
		return Skipf("no THP formed (transparent_hugepage must be madvise or always)")
	}
	per := HugePage / PageSize
	collapsed := 0
	for ep := range e.Epochs {
		blk := e.Rand.IntN(blocks)
		first := blk * per
		for _, id := range Pick(e.Rand, first, per, 16) {
			ws.Write(id)
		}
		b := seg.Bytes(ws)[first*PageSize : (first+per)*PageSize]
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
		case 2: // collapse the (split) block back into a THP
			if err := unix.Madvise(b, unix.MADV_COLLAPSE); err != nil {
				e.Logf("MADV_COLLAPSE: %v", err)
			} else {
				collapsed++
			}
			ws.Hint(first, per, "thp-collapse")
		}
		// Writes after the split/collapse too.
		for _, id := range Pick(e.Rand, first, per, 8) {
			ws.Write(id)
		}
		if _, err := e.Collect(ws, t); err != nil {
			return err
		}
		if err := e.Verify(ws); err != nil {
			return err
		}
	}
	e.Note("MADV_COLLAPSE succeeded %d times", collapsed)
	return nil
}

func runMprotect(e *Env) error {
	const n = 64
	ws, seg, t, err := populated(e, Anon, n)
	if err != nil {
		return err
	}
	defer ws.Close()
	defer t.Close()
	b := seg.Bytes(ws)
	rw := unix.PROT_READ | unix.PROT_WRITE
	for ep := range e.Epochs {
		prot := unix.PROT_READ
		if ep%2 == 1 {
			prot = unix.PROT_NONE
		}
		for round := range 2 {
			for _, id := range Pick(e.Rand, 0, n, n/4) {
				ws.Write(id)
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
		// Collect while protected: D lives in SAVED_DIRTY now.
		st, err := t.Collect(ws.Base, ws.End(), true)
		if err != nil {
			return err
		}
		e.Record(ws.Judge(st))
		if err := unix.Mprotect(b, rw); err != nil {
			return err
		}
		if err := e.Verify(ws); err != nil {
			return err
		}
	}
	return nil
}

func runMremap(e *Env) error {
	const n = 256
	// Places the segment cycles through: 2 MiB aligned (whole page
	// tables may move) and unaligned; consecutive ones do not overlap.
	places := []int{0, 513, 1024, 259, 768}
	ws, err := NewWorkset(e.Seed, 1536)
	if err != nil {
		return err
	}
	defer ws.Close()
	seg, err := ws.Map("moving", Anon, 0, n, -1)
	if err != nil {
		return err
	}
	for id := range n {
		ws.Write(id)
	}
	t, err := e.Track(ws)
	if err != nil {
		return err
	}
	defer t.Close()
	ws.Judge(nil)
	for ep := range e.Epochs {
		for _, id := range Pick(e.Rand, 0, n, n/4) {
			ws.Write(id)
		}
		from, to := seg.Off, places[(ep+1)%len(places)]
		old := seg.Bytes(ws)
		dst := ws.mem[to*PageSize:]
		if _, err := unix.MremapPtr(unsafe.Pointer(&old[0]), uintptr(len(old)), unsafe.Pointer(&dst[0]), uintptr(len(old)), unix.MREMAP_MAYMOVE|unix.MREMAP_FIXED); err != nil {
			return fmt.Errorf("mremap %d -> %d: %w", from, to, err)
		}
		ws.Move(seg, to)
		// Keep the reservation whole: the old place becomes PROT_NONE
		// again (a new VMA, all soft-dirty).
		if _, err := unix.MmapPtr(-1, 0, unsafe.Pointer(&old[0]), uintptr(len(old)), unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_FIXED|unix.MAP_NORESERVE); err != nil {
			return err
		}
		ws.Hint(from, n, "new-vma")
		ws.Hint(to, n, "mremap")
		for _, id := range Pick(e.Rand, 0, n, n/8) {
			ws.Write(id)
		}
		if _, err := e.Collect(ws, t); err != nil {
			return err
		}
		if err := e.Verify(ws); err != nil {
			return err
		}
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

func runCoexistence(e *Env) error {
	const n = 64
	ws, seg, t, err := populated(e, Anon, n)
	if err != nil {
		return err
	}
	defer ws.Close()
	defer t.Close()
	_ = seg
	var cos []*coTracker
	half := ws.Base + n/2*PageSize
	for _, c := range []struct {
		name       string
		start, end uintptr
	}{{"softdirty", ws.Base, ws.End()}, {"pagemap-scan", half, ws.End()}} {
		ct, err := tracker.Open(c.name, 0, c.start, c.end)
		if errors.Is(err, tracker.ErrUnsupported) {
			e.Note("co-tracker %s unavailable: %v", c.name, err)
			continue
		}
		if err != nil {
			return err
		}
		defer ct.Close()
		cos = append(cos, &coTracker{t: ct, start: c.start, end: c.end, written: tracker.Set{}})
		e.Note("co-tracker %s on [%#x,%#x)", c.name, c.start, c.end)
	}
	if len(cos) == 0 {
		return Skipf("neither soft-dirty nor PAGEMAP_SCAN available as a co-tracker")
	}
	write := func(k int) {
		for _, id := range Pick(e.Rand, 0, n, k) {
			ws.Write(id)
			for _, c := range cos {
				c.wrote(ws.Addr(id))
			}
		}
	}
	for range e.Epochs {
		// Each co-tracker clears (write-protects) mid-epoch, between
		// writes the tracker under test must all report.
		for _, c := range cos {
			write(n / 4)
			if err := c.collect(e); err != nil {
				return err
			}
		}
		write(n / 4)
		if _, err := e.Collect(ws, t); err != nil {
			return err
		}
		if err := e.Verify(ws); err != nil {
			return err
		}
	}
	return nil
}

var _ = strconv.Itoa
