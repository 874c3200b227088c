package bisect

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var series = []string{
	"0001-a.patch", "0002-b.patch", "0003-c.patch", "0004-d.patch", "0005-e.patch",
	"0006-f.patch", "0007-g.patch", "0008-h.patch", "0009-i.patch", "0010-j.patch",
}

var errLab = errors.New("lab failure: disk full")

// fake is a builder and booter: prefixes from firstBad on fail with
// exit 1, noBuild do not build, skip exit 125, crash kill the guest.
type fake struct {
	firstBad int
	noBuild  map[int]bool
	skip     map[int]bool
	crash    map[int]bool
	labFail  map[int]bool
	code     map[int]int // an explicit exit status
	built    []int
	ran      []int
}

func (f *fake) Build(ctx context.Context, k int) error {
	f.built = append(f.built, k)
	if f.labFail[k] {
		return errLab
	}
	if f.noBuild[k] {
		return fmt.Errorf("mm/userfaultfd.c:1171: implicit declaration of function 'pte_ldt_backup'\nmore")
	}
	return nil
}

func (f *fake) Run(ctx context.Context, k int) (int, string, error) {
	f.ran = append(f.ran, k)
	switch {
	case f.crash[k]:
		return 0, "", errors.New("kernel BUG at mm/memory.c:42")
	case f.skip[k]:
		return SkipCode, "", nil
	}
	if c, ok := f.code[k]; ok {
		return c, "", nil
	}
	if k >= f.firstBad {
		return 1, "", nil
	}
	return 0, "", nil
}

func (f *fake) Abort(err error) bool { return errors.Is(err, errLab) }

func TestFromExit(t *testing.T) {
	for code, want := range map[int]Verdict{0: Good, 1: Bad, 2: Bad, 124: Bad, 125: Skip, 126: Bad, 127: Bad} {
		v, err := FromExit(code)
		require.NoError(t, err, code)
		assert.Equal(t, want, v, code)
	}
	for _, code := range []int{128, 130, 255, -1} {
		_, err := FromExit(code)
		assert.Error(t, err, code)
	}
}

func TestEveryFirstBad(t *testing.T) {
	for first := 1; first <= len(series); first++ {
		f := &fake{firstBad: first}
		var log strings.Builder
		res, err := Run(context.Background(), Options{Series: series, Log: &log}, f)
		require.NoError(t, err, "first bad %d", first)
		assert.Equal(t, series[first-1], res.FirstBad, "first bad %d", first)
		assert.Empty(t, res.Candidates)
		assert.Equal(t, first-1, res.Good)
		assert.Equal(t, first, res.Bad)
		// Both ends, then a binary search: at most ceil(log2(9)) = 4 more.
		assert.LessOrEqual(t, len(res.Steps), 2+4, "first bad %d: %v", first, f.ran)
		assert.Equal(t, []int{len(series), 0}, f.ran[:2], "the ends are tested first")
		assert.Contains(t, log.String(), "[bisect] 0001-0010")
		assert.Contains(t, log.String(), "[bisect] vanilla")
	}
}

func TestSkipsMoveAside(t *testing.T) {
	// The middle (5) cannot be built and its neighbour 4 says skip: the
	// search goes around them and still pins the first bad patch.
	f := &fake{firstBad: 7, noBuild: map[int]bool{5: true}, skip: map[int]bool{4: true}}
	res, err := Run(context.Background(), Options{Series: series}, f)
	require.NoError(t, err)
	assert.Equal(t, "0007-g.patch", res.FirstBad)
	var skipped []int
	for _, s := range res.Steps {
		if s.Verdict == Skip {
			skipped = append(skipped, s.Prefix)
		}
	}
	assert.ElementsMatch(t, []int{5, 4}, skipped)
	for _, s := range res.Steps {
		if s.Prefix == 5 {
			assert.Equal(t, -1, s.Code)
			assert.Contains(t, s.Note, "did not build: mm/userfaultfd.c:1171")
			assert.NotContains(t, s.Note, "more", "only the first line of the error")
		}
	}
	assert.NotContains(t, f.ran, 5, "a prefix that did not build is not booted")
}

func TestSkippedNeighboursLeaveCandidates(t *testing.T) {
	// 6 fails to build: whether 0006 or 0007 broke it cannot be told.
	f := &fake{firstBad: 6, noBuild: map[int]bool{6: true}}
	res, err := Run(context.Background(), Options{Series: series}, f)
	require.NoError(t, err)
	assert.Empty(t, res.FirstBad)
	assert.Equal(t, []string{"0006-f.patch", "0007-g.patch"}, res.Candidates)
	assert.Equal(t, 5, res.Good)
	assert.Equal(t, 7, res.Bad)
}

func TestGuestCrashIsBad(t *testing.T) {
	f := &fake{firstBad: 99, crash: map[int]bool{4: true, 5: true, 6: true, 7: true, 8: true, 9: true, 10: true}}
	res, err := Run(context.Background(), Options{Series: series}, f)
	require.NoError(t, err)
	assert.Equal(t, "0004-d.patch", res.FirstBad)
	for _, s := range res.Steps {
		if s.Verdict == Bad {
			assert.Contains(t, s.Note, "kernel BUG")
			assert.Equal(t, -1, s.Code)
		}
	}
}

func TestEnds(t *testing.T) {
	_, err := Run(context.Background(), Options{Series: series}, &fake{firstBad: 99})
	assert.ErrorIs(t, err, ErrNotBad)

	_, err = Run(context.Background(), Options{Series: series}, &fake{firstBad: 0})
	assert.ErrorContains(t, err, "the good end (vanilla) is bad already")

	_, err = Run(context.Background(), Options{Series: series}, &fake{firstBad: 3, noBuild: map[int]bool{10: true}})
	assert.ErrorContains(t, err, "bad end (0001-0010) cannot be tested")

	// Narrower ends: only 3..6 are looked at.
	f := &fake{firstBad: 5}
	res, err := Run(context.Background(), Options{Series: series, Good: 3, Bad: 6}, f)
	require.NoError(t, err)
	assert.Equal(t, "0005-e.patch", res.FirstBad)
	for _, k := range f.ran {
		assert.True(t, k >= 3 && k <= 6, "tested %d outside 3..6", k)
	}

	for _, o := range []Options{{Series: series, Good: 5, Bad: 5}, {Series: series, Good: -1}, {Series: series, Bad: 11}, {}} {
		_, err := Run(context.Background(), o, &fake{firstBad: 3})
		assert.Error(t, err, "%+v", o)
	}
}

func TestAborts(t *testing.T) {
	// A lab failure stops the search; so does an exit status above 127.
	f := &fake{firstBad: 3, labFail: map[int]bool{5: true}}
	res, err := Run(context.Background(), Options{Series: series}, f)
	assert.ErrorIs(t, err, errLab)
	assert.Len(t, res.Steps, 2, "the steps before the failure are kept")

	f = &fake{firstBad: 3, code: map[int]int{5: 139}}
	_, err = Run(context.Background(), Options{Series: series}, f)
	assert.ErrorContains(t, err, "status 139")

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = Run(ctx, Options{Series: series}, &fake{firstBad: 3, noBuild: map[int]bool{10: true}})
	assert.ErrorIs(t, err, context.Canceled)
}

func TestPrefixSpec(t *testing.T) {
	assert.Equal(t, "", PrefixSpec(series, 0))
	assert.Equal(t, "0001-0001", PrefixSpec(series, 1))
	assert.Equal(t, "0001-0006", PrefixSpec(series, 6))
}
