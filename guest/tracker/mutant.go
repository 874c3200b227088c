package tracker

import (
	"fmt"

	"ldtlab/guest/ldt"
	"ldtlab/guest/pagemap"
)

// Mutants are deliberately broken trackers built on /dev/ldt, one per class
// of bug the catalogue claims to catch. They are the proof that a PASS
// means something: each must fail the catalogue (tests/check_test.go and
// `labctl check --tracker mutant-...`). They are not in Names(), so the
// default run does not show them.
//
//	mutant-all       reports the whole range on every collection (over-reporting, a clear that does not clear)
//	mutant-noswapin  forgets pages that came back from swap (PFN changed, hardware-clean PTE)
//	mutant-pfn       forgets every page whose page frame changed since the last collection (migration, swap-in)
//
// The fourth class, dropping the LDT-backup bit, is naive itself.
func Mutants() []string { return []string{"mutant-all", "mutant-noswapin", "mutant-pfn"} }

// Known reports whether name is a tracker Open accepts (a mutant included).
func Known(name string) bool {
	_, ok := trackers[name]
	return ok
}

func init() {
	for _, m := range Mutants() {
		trackers[m] = openMutant
	}
}

// mutant wraps a real ldt tracker and corrupts its answer.
type mutant struct {
	name  string
	inner *ldtTracker
	pm    *pagemap.File
	// pfn is each page's frame at the last collection (0: not present).
	pfn map[uintptr]uint64
}

func openMutant(name string, pid int, start, end uintptr) (Tracker, error) {
	t, err := openLDT("ldt", pid, start, end)
	if err != nil {
		return nil, fmt.Errorf("tracker %s: %w", name, err)
	}
	m := &mutant{name: name, inner: t.(*ldtTracker), pfn: map[uintptr]uint64{}}
	if name != "mutant-all" {
		if m.pm, err = pagemap.Open(pid); err != nil {
			t.Close()
			return nil, fmt.Errorf("tracker %s: %w", name, err)
		}
		// Remember the frames now, so the first collection already
		// knows which pages moved (not for a whole address space).
		if end-start <= 1<<30 {
			fr, err := m.frames(start, end)
			if err != nil {
				m.Close()
				return nil, err
			}
			m.remember(start, fr)
		}
	}
	return m, nil
}

func (m *mutant) Name() string { return m.name }

func (m *mutant) Close() error {
	if m.pm != nil {
		m.pm.Close()
	}
	return m.inner.Close()
}

// frames reads the page frames of [start,end) (0 where not present).
func (m *mutant) frames(start, end uintptr) ([]uint64, error) {
	// A gone address space reads as ESRCH: what /dev/ldt says too.
	out, err := m.pm.Frames(start, int((end-start)/PageSize))
	if err != nil {
		return nil, fmt.Errorf("tracker %s: %w", m.name, err)
	}
	return out, nil
}

func (m *mutant) Collect(start, end uintptr, clear bool) ([]Region, error) {
	if m.name == "mutant-all" {
		if _, err := m.inner.Collect(start, end, clear); err != nil {
			return nil, err
		}
		if start == end {
			return nil, nil
		}
		return []Region{{start, end}}, nil
	}
	// The hardware-dirty pages, read before the real collection clears
	// them: a page whose frame changed but whose PTE is dirty was moved
	// (migration keeps D), one whose PTE is clean came back from swap.
	var hw Set
	if m.name == "mutant-noswapin" {
		rs, err := m.inner.f.CollectAll(start, end, ldt.Naive)
		if err != nil {
			return nil, fmt.Errorf("tracker %s: %w", m.name, err)
		}
		hw = Set{}
		for _, r := range rs {
			hw.AddRegions(Region{uintptr(r.Start), uintptr(r.End)})
		}
	}
	rs, err := m.inner.Collect(start, end, clear)
	if err != nil {
		return nil, err
	}
	fr, err := m.frames(start, end)
	if err != nil {
		return nil, err
	}
	keep := Set{}
	for _, p := range Pages(rs) {
		i := int((p - start) / PageSize)
		old, seen := m.pfn[p]
		moved := seen && fr[i] != 0 && old != fr[i]
		if moved && (m.name == "mutant-pfn" || !hw.Has(p)) {
			continue // the bug: forget it
		}
		keep.Add(p)
	}
	m.remember(start, fr)
	return keep.Regions(), nil
}

func (m *mutant) remember(start uintptr, fr []uint64) {
	for i, f := range fr {
		if f != 0 {
			m.pfn[start+uintptr(i)*PageSize] = f
		}
	}
}
