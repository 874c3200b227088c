package tests

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ldtlab/images/kernel"
	"ldtlab/orchestrator/coverage"
	"ldtlab/orchestrator/preset"
)

// TestCoverageQuick boots the coverage kernel and measures two jobs on
// the same guest, the counters reset before each: `true` (nothing uses
// /dev/ldt) and ldt-selftest (every ioctl of /dev/ldt). The second must
// run /dev/ldt's collect and open paths, the first must not: the counters
// are really reset and really mapped onto the series. About 2-3 minutes
// under TCG once the kernel is built.
//
// The coverage kernel is not one of the suite's kernels (a cold build is
// 30+ minutes here): the test runs when it is cached, builds it when
// LDTLAB_COVERAGE_BUILD=1 (`make coverage-e2e`), and skips otherwise.
func TestCoverageQuick(t *testing.T) {
	ko := kernel.Options{Repo: repo, Config: "coverage"}
	if _, ok, err := kernel.Find(ko); err != nil {
		t.Fatal(err)
	} else if !ok {
		if os.Getenv("LDTLAB_COVERAGE_BUILD") != "1" {
			t.Skip("the coverage kernel is not cached for the current sources and LDTLAB_COVERAGE_BUILD is not 1: `make coverage-e2e` builds it (30+ min cold) and runs this test")
		}
		require.NoError(t, ensureBuilt(ko, time.Now()))
	}
	o := guestOptions(t, "coverage")
	o.Config = "coverage"
	preset.Pressure(&o)
	m := boot(t, o)
	ctx := context.Background()
	measure := func(job string) *coverage.Report {
		dir := t.TempDir()
		jobs, problems, err := coverage.Collect(ctx, m, coverage.Options{Quick: true, Jobs: []string{job}, Log: testWriter{t}}, dir)
		require.NoError(t, err)
		require.Len(t, jobs, 1)
		assert.Equal(t, "PASS", jobs[0].Verdict, "%s: %s", job, jobs[0].Detail)
		assert.Empty(t, problems)
		r := &coverage.Report{}
		require.NoError(t, coverage.Analyze(ctx, m.Kernel, filepath.Join(dir, "gcda"), r))
		t.Logf("%s: %d of %d series lines ran", job, r.Executed, r.SeriesLines)
		return r
	}
	idle := measure("sh:true")
	self := measure("selftest")

	require.Greater(t, self.SeriesLines, 300, "executable series lines (the series adds mm/ldt.c alone: hundreds)")
	assert.Equal(t, idle.SeriesLines, self.SeriesLines, "the same kernel has the same executable lines")
	assert.Greater(t, self.Executed, idle.Executed+50, "ldt-selftest must run far more of the series than `true`")
	fn := func(r *coverage.Report, name string) coverage.Group {
		for _, g := range r.PerFunction {
			if g.Name == name {
				return g
			}
		}
		t.Fatalf("no series lines in function %s", name)
		return coverage.Group{}
	}
	for _, f := range []string{"mm/ldt.c:ldt_collect", "mm/ldt.c:ldt_open"} {
		assert.Zero(t, fn(idle, f).Executed, "%s ran with nothing using /dev/ldt: the counters were not reset", f)
		assert.Positive(t, fn(self, f).Executed, "%s did not run under ldt-selftest", f)
	}
	assert.Empty(t, m.Reports(), "kernel reports")
}
