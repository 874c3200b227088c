package tests

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ldtlab/guest/bench"
	"ldtlab/orchestrator/paper"
)

// TestBenchPaperQuick runs `labctl bench paper --quick` in-process: every
// figure of the paper's evaluation is produced for every tracker, with
// sane samples (ldt, soft-dirty and PAGEMAP_SCAN collect exactly the pages
// written), no kernel report, and every output file written. Times are
// reported, never asserted. It boots the debug kernel the suite already
// builds (the full run uses the perf kernel): the quick run checks the
// plumbing, and the debug options check it harder.
func TestBenchPaperQuick(t *testing.T) {
	o := guestOptions(t, "paper")
	o.Config = "debug"
	var progress strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	res, err := paper.Run(ctx, paper.Options{Guest: o, Plan: "quick", Progress: &progress})
	t.Logf("bench paper --quick:\n%s", progress.String())
	require.NoError(t, err)
	assert.Empty(t, res.Problems, "sanity of the samples")
	assert.Empty(t, res.Reports, "kernel reports")

	// Every tracker in every figure (pagemap-scan cannot checkpoint
	// another process: the redis figure says why instead).
	seen := map[string]map[string]bool{"writeonly": {}, "timeline": {}, "collect": {}, "redis": {}}
	for _, s := range res.WriteOnly.Samples {
		seen["writeonly"][s.Tracker] = true
	}
	for _, s := range res.Timeline.Samples {
		seen["timeline"][s.Tracker] = true
	}
	for _, s := range res.Collect.Samples {
		seen["collect"][s.Tracker] = true
	}
	for _, s := range res.Redis.Samples {
		seen["redis"][s.Tracker] = true
	}
	for fig, got := range seen {
		for _, tr := range bench.Trackers {
			switch {
			case fig == "collect" && tr == "none":
			case fig == "redis" && tr == "pagemap-scan":
				assert.NotEmpty(t, res.Redis.Unsupported[tr], "redis figure explains why pagemap-scan is absent")
			default:
				assert.True(t, got[tr], "%s has samples of %s", fig, tr)
			}
		}
	}
	// ldt's collected pages equal the written ones, in both figures that
	// know exactly what was written.
	for _, s := range res.WriteOnly.Samples {
		if s.Tracker == "ldt" {
			assert.Equal(t, s.Written, s.Collected, "write-only ldt %d MiB thp=%v %d B", s.SizeMiB, s.THP, s.WriteBytes)
		}
	}
	for _, s := range res.Collect.Samples {
		if s.Tracker == "ldt" {
			assert.Equal(t, s.Dirtied, s.Collected, "collect ldt at %.1f%%", s.DirtyPct)
		}
	}

	// Counts beside times: soft-dirty faults on every page it
	// write-protected, LDT on none (Sanity fails the run otherwise), and
	// every collection counted its system calls.
	for _, s := range res.WriteOnly.Samples {
		if s.Tracker != "none" {
			assert.Positive(t, s.Syscalls, "write-only %s: system calls counted", s.Tracker)
		}
		assert.GreaterOrEqual(t, s.WriteCounts.Faults, int64(0))
		assert.GreaterOrEqual(t, s.CollectCounts.Shootdowns, int64(0))
	}
	// GUP after a collection: every tracker registered the region; the
	// write-protecting trackers made GUP fault every page in, LDT's
	// clean-but-writable entries took the slow path without a fault.
	require.NotNil(t, res.GUP)
	gupSeen := map[string]bool{}
	for _, s := range res.GUP.Samples {
		gupSeen[s.Tracker] = true
		switch s.Tracker {
		case "softdirty", "pagemap-scan":
			assert.GreaterOrEqual(t, s.Counts.Faults, int64(s.Pages), "gup %s: a fault per write-protected page", s.Tracker)
		case "ldt", "none":
			assert.Less(t, s.Counts.Faults, int64(s.Pages/4), "gup %s: no fault per page", s.Tracker)
		}
	}
	for _, tr := range bench.Trackers {
		assert.True(t, gupSeen[tr], "gup has samples of %s", tr)
	}
	// The timeline starts with tracking and collects at every checkpoint.
	for _, s := range res.Timeline.Samples {
		assert.Len(t, s.Ops, res.Timeline.Points, "timeline %s every %d ms", s.Tracker, s.CheckpointMS)
	}
	// Provenance.
	m := res.Meta
	assert.Regexp(t, `^[0-9a-f]{40}(-dirty)?$`, m.Commit)
	assert.NotEmpty(t, m.BuildKey)
	assert.NotEmpty(t, m.Patches)
	assert.Len(t, m.SeriesSHA256, 64)
	assert.Len(t, m.KernelConfigSHA256, 64)
	assert.Equal(t, "quick", m.Plan)
	assert.NotEmpty(t, m.LoadSamples)

	dir := t.TempDir()
	require.NoError(t, paper.Write(res, dir))
	// One repetition: every claim is measured and none is judged.
	require.NotEmpty(t, res.Analysis.Claims)
	for _, c := range res.Analysis.Claims {
		assert.Equal(t, paper.Unresolved, c.Verdict, "%s %s: a single repetition decides nothing", c.Figure, c.Cell)
	}
	assert.NotEmpty(t, res.Analysis.AA, "the A/A yardstick is computed")
	for _, f := range []string{"paper.json", "README.md", "writeonly.png", "timeline.png", "redis.png", "collect.png"} {
		st, err := os.Stat(filepath.Join(dir, f))
		if assert.NoError(t, err, f) {
			assert.Greater(t, st.Size(), int64(200), f)
		}
	}
	md, err := os.ReadFile(filepath.Join(dir, "README.md"))
	require.NoError(t, err)
	for _, want := range []string{res.Meta.Kernel, res.Meta.Accel, "## Figure 1", "## Figure 2", "## Figure 3", "## Figure 4"} {
		assert.Contains(t, string(md), want)
	}
}

// TestBenchPaperKernelsQuick runs `labctl bench paper --kernels
// vanilla,all` (quick plan, two repetitions, timeline and collection) on
// the debug kernels the suite builds: both guests measured, repetitions
// interleaved in a recorded kernel order, the vanilla kernel without the
// trackers it lacks, and every shared cell compared between the kernels.
func TestBenchPaperKernelsQuick(t *testing.T) {
	o := guestOptions(t, "paper-ab")
	o.Config = "debug"
	ks, err := paper.ParseKernels(o.Repo, "vanilla,all")
	require.NoError(t, err)
	var progress strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	res, err := paper.Run(ctx, paper.Options{Guest: o, Plan: "quick", Reps: 2, Kernels: ks, Figures: []string{"timeline", "collect"}, Progress: &progress})
	t.Logf("bench paper --kernels vanilla,all:\n%s", progress.String())
	require.NoError(t, err)
	assert.Empty(t, res.Problems, "sanity of the samples")
	assert.Empty(t, res.Reports, "kernel reports")
	require.Len(t, res.Kernels, 2)
	assert.Len(t, res.Meta.KernelOrder, 2, "one kernel order per repetition")
	van, all := res.Kernels[0], res.Kernels[1]
	assert.Empty(t, van.Patches)
	assert.NotEmpty(t, all.Patches)
	assert.NotEqual(t, van.BuildKey, all.BuildKey)
	assert.Nil(t, van.WriteOnly, "figures not asked for are not run")
	for _, s := range van.Collect.Samples {
		assert.NotContains(t, []string{"ldt", "naive"}, s.Tracker, "vanilla has no /dev/ldt")
	}
	reps := map[int]bool{}
	for _, s := range all.Collect.Samples {
		reps[s.Rep] = true
	}
	assert.Equal(t, map[int]bool{0: true, 1: true}, reps, "each repetition keeps its number")
	assert.Same(t, all.Collect, res.Collect, "the figures are the last kernel's")

	require.NoError(t, paper.Write(res, t.TempDir()))
	compared := map[string]bool{}
	for _, s := range res.Analysis.Kernels {
		assert.Equal(t, "vanilla", s.Base)
		compared[s.Figure+"/"+s.Tracker] = true
	}
	assert.True(t, compared["collect/softdirty"], "soft-dirty's collection compared across kernels")
	assert.True(t, compared["timeline/none"], "untracked throughput compared across kernels")
}
