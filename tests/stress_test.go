package tests

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ldtlab/guest/result"
	"ldtlab/orchestrator/preset"
	"ldtlab/orchestrator/stress"
)

// TestStressShort is the short stress run of `make test` (`make stress`
// runs it long): writers, a collector copying every reported page into a
// shadow and every agitator at once, on a guest with swap, a data disk and
// two NUMA nodes. ldt (4 KiB and THP) and pagemap-scan must leave the
// shadow identical to memory; naive must lose writes, or the run has no
// teeth.
func TestStressShort(t *testing.T) {
	o := guestOptions(t, "stress")
	preset.Pressure(&o) // the guest `labctl stress` boots
	m := boot(t, o)
	runs, err := stress.Job(context.Background(), m, stress.Options{
		Duration: 8 * time.Second, Pages: 8192, THP: true, Seed: 7,
	}, testWriter{t})
	require.NoError(t, err)
	require.Len(t, runs, 4)
	for _, r := range runs {
		assert.False(t, r.Failed(), "%s thp=%v: %s (lost %d) %s", r.Tracker, r.THP, r.Verdict, r.LostPages, r.Error)
		assert.Greater(t, r.Writes, uint64(0), "%s: no writes: the run proves nothing", r.Tracker)
		assert.Greater(t, r.Collections, 10, "%s: too few collections to race with anything", r.Tracker)
		for _, a := range []string{"madvfree", "pageout", "migrate", "gup-write", "procmem", "odirect", "memcg", "fork", "ksm", "numa-balancing", "compact"} {
			assert.Greater(t, r.Agitators[a], 0, "%s: agitator %s never acted", r.Tracker, a)
		}
	}
	assert.Equal(t, result.VCaught, runs[3].Verdict, "naive is the last run and must lose writes")
	for _, r := range runs {
		if r.Tracker == "ldt" {
			assert.Equal(t, result.VPass, r.Verdict, "ldt thp=%v: nothing is excused for ldt", r.THP)
		}
		// A known kernel bug outside LDT may show in a reference
		// tracker's run (KNOWN-GAP, logged); nothing else may.
		if r.Known != "" {
			t.Logf("%s: KNOWN-GAP: %s", r.Tracker, r.Known)
			continue
		}
		assert.Empty(t, r.Reports, "%s thp=%v: kernel reports during the stress run", r.Tracker, r.THP)
	}
}
