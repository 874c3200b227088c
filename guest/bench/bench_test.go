package bench

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRotate(t *testing.T) {
	xs := []string{"a", "b", "c"}
	for _, tc := range []struct {
		k    int
		want []string
	}{
		{0, []string{"a", "b", "c"}},
		{1, []string{"b", "c", "a"}},
		{5, []string{"c", "a", "b"}},
	} {
		assert.Equal(t, tc.want, rotate(xs, tc.k))
	}
	assert.Equal(t, []string{"a", "b", "c"}, xs, "rotate must not modify its input")
}

func TestMappingAlignedAndPopulated(t *testing.T) {
	for _, thp := range []bool{false, true} {
		m, err := newMapping(4<<20, thp)
		require.NoError(t, err)
		assert.Zero(t, m.start()%hugeSize, "2 MiB aligned")
		assert.Equal(t, 1024, m.pages())
		for p := 0; p < len(m.mem); p += pageSize {
			require.Equal(t, byte(1), m.mem[p], "page %d populated", p/pageSize)
		}
		assert.GreaterOrEqual(t, m.hugeKB(), 0, "the VMA is found in smaps")
		if !thp {
			assert.Zero(t, m.hugeKB(), "MADV_NOHUGEPAGE region has no huge pages")
		}
		m.close()
	}
}

func TestWritePagesStep(t *testing.T) {
	m, err := newMapping(2<<20, false)
	require.NoError(t, err)
	defer m.close()
	for _, tc := range []struct{ n, step, want int }{
		{4096, 1, 512}, {1, 1, 512}, {1, 10, 52}, {1, 1000, 1},
	} {
		assert.Equal(t, tc.want, writePages(m, tc.n, tc.step, 9), "n=%d step=%d", tc.n, tc.step)
	}
	assert.Equal(t, src[1:8], m.mem[1:8], "full-page writes copied the pattern")
	assert.Equal(t, byte(9), m.mem[0], "1-byte writes landed")
}

func TestNoneTrackerCollectsNothing(t *testing.T) {
	m, err := newMapping(2<<20, false)
	require.NoError(t, err)
	defer m.close()
	tr, err := openTracker("none", m)
	require.NoError(t, err)
	n, d, err := collect(tr, m)
	require.NoError(t, err)
	assert.Zero(t, n)
	assert.Zero(t, d)
}
