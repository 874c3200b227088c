package soak

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var testCat = []Scenario{
	{Name: "swap-roundtrip", Trackers: []string{"ldt", "naive", "softdirty", "pagemap-scan"}},
	{Name: "ksm", Trackers: []string{"ldt", "naive", "softdirty"}},
	{Name: "fork", Trackers: []string{"ldt", "naive"}},
}

func TestPlanReproducible(t *testing.T) {
	for _, light := range []bool{false, true} {
		a := PlanRound(42, testCat, Mix{Light: light})
		// The catalogue's order must not matter.
		b := PlanRound(42, []Scenario{testCat[2], testCat[0], testCat[1]}, Mix{Light: light})
		assert.Equal(t, a, b, "light=%v", light)
		assert.NotEqual(t, a, PlanRound(43, testCat, Mix{Light: light}))
	}
}

func TestPlanShape(t *testing.T) {
	kinds := map[string]int{}
	big := 0
	for seed := uint64(0); seed < 400; seed++ {
		steps := PlanRound(RoundSeed(1, int(seed)), testCat, Mix{GuestMiB: 768})
		require.NotEmpty(t, steps)
		for _, s := range steps {
			kinds[s.Kind]++
			switch s.Kind {
			case "scenario":
				assert.Contains(t, map[string][]string{"swap-roundtrip": testCat[0].Trackers, "ksm": testCat[1].Trackers, "fork": testCat[2].Trackers}[s.Scenario], s.Tracker, "a tracker the scenario does not support")
			case "stress":
				assert.Greater(t, s.Duration.Seconds(), 0.0)
				if s.Pages > 768*256 {
					big++ // beyond the guest's memory: it must swap
				}
			case "checkpoint":
				assert.Contains(t, []string{"ldt", "softdirty"}, s.Tracker)
			}
		}
	}
	for _, k := range []string{"scenario", "stress", "checkpoint", "selftest"} {
		assert.Greater(t, kinds[k], 0, "no %s step in 400 rounds", k)
	}
	assert.Greater(t, big, 0, "no stress run beyond the guest's memory")
	light := PlanRound(5, testCat, Mix{Light: true})
	for _, s := range light {
		assert.NotContains(t, []string{"checkpoint", "selftest"}, s.Kind)
	}
}

func TestRoundSeedsDiffer(t *testing.T) {
	seen := map[uint64]bool{}
	for n := 1; n <= 1000; n++ {
		s := RoundSeed(7, n)
		assert.False(t, seen[s])
		seen[s] = true
	}
}

func TestParseInject(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []Injection
		err  string
	}{
		{"", nil, ""},
		{"warn@2, panic@4", []Injection{{"warn", 2}, {"panic", 4}}, ""},
		{"warn", nil, "WORD@ROUND"},
		{"warn@0", nil, "≥ 1"},
		{"rm -rf@1", nil, "labtest word"},
	} {
		got, err := ParseInject(tc.in)
		if tc.err != "" {
			require.Error(t, err, tc.in)
			assert.Contains(t, err.Error(), tc.err)
			continue
		}
		require.NoError(t, err)
		assert.Equal(t, tc.want, got)
	}
	steps := []Step{{Kind: "scenario"}, {Kind: "stress"}}
	got := withInjections(steps, 2, []Injection{{"warn", 2}, {"panic", 3}})
	require.Len(t, got, 3)
	assert.Equal(t, "inject", got[1].Kind)
	assert.Equal(t, steps, withInjections(steps, 1, []Injection{{"warn", 2}}))
}
