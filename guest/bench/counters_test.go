package bench

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestStatFaults(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want int64
	}{
		{"plain", "31857 (head) R 31848 31848 13856 0 -1 4194304 101 7 3 0 0 0", 104},
		{"comm with spaces and parens", "42 (a) b (c)) S 1 42 42 0 -1 4194560 5000 0 20 0 0 0", 5020},
		{"truncated", "42 (x) S 1 42", -1},
		{"no comm", "garbage", -1},
		{"not a number", "42 (x) S 1 42 42 0 -1 0 many 0 0 0", -1},
	} {
		assert.Equal(t, tc.want, statFaults([]byte(tc.in)), tc.name)
	}
}

func TestVmstatTLB(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want int64
	}{
		{"debug tlbflush", "pgfault 10\nnr_tlb_remote_flush 4\nnr_tlb_remote_flush_received 5\nnr_tlb_local_flush_all 7\nnr_tlb_local_flush_one 30\n", 37},
		{"not counted", "pgfault 10\nnr_hugetlb 0\n", -1},
		{"malformed", "nr_tlb_local_flush_all x\n", -1},
	} {
		assert.Equal(t, tc.want, vmstatTLB([]byte(tc.in)), tc.name)
	}
}

func TestInterruptsTLB(t *testing.T) {
	in := "           CPU0       CPU1\n  0:         33          0   IO-APIC   2-edge      timer\nNMI:          0          0   Non-maskable interrupts\nTLB:      46274      45972   TLB shootdowns\nTRM:          0          0   Thermal event interrupts\n"
	assert.Equal(t, int64(46274+45972), interruptsTLB([]byte(in)))
	assert.Zero(t, interruptsTLB([]byte("  0: 1 timer\n")), "no TLB line: no shootdowns")
}

func TestSnapshotSince(t *testing.T) {
	a := snapshot{faults: 10, tlbLocal: 100, shootdowns: 5}
	b := snapshot{faults: 15, tlbLocal: 130, shootdowns: 9}
	assert.Equal(t, Counts{Faults: 5, TLBFlushes: 30, Shootdowns: 4}, b.since(a))
	b.tlbLocal = -1
	assert.Equal(t, int64(-1), b.since(a).TLBFlushes, "uncounted stays uncounted, never 0")
}

// TestCountersSeeOwnFaults checks the real source: touching fresh pages
// of this process shows up as at least that many faults.
func TestCountersSeeOwnFaults(t *testing.T) {
	a := counters(0)
	require.GreaterOrEqual(t, a.faults, int64(0))
	m, err := newMapping(4<<20, false) // populates: one fault per page
	require.NoError(t, err)
	defer m.close()
	c := counters(0).since(a)
	assert.GreaterOrEqual(t, c.Faults, int64(m.pages()))
}

// TestCountersAllocateNothing: a snapshot taken inside a measurement
// must not fault in memory of its own (the figures count faults).
func TestCountersAllocateNothing(t *testing.T) {
	counters(0)
	assert.Zero(t, testing.AllocsPerRun(20, func() { counters(0) }))
}
