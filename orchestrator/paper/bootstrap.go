package paper

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
)

// Estimate is a median (or a statistic of medians) with its 95% bootstrap
// interval over N repetitions. N == 0 means undefined (no samples, or a
// ratio to zero); Interval is then zero too, so the JSON never holds NaN.
type Estimate struct {
	Value    float64    `json:"value"`
	Interval [2]float64 `json:"interval"`
	N        int        `json:"n"`
}

// Defined reports whether e holds a number.
func (e Estimate) Defined() bool { return e.N > 0 }

const (
	// BootResamples is how many resamples an interval is drawn from.
	BootResamples = 2000
	// bootSeed fixes the resampling, so rendering a paper.json again
	// gives the same intervals.
	bootSeed = 27
)

// median of xs[idx...]; xs itself when idx is nil.
func median(xs []float64, idx []int) float64 {
	return medianBuf(nil, xs, idx)
}

// medianBuf is median using buf (grown if short) as scratch.
func medianBuf(buf, xs []float64, idx []int) float64 {
	n := len(xs)
	if idx != nil {
		n = len(idx)
	}
	if cap(buf) < n {
		buf = make([]float64, n)
	}
	s := buf[:n]
	if idx == nil {
		copy(s, xs)
	} else {
		for i, j := range idx {
			s[i] = xs[j]
		}
	}
	if len(s) == 0 {
		return math.NaN()
	}
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// quantile of sorted s at q in [0,1], linearly interpolated between order
// statistics (the common "type 7" definition).
func quantile(s []float64, q float64) float64 {
	if len(s) == 1 {
		return s[0]
	}
	h := q * float64(len(s)-1)
	lo := int(math.Floor(h))
	if lo >= len(s)-1 {
		return s[len(s)-1]
	}
	return s[lo] + (h-float64(lo))*(s[lo+1]-s[lo])
}

func finite(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }

// Boot estimates f of the medians of cols with a percentile bootstrap: f
// of the observed medians, and the 2.5th and 97.5th percentiles of f over
// BootResamples resamples. Paired (every column indexed by the same
// repetitions, equal lengths) resamples repetitions, the same for every
// column: the repetition-to-repetition drift of the host cancels in a
// ratio. Otherwise each column is resampled on its own. A value f cannot
// give (a ratio to zero) leaves the estimate undefined; resamples that
// give none are dropped, and when more than 5% do the interval is too
// unstable to report and the estimate is undefined as well.
func Boot(cols [][]float64, paired bool, f func(med []float64) float64) Estimate {
	n := math.MaxInt
	for _, c := range cols {
		n = min(n, len(c))
		if len(c) != len(cols[0]) {
			paired = false
		}
	}
	if len(cols) == 0 || n == 0 {
		return Estimate{}
	}
	med := make([]float64, len(cols))
	for i, c := range cols {
		med[i] = median(c, nil)
	}
	v := f(med)
	if !finite(v) {
		return Estimate{}
	}
	r := rand.New(rand.NewPCG(bootSeed, uint64(len(cols))))
	idx := make([][]int, len(cols))
	bufs := make([][]float64, len(cols))
	for i, c := range cols {
		idx[i] = make([]int, len(c))
		bufs[i] = make([]float64, len(c))
	}
	vals := make([]float64, 0, BootResamples)
	for b := 0; b < BootResamples; b++ {
		for i, c := range cols {
			if paired && i > 0 {
				copy(idx[i], idx[0])
			} else {
				for k := range idx[i] {
					idx[i][k] = r.IntN(len(c))
				}
			}
			med[i] = medianBuf(bufs[i], c, idx[i])
		}
		if x := f(med); finite(x) {
			vals = append(vals, x)
		}
	}
	if len(vals) < BootResamples*95/100 {
		return Estimate{}
	}
	slices.Sort(vals)
	return Estimate{Value: v, Interval: [2]float64{quantile(vals, 0.025), quantile(vals, 0.975)}, N: n}
}

// BootMedian is the median of xs with its interval.
func BootMedian(xs []float64) Estimate {
	return Boot([][]float64{xs}, false, func(m []float64) float64 { return m[0] })
}

// BootRatio is median(a) ÷ median(b) with its interval; paired when a[i]
// and b[i] come from the same repetition.
func BootRatio(a, b []float64, paired bool) Estimate {
	return Boot([][]float64{a, b}, paired, func(m []float64) float64 {
		if m[1] == 0 {
			return math.NaN()
		}
		return m[0] / m[1]
	})
}

// Verdicts of a claim.
const (
	Holds      = "holds"
	Fails      = "fails"
	Unresolved = "unresolved"
)

// MinReps is the fewest repetitions a verdict other than unresolved rests
// on.
const MinReps = 7

// Judge compares a measured ratio with a claim that needs it to be at least
// target. The ratio's interval is first widened by the A/A yardstick: aa is
// the same ratio between two trackers doing identical work (ldt and naive),
// whose true value is 1, so its spread around 1 is noise the bootstrap of
// one cell does not see (drift, order, interference); with s the larger of
// |ln aa.lo| and |ln aa.hi|, the judged interval is [lo·e^−s, hi·e^s]. Then:
// holds if the judged interval lies at or above target, fails if it lies
// wholly below, unresolved otherwise — and unresolved whenever either
// estimate rests on fewer than MinReps repetitions. A verdict never comes
// from a median alone.
func Judge(m, aa Estimate, target float64) (verdict string, judged [2]float64, why string) {
	switch {
	case m.N < MinReps:
		return Unresolved, judged, fmt.Sprintf("%d repetitions measured, a verdict needs %d", m.N, MinReps)
	case aa.N < MinReps:
		return Unresolved, judged, fmt.Sprintf("no A/A yardstick of %d repetitions (ldt ÷ naive on the same cells has n=%d)", MinReps, aa.N)
	case aa.Interval[0] <= 0 || aa.Interval[1] <= 0 || m.Interval[0] < 0:
		return Unresolved, judged, "interval not positive"
	}
	s := max(math.Abs(math.Log(aa.Interval[0])), math.Abs(math.Log(aa.Interval[1])))
	judged = [2]float64{m.Interval[0] * math.Exp(-s), m.Interval[1] * math.Exp(s)}
	w := fmt.Sprintf("95%% interval %.3g–%.3g widened by the A/A spread ×/÷ %.3g to %.3g–%.3g", m.Interval[0], m.Interval[1], math.Exp(s), judged[0], judged[1])
	switch {
	case judged[0] >= target:
		return Holds, judged, fmt.Sprintf("%s: at or above %.3g", w, target)
	case judged[1] < target:
		return Fails, judged, fmt.Sprintf("%s: wholly below %.3g", w, target)
	}
	return Unresolved, judged, fmt.Sprintf("%s: straddles %.3g", w, target)
}
