package tests

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ldtlab/guest/result"
	"ldtlab/orchestrator/check"
)

// TestCorrectnessCatalogue runs the main job in-process: every scenario
// under every tracker on the LDT debug kernel, the LDT/soft-dirty
// comparison and the checkpoint oracle (synthetic writer and redis under
// memory pressure). ldt, softdirty and pagemap-scan must pass everything
// (soft-dirty's documented kernel gaps aside), naive must be caught
// exactly where each scenario declares, and the kernel must stay quiet.
func TestCorrectnessCatalogue(t *testing.T) {
	o := guestOptions(t, "check")
	var progress strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	res, err := check.Run(ctx, check.Options{Guest: o, Seed: 1, Compare: true, Checkpoint: true, Progress: &progress})
	t.Logf("catalogue progress:\n%s", progress.String())
	require.NoError(t, err)
	var table strings.Builder
	check.Table(&table, res)
	t.Logf("%s", table.String())

	declaredCatch := map[string]bool{}
	for _, c := range res.Cells {
		t.Run(c.Scenario+"/"+c.Tracker, func(t *testing.T) {
			assert.Empty(t, c.KernelReport, "kernel reports")
			switch c.Verdict {
			case "PASS", "N/A", "KNOWN-GAP":
			case "CAUGHT":
				assert.Equal(t, "naive", c.Tracker)
				declaredCatch[c.Scenario] = true
			default:
				t.Errorf("%s: %s %s (reproduce: %s)", c.Verdict, c.Reason, c.Error, c.Repro)
			}
			if c.Tracker != "naive" && c.Verdict != "N/A" && c.Verdict != "KNOWN-GAP" {
				assert.Zero(t, c.Missed, "missed pages")
			}
			if c.Tracker != "naive" { // naive is the negative control: it must lose data where declared
				assert.Zero(t, c.Corrupted, "corrupted pages")
			}
		})
	}
	// Every scenario that declares teeth must show them: the path ones
	// carry LDT-only state, so naive must fail there too.
	declared := 0
	for _, c := range res.Cells {
		if c.Tracker == "naive" && c.NaiveExpectation != "nothing" && c.Verdict != "N/A" {
			declared++
			assert.True(t, declaredCatch[c.Scenario], "naive must be caught by %s", c.Scenario)
		}
		if c.Verdict != "N/A" && c.Verdict != "SKIP" {
			assert.Positive(t, c.QuietEpochs, "%s/%s ran no quiet epoch", c.Scenario, c.Tracker)
		}
	}
	for _, s := range []string{"stale-swap-cache", "lazyfree", "lazyfree-thp", "swap-roundtrip", "writeback", "kernel-writes",
		"migration", "thp-split-collapse", "fork", "mprotect", "mremap", "coexistence"} {
		assert.True(t, declaredCatch[s], "naive must be caught by %s", s)
	}
	// The LDT/soft-dirty comparison ran for every scenario both trackers
	// run, each with epochs and both runs as expected.
	require.NotEmpty(t, res.Compare)
	for _, v := range res.Compare {
		require.NotNil(t, v)
		assert.NotEmpty(t, v.Epochs, "comparison of %s has no epochs", v.Scenario)
		reported := 0
		for _, e := range v.Epochs {
			reported += e.LDT
		}
		assert.Positive(t, reported, "comparison of %s: ldt reported nothing in any epoch", v.Scenario)
		require.Len(t, v.Results, 2)
		assert.True(t, v.Results[0].AsExpected, "comparison of %s: the ldt run failed", v.Scenario)
	}
	assert.Empty(t, res.Problems)
	require.NotEmpty(t, res.Checkpoint)
	for _, cp := range res.Checkpoint {
		want := []result.Verdict{result.VPass}
		switch {
		case cp.Tracker == "naive" && cp.Target == "synthetic":
			want = []result.Verdict{result.VCaught} // the oracle has teeth
		case cp.Tracker == "naive":
			want = []result.Verdict{result.VCaught, result.VNotCaught}
		}
		assert.Contains(t, want, cp.Verdict, "checkpoint %s/%s: missed %d, %s %s", cp.Target, cp.Tracker, cp.Missed, cp.Reason, cp.Error)
		assert.Empty(t, cp.Reports)
		assert.Positive(t, cp.Compared, "checkpoint %s/%s compared no page", cp.Target, cp.Tracker)
	}
	assert.Zero(t, res.Failures)
}

// TestMutantsFail is the proof that the catalogue's verdicts mean
// something: deliberately broken trackers behind the tracker interface
// (guest/tracker/mutant.go) must each fail it — reports everything,
// forgets pages that came back from swap, forgets pages whose frame
// changed. (The fourth class, dropping the LDT-backup bit, is naive,
// which TestCorrectnessCatalogue requires to be caught.)
func TestMutantsFail(t *testing.T) {
	o := guestOptions(t, "mutants")
	var progress strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	res, err := check.Run(ctx, check.Options{Guest: o, Seed: 1, Trackers: check.Mutants, Progress: &progress})
	t.Logf("mutant progress:\n%s", progress.String())
	require.NoError(t, err)
	var table strings.Builder
	check.Table(&table, res)
	t.Logf("%s", table.String())
	caught := map[string][]string{}
	for _, c := range res.Cells {
		assert.Empty(t, c.KernelReport, "%s/%s kernel reports", c.Scenario, c.Tracker)
		if c.Verdict == "CAUGHT" {
			caught[c.Tracker] = append(caught[c.Tracker], c.Scenario)
		}
	}
	for _, m := range check.Mutants {
		assert.NotEmpty(t, caught[m], "mutant %s survived the whole catalogue", m)
	}
	// Where each class must be caught: the reporter of everything by the
	// quiet epochs everywhere; the swap-in bug by the swap round trip;
	// the frame bug by migration.
	for _, want := range []struct{ mutant, scenario string }{
		{"mutant-all", "swap-roundtrip"}, {"mutant-all", "concurrency"}, {"mutant-all", "lifecycle"},
		{"mutant-noswapin", "swap-roundtrip"}, {"mutant-pfn", "migration"},
	} {
		assert.Contains(t, caught[want.mutant], want.scenario, "%s must fail %s", want.mutant, want.scenario)
	}
	for _, p := range res.Problems {
		assert.NotContains(t, p, "survived")
	}
}
