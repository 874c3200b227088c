package checkpoint

import (
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestMapsSelf(t *testing.T) {
	rs, err := maps(os.Getpid())
	require.NoError(t, err)
	require.NotEmpty(t, rs, "a Go process has writable private mappings")
	for _, r := range rs {
		assert.Less(t, r.start, r.end)
		assert.Zero(t, r.start%pageSize)
		assert.Less(t, uint64(r.end), uint64(userEnd)+1)
	}
}

func TestRunBadTarget(t *testing.T) {
	tests := []struct {
		name string
		o    Options
	}{
		{"no rounds", Options{Tracker: "ldt", Pid: os.Getpid(), Rounds: 0}},
		{"no such pid", Options{Tracker: "ldt", Pid: 1 << 30, Rounds: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := Run(tt.o)
			assert.Equal(t, "fail", res.Outcome)
			assert.False(t, res.AsExpected)
			assert.NotEmpty(t, res.Reason)
		})
	}
}

// TestSubtract: only address ranges not mapped at the last round are new,
// so a VMA that grows, merges or splits is not copied whole again.
func TestSubtract(t *testing.T) {
	r := func(a, b uintptr) region { return region{start: a, end: b} }
	cases := []struct {
		name string
		in   region
		old  []region
		want []region
	}{
		{"all new", r(0x1000, 0x3000), nil, []region{r(0x1000, 0x3000)}},
		{"unchanged", r(0x1000, 0x3000), []region{r(0x1000, 0x3000)}, nil},
		{"grew up", r(0x1000, 0x5000), []region{r(0x1000, 0x3000)}, []region{r(0x3000, 0x5000)}},
		{"grew down", r(0x1000, 0x5000), []region{r(0x3000, 0x5000)}, []region{r(0x1000, 0x3000)}},
		{"merged two", r(0x1000, 0x5000), []region{r(0x1000, 0x2000), r(0x4000, 0x5000)}, []region{r(0x2000, 0x4000)}},
		{"split part", r(0x2000, 0x3000), []region{r(0x1000, 0x5000)}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, subtract(tc.in, tc.old))
		})
	}
}
