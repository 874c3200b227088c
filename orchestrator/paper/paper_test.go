package paper

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ldtlab/guest/bench"
)

func TestSummarize(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want Summary
	}{
		{nil, Summary{}},
		{[]float64{3}, Summary{3, 3, 3, 1}},
		{[]float64{5, 1, 3}, Summary{3, 1, 5, 3}},
		{[]float64{4, 1, 2, 3}, Summary{2.5, 1, 4, 4}},
	} {
		assert.Equal(t, tc.want, Summarize(tc.in), "%v", tc.in)
	}
}

func TestRatio(t *testing.T) {
	for _, tc := range []struct {
		a, b Summary
		want string
	}{
		{Summary{Median: 2, N: 1}, Summary{Median: 1, N: 1}, "2.00×"},
		{Summary{Median: 2, N: 1}, Summary{Median: 0, N: 1}, "–"},
		{Summary{}, Summary{Median: 1, N: 1}, "–"},
	} {
		assert.Equal(t, tc.want, Ratio(tc.a, tc.b))
	}
}

// fake is a small, internally consistent result: every tracker of every
// figure, ldt collecting exactly what was written.
func fake() *Result {
	r := &Result{Meta: Meta{Date: "2026-11-29 00:00 UTC", Machine: "test CPU", HostCores: 2, Accel: "tcg", Kernel: "6.12.0-ldt", Variant: "ldt-perf", GuestMiB: 2048, GuestCPUs: 2}}
	wo := &bench.WriteOnly{SizesMiB: []int{4, 16}, Reps: 2, THP: "madvise"}
	for _, size := range wo.SizesMiB {
		for _, thp := range []bool{false, true} {
			for _, wb := range []int{4096, 1} {
				for rep := 0; rep < 2; rep++ {
					for i, tr := range bench.Trackers {
						pages := size << 20 / 4096
						s := bench.WriteSample{Tracker: tr, SizeMiB: size, THP: thp, WriteBytes: wb, Rep: rep,
							WriteNS: int64(pages * (100 + 50*i + rep)), Written: pages, Collected: pages}
						if tr != "none" {
							s.CollectNS = int64(pages * 10)
						} else {
							s.Collected = 0
						}
						if thp {
							s.HugeKB = size << 10
						}
						wo.Samples = append(wo.Samples, s)
					}
				}
			}
		}
	}
	r.WriteOnly = wo
	tl := &bench.Timeline{SizeMiB: 4, TickMS: 100, Intervals: 3, WritePct: 75, OpBytes: 4096, Reps: 1}
	for i, tr := range bench.Trackers {
		tl.Samples = append(tl.Samples, bench.TimelineSample{Tracker: tr, Ops: []int64{1000, int64(900 - 100*i), 800},
			TickNS: []int64{1e8, 1e8, 1e8}, Collected: []int{10, 20, 30}, CollectNS: []int64{1e5, 1e5, 1e5}})
	}
	r.Timeline = tl
	r.Collect = &bench.Collect{SizeMiB: 4, Pages: 1024, Reps: 1, Pcts: []float64{1, 100}, ReadBandwidth: 1e9, TableBytes: 8208, FloorNS: 8208}
	for _, pct := range r.Collect.Pcts {
		for _, tr := range bench.Trackers[1:] {
			n := int(1024 * pct / 100)
			r.Collect.Samples = append(r.Collect.Samples, bench.CollectSample{Tracker: tr, DirtyPct: pct, NS: int64(1000 * n), Dirtied: n, Collected: n})
		}
	}
	r.Redis = &bench.Redis{Keys: 16, ValueBytes: 4096, WindowS: 3, IntervalsMS: []int{1000}, Reps: 1, Unsupported: map[string]string{"pagemap-scan": "self only"}}
	r.Redis.Samples = append(r.Redis.Samples, bench.RedisSample{Tracker: "none", Seconds: 3, OpsPerSec: 1000})
	for _, tr := range []string{"ldt", "softdirty", "naive"} {
		r.Redis.Samples = append(r.Redis.Samples, bench.RedisSample{Tracker: tr, IntervalMS: 1000, Seconds: 3, OpsPerSec: 900, Rounds: 2, Pages: []int{5, 6}})
	}
	return r
}

func TestSanity(t *testing.T) {
	r := fake()
	assert.Empty(t, Sanity(r))

	for _, tc := range []struct {
		name   string
		break_ func(*Result)
		want   string
	}{
		{"ldt misses a page", func(r *Result) { r.WriteOnly.Samples[1].Collected-- }, "collected"},
		{"figure missing", func(r *Result) { r.Timeline = nil }, "timeline: no samples"},
		{"tracker missing", func(r *Result) { r.Timeline.Samples = r.Timeline.Samples[1:] }, "timeline: no sample for none"},
		{"no THP formed", func(r *Result) {
			for i := range r.WriteOnly.Samples {
				r.WriteOnly.Samples[i].HugeKB = 0
			}
		}, "never got a huge page"},
		{"collect wrong count", func(r *Result) { r.Collect.Samples[0].Collected = 0 }, "collect ldt"},
		{"redis no rounds", func(r *Result) { r.Redis.Samples[1].Rounds, r.Redis.Samples[1].Pages = 0, nil }, "0 rounds"},
		{"redis zero throughput", func(r *Result) { r.Redis.Samples[0].OpsPerSec = 0 }, "ops/s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := fake()
			tc.break_(r)
			p := Sanity(r)
			require.NotEmpty(t, p)
			assert.Contains(t, strings.Join(p, "\n"), tc.want)
		})
	}
}

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	if d := os.Getenv("PAPER_KEEP"); d != "" {
		dir = d
	}
	require.NoError(t, Write(fake(), dir))
	for _, f := range []string{"paper.json", "README.md", "writeonly.png", "timeline.png", "redis.png", "collect.png"} {
		st, err := os.Stat(filepath.Join(dir, f))
		require.NoError(t, err, f)
		assert.Greater(t, st.Size(), int64(100), f)
	}
	md, _ := os.ReadFile(filepath.Join(dir, "README.md"))
	for _, want := range []string{"test CPU", "tcg", "6.12.0-ldt", "TCG caveat", "× softdirty", "## Figure 4", "pagemap-scan` is not in this figure"} {
		assert.Contains(t, string(md), want)
	}
	png, _ := os.ReadFile(filepath.Join(dir, "redis.png"))
	assert.True(t, bytes.HasPrefix(png, []byte("\x89PNG")))
}
