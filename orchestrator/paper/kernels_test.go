package paper

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ldtlab/guest/bench"
	"ldtlab/orchestrator/lab"
)

func repoRoot(t *testing.T) string {
	_, f, _, ok := runtime.Caller(0)
	require.True(t, ok)
	return filepath.Join(filepath.Dir(f), "..", "..")
}

func TestParseKernels(t *testing.T) {
	repo := repoRoot(t)
	for _, tc := range []struct {
		in      string
		want    []KernelSpec
		wantErr string
	}{
		{in: "0001-0009,0001-0010", want: []KernelSpec{{Name: "0001-0009", Patches: "0001-0009"}, {Name: "0001-0010", Patches: "0001-0010"}}},
		{in: "vanilla, all", want: []KernelSpec{{Name: "vanilla", Vanilla: true}, {Name: "all"}}},
		{in: "1-5+7,all", want: []KernelSpec{{Name: "1-5+7", Patches: "1-5,7"}, {Name: "all"}}},
		{in: "all", wantErr: "at least two kernels"},
		{in: "all,all", wantErr: "all twice"},
		{in: "vanilla,,all", wantErr: "an empty kernel"},
		{in: "vanilla,0001-0999", wantErr: `kernel "0001-0999"`},
	} {
		got, err := ParseKernels(repo, tc.in)
		if tc.wantErr != "" {
			assert.ErrorContains(t, err, tc.wantErr, tc.in)
			continue
		}
		require.NoError(t, err, tc.in)
		assert.Equal(t, tc.want, got, tc.in)
	}
}

func TestKernelSpecApplyAndTrackers(t *testing.T) {
	o := lab.Options{Config: "perf", MemoryMiB: 2048, Patches: "0001-0003"}
	o.Without, o.LDTOff = "0010", true
	got := KernelSpec{Name: "vanilla", Vanilla: true}.apply(o)
	assert.True(t, got.Vanilla)
	assert.Empty(t, got.Without, "a kernel of --kernels is exactly its spec")
	assert.False(t, got.LDTOff)
	assert.Equal(t, o.MemoryMiB, got.MemoryMiB, "the rest of the guest stays")
	assert.NotContains(t, trackersFor(true), "ldt", "a vanilla kernel has no /dev/ldt")
	assert.Equal(t, bench.Trackers, trackersFor(false))
}

func TestKernelOrderIsAPermutation(t *testing.T) {
	seen := map[[3]int]bool{}
	for rep := 0; rep < 20; rep++ {
		o := kernelOrder(7, rep, 3)
		assert.ElementsMatch(t, []int{0, 1, 2}, o)
		seen[[3]int(o)] = true
	}
	assert.Greater(t, len(seen), 1, "the order changes between repetitions")
	assert.Equal(t, kernelOrder(7, 4, 3), kernelOrder(7, 4, 3), "seeded")
}

// TestMergeAppendsRepetitions: one ldt-bench call per repetition, merged
// into one figure per kernel.
func TestMergeAppendsRepetitions(t *testing.T) {
	f := fake(2)
	kr := &KernelRun{}
	for _, fig := range []struct {
		name string
		v    any
	}{{"writeonly", f.WriteOnly}, {"timeline", f.Timeline}, {"collect", f.Collect}, {"redis", f.Redis}} {
		b, err := json.Marshal(fig.v)
		require.NoError(t, err)
		require.NoError(t, kr.merge(fig.name, b))
		require.NoError(t, kr.merge(fig.name, b))
	}
	assert.Len(t, kr.WriteOnly.Samples, 2*len(f.WriteOnly.Samples))
	assert.Equal(t, 4, kr.Timeline.Reps)
	assert.Len(t, kr.Collect.Samples, 2*len(f.Collect.Samples))
	assert.Len(t, kr.Redis.Samples, 2*len(f.Redis.Samples))
	assert.Error(t, kr.merge("bogus", []byte("{}")))
	assert.ErrorContains(t, kr.merge("collect", []byte("not json")), "reading ldt-bench's result")
}

// TestAnalyzeKernels: kernel B collects in half the time with half the TLB
// flushes and is otherwise A: the ratios say so, with the A/A beside.
func TestAnalyzeKernels(t *testing.T) {
	a, b := fake(7), fake(7)
	for i := range b.Collect.Samples {
		s := &b.Collect.Samples[i]
		if s.Tracker == "ldt" {
			s.NS /= 2
			s.Counts.TLBFlushes /= 2
		}
	}
	r := fake(7)
	r.Kernels = []*KernelRun{
		{Spec: KernelSpec{Name: "0001-0009", Patches: "0001-0009"}, Trackers: bench.Trackers, WriteOnly: a.WriteOnly, Timeline: a.Timeline, Redis: a.Redis, Collect: a.Collect},
		{Spec: KernelSpec{Name: "all"}, Trackers: bench.Trackers, WriteOnly: b.WriteOnly, Timeline: b.Timeline, Redis: b.Redis, Collect: b.Collect},
	}
	an := Analyze(r)
	require.NotEmpty(t, an.Kernels)
	got := map[[3]string]KernelStat{}
	for _, s := range an.Kernels {
		assert.Equal(t, "0001-0009", s.Base)
		assert.Equal(t, "all", s.Other)
		got[[3]string{s.Figure + "/" + s.Cell, s.Tracker, s.Metric}] = s
	}
	cell := "collect/" + collectCell(r.Collect.Pcts[0])
	us := got[[3]string{cell, "ldt", "us"}]
	assert.InDelta(t, 0.5, us.Ratio.Value, 0.01)
	assert.True(t, us.AA.Defined(), "the A/A stands beside every ratio")
	assert.InDelta(t, 1, got[[3]string{cell, "softdirty", "us"}].Ratio.Value, 0.01, "what the kernels share is unchanged")
	wo := got[[3]string{"writeonly/" + writeCell(4, false, WriteKind{4096, "copy"}), "none", "total_ms"}]
	assert.InDelta(t, 1, wo.Ratio.Value, 0.01)
	assert.Equal(t, 7, wo.Ratio.N)

	// A vanilla base has no /dev/ldt: the A/A comes from the other kernel.
	v := fake(7)
	v.Collect.Samples = slices.DeleteFunc(v.Collect.Samples, func(s bench.CollectSample) bool { return s.Tracker == "ldt" || s.Tracker == "naive" })
	r2 := fake(7)
	r2.Kernels = []*KernelRun{{Spec: KernelSpec{Name: "vanilla", Vanilla: true}, Collect: v.Collect}, {Spec: KernelSpec{Name: "all"}, Collect: b.Collect}}
	for _, s := range Analyze(r2).Kernels {
		if s.Figure == "collect" && s.Metric == "us" {
			assert.NotEqual(t, "ldt", s.Tracker, "ldt is not on both kernels")
			assert.True(t, s.AA.Defined(), "%s %s: the other kernel's A/A", s.Cell, s.Tracker)
		}
	}

	var md bytes.Buffer
	Markdown(&md, r)
	assert.Contains(t, md.String(), "## Kernels A/B")
	assert.Contains(t, md.String(), "| collect | 1% dirty | ldt | us (µs)")
}

func TestSanityOnlyWhatRan(t *testing.T) {
	r := fake(1)
	r.WriteOnly, r.Redis = nil, nil
	r.Meta.Figures = []string{"timeline", "collect"}
	assert.Empty(t, Sanity(r), "figures not asked for are not missing")
	r.Meta.Figures = nil
	assert.Contains(t, Sanity(r), "write-only: no samples")

	v := fake(1)
	v.Meta.Trackers = trackersFor(true)
	v.Timeline.Samples = dropTrackers(v.Timeline.Samples, "ldt", "naive")
	for _, p := range Sanity(v) {
		assert.NotContains(t, p, "timeline: no sample for", "a vanilla kernel is not asked for ldt")
	}
}

func dropTrackers(ss []bench.TimelineSample, trs ...string) []bench.TimelineSample {
	var out []bench.TimelineSample
	for _, s := range ss {
		keep := true
		for _, t := range trs {
			keep = keep && s.Tracker != t
		}
		if keep {
			out = append(out, s)
		}
	}
	return out
}

// TestTHPOffOnly: the short plan measures figure 1 with THP off only; the
// report, the plots and the sanity checks take that as measured, not as
// missing.
func TestTHPOffOnly(t *testing.T) {
	r := fake(7)
	r.WriteOnly.Samples = slices.DeleteFunc(r.WriteOnly.Samples, func(s bench.WriteSample) bool { return s.THP })
	for _, p := range Sanity(r) {
		assert.NotContains(t, p, "huge page")
	}
	dir := t.TempDir()
	require.NoError(t, Write(r, dir))
	md, err := os.ReadFile(filepath.Join(dir, "README.md"))
	require.NoError(t, err)
	assert.NotContains(t, string(md), "THP on (MADV_HUGEPAGE)")
	assert.Contains(t, string(md), "THP off (4 KiB pages)")
}
