package soak

import (
	"testing"
	"time"

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
			case "migrate":
				assert.Contains(t, []string{"ldt", "softdirty", "naive"}, s.Tracker)
			}
		}
	}
	for _, k := range []string{"scenario", "stress", "checkpoint", "migrate", "selftest"} {
		assert.Greater(t, kinds[k], 0, "no %s step in 400 rounds", k)
	}
	assert.Greater(t, big, 0, "no stress run beyond the guest's memory")
	light := PlanRound(5, testCat, Mix{Light: true})
	for _, s := range light {
		assert.NotContains(t, []string{"checkpoint", "migrate", "selftest"}, s.Kind)
	}
}

// TestPlanMigrateFrequency: about one round in ten migrates redis, and a
// round that does keeps its other steps.
func TestPlanMigrateFrequency(t *testing.T) {
	with := 0
	for n := 0; n < 300; n++ {
		steps := PlanRound(RoundSeed(3, n), testCat, Mix{GuestMiB: 768})
		var others []Step
		for _, s := range steps {
			if s.Kind == "migrate" {
				with++
				continue
			}
			others = append(others, s)
		}
		assert.NotEmpty(t, others)
	}
	assert.Greater(t, with, 10, "about one round in ten migrates")
	assert.Less(t, with, 60)
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
		{"rm -rf@1", nil, "labtest trigger"},
		{"stuck@3", []Injection{{"stuck", 3}}, ""},
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

// Steps map onto the executor's cells with their sizes; a scenario the
// catalogue lacks is an error, not a guess.
func TestSpec(t *testing.T) {
	sp, err := spec(Step{Kind: "scenario", Scenario: "ksm", Tracker: "softdirty", Seed: 5, Epochs: 3}, testCat)
	require.NoError(t, err)
	assert.Equal(t, "ksm", sp.Scenario.Name)
	assert.Equal(t, "ksm/softdirty", sp.Name())
	assert.Equal(t, 3, sp.Epochs)

	sp, err = spec(Step{Kind: "stress", Tracker: "ldt", Seed: 9, Pages: 4096, Duration: 7 * time.Second, THP: true}, testCat)
	require.NoError(t, err)
	assert.Equal(t, "stress-thp/ldt", sp.Name())
	assert.Equal(t, 4096, sp.Stress.Pages)
	assert.Equal(t, 7*time.Second, sp.Stress.Duration)
	assert.Equal(t, uint64(9), sp.Stress.Seed)

	sp, err = spec(Step{Kind: "checkpoint", Target: "redis", Tracker: "ldt"}, testCat)
	require.NoError(t, err)
	assert.Equal(t, "checkpoint-redis/ldt", sp.Name())

	sp, err = spec(Step{Kind: "migrate", Tracker: "naive"}, testCat)
	require.NoError(t, err)
	assert.Equal(t, "migrate/naive", sp.Name())
	assert.True(t, sp.Migrate.Pressure)
	assert.Equal(t, 3, sp.Migrate.Rounds)

	_, err = spec(Step{Kind: "scenario", Scenario: "gone"}, testCat)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "not in the catalogue")
}

func TestKnownStressReport(t *testing.T) {
	ptc := Seen{Type: "page-table-check", Title: "WARNING in __page_table_check_ptes_set", Text: "WARNING: CPU: 1 PID: 7 at mm/page_table_check.c\n make_uffd_wp_pte+0x5/0x10\n"}
	assert.NotEmpty(t, knownStressReport("pagemap-scan", ptc), "the vanilla make_uffd_wp_pte bug under pagemap-scan")
	assert.Empty(t, knownStressReport("ldt", ptc), "nothing is excused for ldt")
	assert.Empty(t, knownStressReport("pagemap-scan", Seen{Type: "warning", Title: "WARNING in x", Text: "x+0x1/0x2"}))
}

// Stress runs vary their agitators and mTHP size from their own seed,
// never asking for one ldt-stress would refuse for that run.
func TestPlanVariesStress(t *testing.T) {
	subsets, mthp := 0, 0
	for seed := uint64(1); seed <= 400; seed++ {
		st := Step{Kind: "stress", Seed: seed, Tracker: []string{"ldt", "pagemap-scan", "naive"}[seed%3], THP: seed%5 == 0}
		varyStress(&st)
		again := Step{Kind: "stress", Seed: seed, Tracker: st.Tracker, THP: st.THP}
		varyStress(&again)
		require.Equal(t, st, again, "reproducible from the seed")
		if st.Agitators != nil {
			subsets++
			assert.NotEmpty(t, st.Agitators)
			if st.Tracker == "pagemap-scan" {
				assert.NotContains(t, st.Agitators, "uffd-wp")
			}
			if !st.THP {
				assert.NotContains(t, st.Agitators, "thp-split")
			}
		}
		if st.MTHP != "" {
			mthp++
			assert.False(t, st.THP)
		}
	}
	assert.InDelta(t, 200, subsets, 60)
	assert.Greater(t, mthp, 40)
}
