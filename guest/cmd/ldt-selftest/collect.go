package main

import (
	"fmt"

	"ldtlab/guest/ldt"
)

// Checks of what a collection reports, in this process.

func checkBasic() error {
	return withSelf(16, func(f *ldt.File, m *mapping) error {
		b := uint64(m.base)
		if err := expect(f, m.base, m.end(), 0, nil, "fresh"); err != nil {
			return err
		}
		m.write(1, 2, 7)
		want := pageRegions(b, 1, 3, 7, 8)
		for _, step := range []struct {
			flags ldt.Flags
			want  []ldt.Region
			what  string
		}{
			{0, want, "after writes"},
			{0, want, "read-only collect must not clear"},
			{ldt.Clear, want, "collect+clear"},
			{0, nil, "after clear"},
		} {
			if err := expect(f, m.base, m.end(), step.flags, step.want, step.what); err != nil {
				return err
			}
		}
		sink += m.mem[9*pg] // a read is not a write
		m.write(4)
		return expect(f, m.base, m.end(), ldt.Clear, pageRegions(b, 4, 5), "second epoch")
	})
}

func checkMerge() error {
	return withSelf(16, func(f *ldt.File, m *mapping) error {
		for p := 0; p < 10; p++ {
			m.write(p)
		}
		m.write(12, 15)
		return expect(f, m.base, m.end(), ldt.Clear, pageRegions(uint64(m.base), 0, 10, 12, 13, 15, 16), "merge")
	})
}

func checkWalkEnd() error {
	return withSelf(16, func(f *ldt.File, m *mapping) error {
		b := uint64(m.base)
		m.write(1, 3, 5, 7, 8)
		want := pageRegions(b, 1, 2, 3, 4, 5, 6, 7, 9)
		vec := make([]ldt.Region, 1)
		var got []ldt.Region
		cur := m.base
		for i := 0; cur < m.end(); i++ {
			if i > len(want)+1 {
				return fmt.Errorf("no end after %d calls with vec_len 1 (walk_end %#x)", i, cur)
			}
			n, we, err := f.Collect(cur, m.end(), ldt.Clear, vec)
			if err != nil {
				return fmt.Errorf("call %d: %w", i, err)
			}
			if we <= cur || we > m.end() {
				return fmt.Errorf("call %d: walk_end %#x outside (%#x,%#x]", i, we, cur, m.end())
			}
			if n == 1 {
				if uint64(we) < vec[0].End {
					return fmt.Errorf("call %d: walk_end %#x before the end of the region reported %s", i, we, fmtRegions(b, vec))
				}
				// A kernel may split a run at a resumption point; join
				// pieces as CollectAll does (merging has its own check).
				if k := len(got); k > 0 && got[k-1].End == vec[0].Start {
					got[k-1].End = vec[0].End
				} else {
					got = append(got, vec[0])
				}
			}
			if i == 0 {
				// Clear applies only to what was reported: the rest
				// must still be there.
				if err := expect(f, m.base, m.end(), 0, want[1:], "after the first vec_len 1 call with LDT_CLEAR"); err != nil {
					return err
				}
			}
			cur = we
		}
		if !sameRegions(got, want) {
			return fmt.Errorf("resumed walk returned %s, want %s", fmtRegions(b, got), fmtRegions(b, want))
		}
		return expect(f, m.base, m.end(), 0, nil, "after the resumed clear")
	})
}

// checkCollectCounts: the entries a collection decided on and rewrote
// (struct ldt_collect visited and changed, 0026). The walk decides on every
// entry of the range whose page table exists, a PMD leaf being one; Clear
// rewrites exactly the entries it reported; a call that a full vec stopped
// has not decided on the entry it stopped at.
func checkCollectCounts() error {
	const n = 16
	return withSelf(n, func(f *ldt.File, m *mapping) error {
		if _, _, ok := f.Entries(); !ok {
			return fmt.Errorf("the kernel reports no counts (a series before 0026)")
		}
		m.write(1, 2, 7)
		for _, step := range []struct {
			flags            ldt.Flags
			vecLen           int
			visited, changed []int64 // per call
			what             string
		}{
			{0, n, []int64{n}, []int64{0}, "collect"},
			{ldt.Clear, n, []int64{n}, []int64{3}, "collect+clear"},
			{ldt.Clear, n, []int64{n}, []int64{0}, "collect+clear, nothing written"},
			// p1-2 fill the vec; p7 stops the first call there.
			{ldt.Clear, 1, []int64{7, 9}, []int64{2, 1}, "collect+clear, vec_len 1"},
		} {
			if step.vecLen == 1 {
				m.write(1, 2, 7)
			}
			vec := make([]ldt.Region, step.vecLen)
			var visited, changed []int64
			for cur := m.base; cur < m.end(); {
				v0, c0, _ := f.Entries()
				_, we, err := f.Collect(cur, m.end(), step.flags, vec)
				if err != nil {
					return fmt.Errorf("%s: %w", step.what, err)
				}
				v1, c1, _ := f.Entries()
				visited, changed = append(visited, v1-v0), append(changed, c1-c0)
				if we <= cur || len(visited) > 4 {
					return fmt.Errorf("%s: walk_end %#x from %#x", step.what, we, cur)
				}
				cur = we
			}
			if fmt.Sprint(visited, changed) != fmt.Sprint(step.visited, step.changed) {
				return fmt.Errorf("%s: visited %v changed %v per call, want %v and %v", step.what, visited, changed, step.visited, step.changed)
			}
		}
		return nil
	})
}
