package tests

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ldtlab/guest/result"
	"ldtlab/orchestrator/migrate"
	"ldtlab/orchestrator/preset"
)

// TestMigrateShort is the short migration of `make check` (issue 21): redis
// under redis-benchmark load in a 32 MiB memory.high cgroup (so it swaps),
// three pre-copy rounds driven by the tracker, freeze, CRIU dump with the
// pages replaced by the migrator's copy, restore on the same guest. ldt
// and softdirty must restore the very data set (DEBUG DIGEST), serve and
// survive redis-benchmark with every page equal to the frozen process;
// naive must be CAUGHT. Then ldt once more with the image carried through
// the host to a second guest.
func TestMigrateShort(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 75*time.Minute)
	defer cancel()
	res, err := migrate.Run(ctx, migrate.Options{
		Guest: guestOptions(t, "migrate"), Trackers: []string{"ldt", "softdirty", "naive"},
		Migrate: preset.MigrateShort, Progress: testWriter{t},
	})
	require.NoError(t, err)
	var sum strings.Builder
	migrate.Summary(&sum, res)
	t.Log(sum.String())
	require.Len(t, res.Runs, 3)
	want := map[string]result.Verdict{"ldt": result.VPass, "softdirty": result.VPass, "naive": result.VCaught}
	for _, mg := range res.Runs {
		assert.Equal(t, want[mg.Tracker], mg.Verdict, "%s: %s", mg.Tracker, mg.Line())
		assert.Len(t, mg.Copied, 5, "%s: initial, 3 pre-copy rounds, final", mg.Tracker)
		assert.Greater(t, mg.Swapped, 0, "%s: redis never swapped: no pressure", mg.Tracker)
		assert.Empty(t, mg.Reports, "%s: kernel reports", mg.Tracker)
		if mg.Tracker != "naive" {
			assert.NotEmpty(t, mg.DigestBefore)
			assert.Equal(t, mg.DigestBefore, mg.DigestAfter, "%s: the restored data set", mg.Tracker)
			assert.Greater(t, mg.KeysBefore, preset.MigrateShort.Keys/2, "redis-benchmark filled most of the key range")
			assert.Equal(t, mg.KeysBefore, mg.KeysAfter)
			assert.True(t, mg.Served && mg.Benchmark, "%s: the restored server serves", mg.Tracker)
			assert.Zero(t, mg.Differ+mg.Mismatched+mg.Absent, "%s: pages", mg.Tracker)
			assert.Greater(t, mg.DumpedPages, 5000, "%s: CRIU dumped redis's data set", mg.Tracker)
		}
	}
	assert.Empty(t, res.Problems)

	// A real migration: the image crosses the host to a second guest.
	o := guestOptions(t, "migrate2")
	res, err = migrate.Run(ctx, migrate.Options{
		Guest: o, Trackers: []string{"ldt"}, Migrate: preset.MigrateShort, ToGuest: true, Progress: testWriter{t},
	})
	require.NoError(t, err)
	require.Len(t, res.Runs, 1)
	mg := res.Runs[0]
	assert.Equal(t, result.VPass, mg.Verdict, mg.Line())
	assert.True(t, mg.ToGuest)
	assert.Greater(t, mg.TransferMiB, 10.0, "the image carries redis's data set")
	assert.Empty(t, res.Problems)
	assert.Equal(t, mg.DigestBefore, mg.DigestAfter)
}
