// Package bisect finds the first patch of the LDT series after which a
// command fails, as `git bisect run` finds a commit: it tests prefixes of
// the series (prefix k = the first k patches; 0 = none) by binary search
// and reads the command's exit status the way git does — 0 good, 125
// skip (cannot be tested), 1–127 bad, anything else aborts.
package bisect

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"ldtlab/images/kernel"
)

// Verdict is the outcome of one prefix.
type Verdict string

const (
	Good Verdict = "good"
	Bad  Verdict = "bad"
	Skip Verdict = "skip"
)

// SkipCode is the exit status that says "cannot test this one".
const SkipCode = 125

// FromExit reads an exit status as `git bisect run` does.
func FromExit(code int) (Verdict, error) {
	switch {
	case code == 0:
		return Good, nil
	case code == SkipCode:
		return Skip, nil
	case code >= 1 && code <= 127:
		return Bad, nil
	}
	return "", fmt.Errorf("the command exited with status %d (outside 0-127): bisection aborted, as git bisect run does", code)
}

// Tester builds and tests one prefix of the series.
type Tester interface {
	// Build makes the kernel of prefix k. An error that is not a lab
	// failure (Abort) means the prefix cannot be tested: it is skipped.
	Build(ctx context.Context, k int) error
	// Run boots prefix k, runs the command and returns its exit status.
	// An error that is a lab failure (Abort) stops the bisection; any
	// other (the guest crashed, hung or did not boot) marks k bad.
	Run(ctx context.Context, k int) (code int, note string, err error)
	// Abort tells a failure of the lab itself from one of the kernel.
	Abort(err error) bool
}

// Options bound the search.
type Options struct {
	Series []string // the patches, in order; prefix k applies Series[:k]
	// Good and Bad are the prefixes known (or claimed) good and bad;
	// Bad <= 0 means the whole series. Both are tested first.
	Good, Bad int
	Log       io.Writer // one line per step; nil = discard
}

// Step is one prefix tested.
type Step struct {
	Prefix  int           `json:"prefix"`
	Patch   string        `json:"last_patch,omitempty"` // Series[Prefix-1]; "" for prefix 0
	Verdict Verdict       `json:"verdict"`
	Code    int           `json:"exit_status"` // -1: none (did not build, guest died)
	Note    string        `json:"note,omitempty"`
	Took    time.Duration `json:"took_ns"`
}

// Result is a finished bisection.
type Result struct {
	Steps []Step `json:"steps"`
	// Good is the longest prefix found good, Bad the shortest found bad.
	Good int `json:"good"`
	Bad  int `json:"bad"`
	// FirstBad is the first bad patch (Series[Bad-1]) when it is
	// determined; "" when skipped prefixes hide it among Candidates.
	FirstBad   string   `json:"first_bad,omitempty"`
	Candidates []string `json:"candidates,omitempty"`
}

// ErrNotBad: the bad end passed, so there is nothing to bisect.
var ErrNotBad = errors.New("the command passes on the bad end: nothing to bisect")

// Run bisects. It returns the steps taken even when it fails.
func Run(ctx context.Context, o Options, t Tester) (*Result, error) {
	n := len(o.Series)
	if n == 0 {
		return nil, errors.New("the series is empty: nothing to bisect")
	}
	good, bad := o.Good, o.Bad
	if bad <= 0 {
		bad = n
	}
	if good < 0 || bad > n || good >= bad {
		return nil, fmt.Errorf("--good %d --bad %d: need 0 <= good < bad <= %d (prefixes of the series)", good, bad, n)
	}
	log := o.Log
	if log == nil {
		log = io.Discard
	}
	res := &Result{Good: good, Bad: bad}
	tested := map[int]Verdict{}
	test := func(k int) (Verdict, error) {
		st := Step{Prefix: k}
		if k > 0 {
			st.Patch = o.Series[k-1]
		}
		start := time.Now()
		v, code, note, err := testOne(ctx, t, k)
		st.Verdict, st.Code, st.Note, st.Took = v, code, note, time.Since(start)
		if err != nil {
			return "", err
		}
		res.Steps = append(res.Steps, st)
		tested[k] = v
		fmt.Fprintf(log, "[bisect] %-9s %s: %s%s (%s)\n", prefixName(o.Series, k), describe(o.Series, k), strings.ToUpper(string(v)), noteSuffix(st), st.Took.Round(time.Second))
		return v, nil
	}

	// The ends first: a bisection between ends that do not differ finds
	// nothing.
	v, err := test(bad)
	if err != nil {
		return res, err
	}
	switch v {
	case Good:
		return res, fmt.Errorf("%w (%s is good)", ErrNotBad, prefixName(o.Series, bad))
	case Skip:
		return res, fmt.Errorf("the bad end (%s) cannot be tested (skipped): nothing to bisect", prefixName(o.Series, bad))
	}
	v, err = test(good)
	if err != nil {
		return res, err
	}
	switch v {
	case Bad:
		return res, fmt.Errorf("the good end (%s) is bad already: the failure is not caused by the patches in between", prefixName(o.Series, good))
	case Skip:
		return res, fmt.Errorf("the good end (%s) cannot be tested (skipped)", prefixName(o.Series, good))
	}

	for {
		k, ok := next(good, bad, tested)
		if !ok {
			break
		}
		v, err := test(k)
		if err != nil {
			return res, err
		}
		switch v {
		case Good:
			good = k
		case Bad:
			bad = k
		}
		res.Good, res.Bad = good, bad
	}
	res.Good, res.Bad = good, bad
	// Everything strictly between good and bad was skipped: the first
	// bad patch is one of those prefixes' last patches or bad's.
	var cands []string
	for k := good + 1; k <= bad; k++ {
		cands = append(cands, o.Series[k-1])
	}
	if len(cands) == 1 {
		res.FirstBad = cands[0]
	} else {
		res.Candidates = cands
	}
	return res, nil
}

// next picks the untested prefix nearest the middle of (good, bad) that
// was not skipped; git bisect moves away from skipped commits the same way.
func next(good, bad int, tested map[int]Verdict) (int, bool) {
	var open []int
	for k := good + 1; k < bad; k++ {
		if _, done := tested[k]; !done {
			open = append(open, k)
		}
	}
	if len(open) == 0 {
		return 0, false
	}
	mid := (good + bad) / 2
	sort.SliceStable(open, func(i, j int) bool {
		di, dj := abs(open[i]-mid), abs(open[j]-mid)
		if di != dj {
			return di < dj
		}
		return open[i] < open[j]
	})
	return open[0], true
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}

// testOne builds and runs prefix k and turns the outcome into a verdict.
func testOne(ctx context.Context, t Tester, k int) (Verdict, int, string, error) {
	if err := t.Build(ctx, k); err != nil {
		if ctx.Err() != nil {
			return "", 0, "", ctx.Err()
		}
		if t.Abort(err) {
			return "", 0, "", err
		}
		return Skip, -1, "did not build: " + firstLine(err.Error()), nil
	}
	code, note, err := t.Run(ctx, k)
	if err != nil {
		if ctx.Err() != nil {
			return "", 0, "", ctx.Err()
		}
		if t.Abort(err) {
			return "", 0, "", err
		}
		if note == "" {
			note = firstLine(err.Error())
		}
		return Bad, -1, note, nil
	}
	v, err := FromExit(code)
	if err != nil {
		return "", code, note, fmt.Errorf("prefix %d: %w", k, err)
	}
	return v, code, note, nil
}

func noteSuffix(st Step) string {
	s := ""
	if st.Code >= 0 {
		s = fmt.Sprintf(", exit %d", st.Code)
	}
	if st.Note != "" {
		s += "; " + st.Note
	}
	return s
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

// PrefixSpec is the --patches value of prefix k ("" for k = 0: no patch).
func PrefixSpec(series []string, k int) string {
	if k <= 0 {
		return ""
	}
	return kernel.PatchID(series[0]) + "-" + kernel.PatchID(series[k-1])
}

func prefixName(series []string, k int) string {
	if k == 0 {
		return "vanilla"
	}
	return PrefixSpec(series, k)
}

func describe(series []string, k int) string {
	if k == 0 {
		return "(no patch)"
	}
	return fmt.Sprintf("(%d/%d, up to %s)", k, len(series), series[k-1])
}
