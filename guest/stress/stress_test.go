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

// Agitators count what they achieved, not only how often they ran: each
// effect an agitator that runs anywhere (no swap, no NUMA needed) reports
// must be there after a short run, and match its actions where one
// action is one effect.
func TestEffectsCounted(t *testing.T) {
	cases := []struct {
		agitator, effect string
		perAction        bool // one effect per action
	}{
		{"madvfree", "pages lazily freed, then rewritten", false},
		{"gup-write", "pages written through process_vm_writev", true},
		{"procmem", "pages written through /proc/self/mem", true},
	}
	for _, c := range cases {
		t.Run(c.agitator, func(t *testing.T) {
			res, err := Run(Options{
				Tracker: "fake", Pages: 64, Writers: 1, Duration: 200 * time.Millisecond, Epochs: 1,
				Agitators: []string{c.agitator}, Seed: 2,
				Open: func(start, end uintptr) (tracker.Tracker, error) { return &fake{start, end, true}, nil },
			})
			require.NoError(t, err)
			require.Greater(t, res.Agitators[c.agitator], 0)
			got := res.Effects[c.agitator][c.effect]
			assert.Greater(t, got, 0, "effects: %v", res.Effects)
			if c.perAction {
				assert.Equal(t, res.Agitators[c.agitator], got)
			} else {
				assert.GreaterOrEqual(t, got, res.Agitators[c.agitator], "each action frees at least one page")
			}
		})
	}
}
