package paper

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestQuantile(t *testing.T) {
	s := []float64{1, 2, 3, 4, 5}
	for _, tc := range []struct{ q, want float64 }{
		{0, 1}, {1, 5}, {0.5, 3}, {0.25, 2}, {0.1, 1.4}, {0.975, 4.9},
	} {
		assert.InDelta(t, tc.want, quantile(s, tc.q), 1e-12, "q=%g", tc.q)
	}
	assert.Equal(t, 7.0, quantile([]float64{7}, 0.3))
}

func TestBootMedian(t *testing.T) {
	for _, tc := range []struct {
		name      string
		xs        []float64
		value     float64
		lo, hi    float64 // bounds the interval must lie within
		zeroWidth bool
	}{
		{"one sample", []float64{3}, 3, 3, 3, true},
		{"constant", []float64{5, 5, 5, 5, 5, 5, 5}, 5, 5, 5, true},
		{"1..7", []float64{7, 1, 6, 2, 5, 3, 4}, 4, 1, 7, false},
		{"even count", []float64{1, 2, 3, 4, 5, 6, 7, 8}, 4.5, 1, 8, false},
		{"one outlier", []float64{10, 10.1, 9.9, 10, 10.2, 9.8, 100}, 10, 9.8, 100, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := BootMedian(tc.xs)
			require.True(t, e.Defined())
			assert.Equal(t, len(tc.xs), e.N)
			assert.Equal(t, tc.value, e.Value)
			assert.LessOrEqual(t, e.Interval[0], e.Value, "interval holds the median")
			assert.GreaterOrEqual(t, e.Interval[1], e.Value, "interval holds the median")
			assert.GreaterOrEqual(t, e.Interval[0], tc.lo)
			assert.LessOrEqual(t, e.Interval[1], tc.hi)
			if tc.zeroWidth {
				assert.Equal(t, e.Interval[0], e.Interval[1])
			} else {
				assert.Less(t, e.Interval[0], e.Interval[1])
			}
			assert.Equal(t, e, BootMedian(tc.xs), "a fixed seed: the same interval every time")
		})
	}
	assert.False(t, BootMedian(nil).Defined())
}

// TestBootMedianOutlierRobust: the median's interval ignores one wild
// repetition that a mean's would not.
func TestBootMedianOutlierRobust(t *testing.T) {
	e := BootMedian([]float64{10, 10.1, 9.9, 10, 10.2, 9.8, 100, 10.1, 9.9})
	assert.Less(t, e.Interval[1], 11.0)
}

func TestBootScales(t *testing.T) {
	xs := []float64{3, 1, 4, 1, 5, 9, 2, 6}
	ys := make([]float64, len(xs))
	for i, x := range xs {
		ys[i] = 10 * x
	}
	a, b := BootMedian(xs), BootMedian(ys)
	assert.InDelta(t, 10*a.Interval[0], b.Interval[0], 1e-9, "the same resamples: the interval scales with the data")
	assert.InDelta(t, 10*a.Interval[1], b.Interval[1], 1e-9)
}

func TestBootRatio(t *testing.T) {
	b := []float64{10, 12, 9, 15, 11, 30, 10}
	a := make([]float64, len(b))
	for i := range b {
		a[i] = 2 * b[i]
	}
	for _, tc := range []struct {
		name     string
		a, b     []float64
		paired   bool
		defined  bool
		value    float64
		exact    bool // interval is exactly [value, value]
		contains float64
	}{
		{"paired, a = 2b in every repetition", a, b, true, true, 2, true, 2},
		{"unpaired, the same data", a, b, false, true, 2, false, 2},
		{"unequal lengths fall back to unpaired", a[:5], b, true, true, 2 * median(b[:5], nil) / median(b, nil), false, 2},
		{"zero denominator", a, []float64{0, 0, 0}, false, false, 0, false, 0},
		{"no samples", nil, b, false, false, 0, false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := BootRatio(tc.a, tc.b, tc.paired)
			require.Equal(t, tc.defined, e.Defined())
			if !tc.defined {
				assert.Equal(t, Estimate{}, e, "undefined is all zero: no NaN in the JSON")
				return
			}
			assert.InDelta(t, tc.value, e.Value, 1e-12)
			if tc.exact {
				assert.Equal(t, [2]float64{tc.value, tc.value}, e.Interval)
			} else {
				assert.Less(t, e.Interval[0], e.Interval[1])
				assert.LessOrEqual(t, e.Interval[0], tc.contains)
				assert.GreaterOrEqual(t, e.Interval[1], tc.contains)
			}
		})
	}
}

// TestBootRatioCoverage draws many synthetic experiments with a known
// ratio of medians (lognormal noise shared by a repetition, as host drift
// is, plus noise of each run) and counts how often the 95% interval holds
// it. A percentile bootstrap of 9 repetitions under-covers a little; far
// from 95% means the interval is wrong.
func TestBootRatioCoverage(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	const trials, n, truth = 300, 9, 1.5
	hit := 0
	for range trials {
		a, b := make([]float64, n), make([]float64, n)
		for i := range n {
			drift := math.Exp(0.3 * r.NormFloat64())
			a[i] = truth * drift * math.Exp(0.05*r.NormFloat64())
			b[i] = drift * math.Exp(0.05*r.NormFloat64())
		}
		e := BootRatio(a, b, true)
		if e.Interval[0] <= truth && truth <= e.Interval[1] {
			hit++
		}
	}
	cover := float64(hit) / trials
	assert.Greater(t, cover, 0.85, "coverage %.2f", cover)
	assert.LessOrEqual(t, cover, 1.0)

	// Unpaired, the drift is noise: the same data give wider intervals.
	var wp, wu float64
	for range 50 {
		a, b := make([]float64, n), make([]float64, n)
		for i := range n {
			drift := math.Exp(0.3 * r.NormFloat64())
			a[i] = truth * drift * math.Exp(0.05*r.NormFloat64())
			b[i] = drift * math.Exp(0.05*r.NormFloat64())
		}
		p, u := BootRatio(a, b, true), BootRatio(a, b, false)
		wp += p.Interval[1] - p.Interval[0]
		wu += u.Interval[1] - u.Interval[0]
	}
	assert.Less(t, wp, wu/2, "pairing by repetition removes the shared drift")
}

func est(v, lo, hi float64, n int) Estimate {
	return Estimate{Value: v, Interval: [2]float64{lo, hi}, N: n}
}

func TestJudge(t *testing.T) {
	tight := est(1, 0.98, 1.02, 7)
	for _, tc := range []struct {
		name     string
		m, aa    Estimate
		target   float64
		want     string
		judgedLo float64 // checked when nonzero
		why      string
	}{
		{"holds: wholly above", est(2.4, 2.2, 2.6, 7), tight, 1.8, Holds, 2.2 * 0.98, "at or above"},
		{"fails: wholly below", est(1.6, 1.5, 1.7, 7), tight, 2.7, Fails, 1.5 * 0.98, "wholly below"},
		{"straddles", est(1.8, 1.7, 1.9, 7), tight, 1.8, Unresolved, 0, "straddles"},
		{"a median above the target is not enough", est(2.0, 1.5, 2.5, 9), tight, 1.8, Unresolved, 0, "straddles"},
		{"A/A spread turns a hold into unresolved", est(2.0, 1.9, 2.1, 7), est(1, 0.85, 1.1, 7), 1.8, Unresolved, 1.9 * 0.85, "×/÷ 1.18"},
		{"A/A spread turns a fail into unresolved", est(2.5, 2.4, 2.6, 7), est(1, 0.9, 1.1, 7), 2.7, Unresolved, 0, "straddles"},
		{"a biased A/A (interval excludes 1) widens by its far end", est(3, 2.9, 3.1, 7), est(1.1, 1.05, 1.2, 7), 2.4, Holds, 2.9 / 1.2, "×/÷ 1.2"},
		{"exactly at the target holds", est(2, 1.8, 2.2, 7), est(1, 1, 1, 7), 1.8, Holds, 1.8, "at or above"},
		{"too few repetitions", est(5, 4.9, 5.1, 3), tight, 1.8, Unresolved, 0, "3 repetitions measured"},
		{"one repetition", est(5, 5, 5, 1), tight, 1.8, Unresolved, 0, "needs 7"},
		{"no yardstick", est(5, 4.9, 5.1, 7), Estimate{}, 1.8, Unresolved, 0, "no A/A yardstick"},
		{"yardstick of too few repetitions", est(5, 4.9, 5.1, 7), est(1, 0.99, 1.01, 2), 1.8, Unresolved, 0, "n=2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, judged, why := Judge(tc.m, tc.aa, tc.target)
			assert.Equal(t, tc.want, v, why)
			assert.Contains(t, why, tc.why)
			if tc.judgedLo != 0 {
				assert.InDelta(t, tc.judgedLo, judged[0], 1e-9)
				assert.GreaterOrEqual(t, judged[1], tc.m.Interval[1])
			}
		})
	}
}
