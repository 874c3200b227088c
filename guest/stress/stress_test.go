package stress

import (
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ldtlab/guest/tracker"
)

// fake reports a fixed answer: the whole range, or nothing.
type fake struct {
	start, end uintptr
	all        bool
}

func (f *fake) Name() string { return "fake" }
func (f *fake) Close() error { return nil }
func (f *fake) Collect(start, end uintptr, clear bool) ([]tracker.Region, error) {
	if !f.all {
		return nil, nil
	}
	return []tracker.Region{{Start: start, End: end}}, nil
}

// The oracle has teeth: a tracker that reports nothing loses writes, one
// that reports everything loses none.
func TestOracle(t *testing.T) {
	for _, all := range []bool{true, false} {
		res, err := Run(Options{
			Tracker: "fake", Pages: 64, Writers: 1, Duration: 200 * time.Millisecond, Epochs: 2,
			Agitators: []string{}, Seed: 1,
			Open: func(start, end uintptr) (tracker.Tracker, error) { return &fake{start, end, all}, nil },
		})
		require.NoError(t, err)
		assert.Greater(t, res.Writes, uint64(0))
		if all {
			assert.Equal(t, 0, res.LostPages, "reporting everything cannot lose a write")
		} else {
			assert.Greater(t, res.LostPages, 0, "reporting nothing must lose writes")
			assert.LessOrEqual(t, len(res.Lost), 8)
		}
	}
}

func TestAgitatorSelection(t *testing.T) {
	_, err := pickAgitators(Options{Agitators: []string{"nope"}})
	assert.ErrorContains(t, err, `unknown agitator "nope"`)
	_, err = pickAgitators(Options{Tracker: "pagemap-scan", Agitators: []string{"uffd-wp"}})
	assert.ErrorContains(t, err, "uffd-wp unavailable")
	ags, err := pickAgitators(Options{Tracker: "pagemap-scan"})
	require.NoError(t, err)
	for _, a := range ags {
		assert.NotEqual(t, "uffd-wp", a.name, "defaults skip what the tracker excludes")
	}
}

func TestSources(t *testing.T) {
	word := func(v uint64) []byte {
		b := make([]byte, 16)
		*(*uint64)(unsafe.Pointer(&b[8])) = v
		return b
	}
	zero := make([]byte, 16)
	for v, want := range map[uint64]string{
		1<<56 | 5:          "cpu",
		tagODirect<<56 | 9: "odirect",
		tagGUP<<56 | 1:     "gup-write",
		tagMadvFree << 56:  "madvfree",
	} {
		assert.Equal(t, []string{want}, sources(zero, word(v)))
	}
	assert.Equal(t, []string{"zeroed"}, sources(word(7), zero))
	assert.Empty(t, sources(zero, zero))
}
