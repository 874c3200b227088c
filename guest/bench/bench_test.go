package bench

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ldtlab/guest/tracker"
)

func TestOrderIsARandomPermutationPerRepetition(t *testing.T) {
	p := QuickPlan()
	seen := map[string]bool{}
	for rep := 0; rep < 8; rep++ {
		o := p.order("writeonly", rep, 6)
		assert.ElementsMatch(t, []int{0, 1, 2, 3, 4, 5}, o, "a permutation")
		assert.Equal(t, o, p.order("writeonly", rep, 6), "the seed decides the order")
		seen[fmt.Sprint(o)] = true
	}
	assert.Greater(t, len(seen), 4, "repetitions run in different orders")
	q := p
	q.Seed++
	differs := false
	for rep := 0; rep < 8; rep++ {
		differs = differs || fmt.Sprint(p.order("writeonly", rep, 6)) != fmt.Sprint(q.order("writeonly", rep, 6))
	}
	assert.True(t, differs, "another seed, another order")
}

func TestPlans(t *testing.T) {
	for name, mk := range Plans {
		p := mk()
		assert.Equal(t, name, p.Name)
		if name != "quick" {
			assert.GreaterOrEqual(t, p.Reps, 7, "%s: verdicts need 7 repetitions", name)
			assert.GreaterOrEqual(t, p.RedisReps, 7, name)
		}
		for _, cp := range p.TimelineCheckpoints {
			assert.LessOrEqual(t, cp, p.TimelineFor, "%s: every checkpoint interval collects at least once", name)
			assert.Zero(t, cp%p.TimelinePoint, "%s: checkpoints fall on points", name)
		}
	}
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
	c, err := collect(tr, m)
	require.NoError(t, err)
	assert.Zero(t, c)
}

// skipUnsupported skips when the host kernel cannot run tracker tr.
func skipUnsupported(t *testing.T, tr string, err error) {
	if errors.Is(err, tracker.ErrUnsupported) {
		t.Skipf("%s unavailable here: %v", tr, err)
	}
}

// TestWriteOnceCountsFaults runs figure 1's cell on the host: untracked
// writes to a populated region take no fault, PAGEMAP_SCAN's take one per
// page (its write-protection), and the collection counts its ioctls.
func TestWriteOnceCountsFaults(t *testing.T) {
	none, err := writeOnce("none", 4, false, 1)
	require.NoError(t, err)
	pages := int64(none.Written)
	assert.Less(t, none.WriteCounts.Faults, pages/10, "a populated region: writes take no faults")
	assert.Zero(t, none.Syscalls)

	s, err := writeOnce("pagemap-scan", 4, false, 1)
	skipUnsupported(t, "pagemap-scan", err)
	require.NoError(t, err)
	assert.GreaterOrEqual(t, s.WriteCounts.Faults, pages, "one write-protect fault per page")
	assert.Equal(t, s.Written, s.Collected)
	assert.Equal(t, 1, s.Regions, "every page written: one region")
	assert.GreaterOrEqual(t, s.Syscalls, int64(1))
	assert.Less(t, s.CollectCounts.Faults, pages/10, "collecting faults nothing in")
}

// TestTimelineOnceCheckpoints runs a short timeline on the host: one point
// per 100 ms from the start of tracking, a collection at every checkpoint,
// faults counted per point.
func TestTimelineOnceCheckpoints(t *testing.T) {
	p := QuickPlan()
	p.TimelineMiB, p.TimelineFor = 4, 600*time.Millisecond
	s, err := timelineOnce("pagemap-scan", 200*time.Millisecond, p, 1)
	skipUnsupported(t, "pagemap-scan", err)
	require.NoError(t, err)
	require.Len(t, s.Ops, 6)
	require.Len(t, s.PointNS, 6)
	require.Len(t, s.Counts, 6)
	require.Len(t, s.Collections, 3)
	// A 100 ms point can pass without the writer being scheduled on a
	// loaded host (go test runs packages side by side on 2 cores): the
	// work is asserted over the run, the schedule per point.
	var pages, ops int64
	for i, c := range s.Collections {
		assert.Equal(t, 2*i+1, c.Point, "collections end points 1, 3, 5")
		assert.Positive(t, c.Syscalls)
		pages += int64(c.Pages)
	}
	assert.Positive(t, pages, "the writer dirtied pages between checkpoints")
	var faults, ns int64
	for i, c := range s.Counts {
		ops += int64(s.Ops[i])
		assert.Positive(t, s.PointNS[i])
		faults += c.Faults
		ns += s.PointNS[i]
	}
	assert.Positive(t, ops, "the writer did work")
	// Points keep to the schedule from the start of tracking: one
	// stretched by a collection makes the next shorter.
	assert.GreaterOrEqual(t, ns, int64(600*time.Millisecond))
	assert.Positive(t, faults, "writes to write-protected pages fault")

	n, err := timelineOnce("none", 0, p, 1)
	require.NoError(t, err)
	assert.Empty(t, n.Collections)
	assert.Len(t, n.Ops, 6)
}
