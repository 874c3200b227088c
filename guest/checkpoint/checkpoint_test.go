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
