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
	}{
		{"collapse, no zap: ldt keeps it", "ldt", shm, pageState{coll: true}, ""},
		{"collapse, no zap: soft-dirty's gap", "softdirty", shm, pageState{coll: true}, GapShmemCollapse},
		{"zap after the collapse: the zap excuses ldt", "ldt", shm, pageState{coll: true, zapped: true}, GapSharedZap},
		{"zap alone", "ldt", shm, pageState{zapped: true}, GapSharedZap},
		{"a zap on private memory is no excuse", "ldt", anon, pageState{zapped: true}, ""},
		{"nothing happened", "softdirty", shm, pageState{}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, gapFor(tc.tracker, tc.spec, &tc.st, []string{"cpu"}))
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
