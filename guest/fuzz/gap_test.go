package fuzz

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// A lost page is excused only by its tracker's documented gap; a shmem
// collapse over a write no zap took decides alone (for ldt: a finding).
func TestGapFor(t *testing.T) {
	shm := RegionSpec{Kind: KMemfd, Pages: 512}
	anon := RegionSpec{Kind: KAnon, Pages: 16}
	for _, tc := range []struct {
		name    string
		tracker string
		spec    RegionSpec
		st      pageState
		want    string
		srcs    []string
	}{
		{"collapse, no zap: ldt keeps it", "ldt", shm, pageState{coll: true}, "", nil},
		{"collapse, no zap: soft-dirty's gap", "softdirty", shm, pageState{coll: true}, GapShmemCollapse, nil},
		{"zap after the collapse: the zap excuses ldt", "ldt", shm, pageState{coll: true, zapped: true}, GapSharedZap, nil},
		{"zap alone", "ldt", shm, pageState{zapped: true}, GapSharedZap, nil},
		{"a zap on private memory is no excuse", "ldt", anon, pageState{zapped: true}, "", nil},
		{"nothing happened", "softdirty", shm, pageState{}, "", nil},
		// A retract over a page another process wrote through its pin
		// (fuzz seed 3 on 0001-0024: xpin, xwrite, khugepaged).
		{"collapse over a pin write: PAGEMAP_SCAN's pin gap", "pagemap-scan", shm, pageState{coll: true}, GapPinWrite, []string{OpXWrite}},
		{"collapse over a pin write: ldt has no excuse", "ldt", shm, pageState{coll: true}, "", []string{OpXWrite}},
		// A failed O_DIRECT read over the range before a write through
		// the process's own fixed buffer (fuzz seed 5 on 0001-0025:
		// uring-reg, collect, mprotect r, odirect, uring-read-fixed).
		{"failed read beside a pin write: soft-dirty's pin gap", "softdirty", anon, pageState{}, GapPinWrite, []string{"odirect-failed", OpUReadFix}},
		{"failed read beside a pin write: ldt has no excuse", "ldt", anon, pageState{}, "", []string{"odirect-failed", OpUReadFix}},
		{"a failed read alone is owed a report", "softdirty", anon, pageState{}, "", []string{"odirect-failed"}},
		{"a failed read beside a CPU write excuses nothing", "softdirty", anon, pageState{}, "", []string{"cpu", "odirect-failed", OpUReadFix}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srcs := tc.srcs
			if srcs == nil {
				srcs = []string{"cpu"}
			}
			assert.Equal(t, tc.want, gapFor(tc.tracker, tc.spec, &tc.st, srcs))
		})
	}
}

// A failed read is blamed for a change only when no writer outside the
// tracked mm could have made it (fileRead).
func TestPageStateExternal(t *testing.T) {
	for _, tc := range []struct {
		srcs []string
		want bool
	}{
		{nil, false},
		{[]string{"cpu"}, false},
		{[]string{"lazyfree"}, false}, // a discard: the read is still blamed
		{[]string{"cpu", "fork-child"}, true},
	} {
		var st pageState
		for i, s := range tc.srcs {
			st.add(i, s)
		}
		assert.Equal(t, tc.want, st.external(), "%v", tc.srcs)
	}
}
