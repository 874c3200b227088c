package tests

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

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
	o.MemoryMiB = 0
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
	for _, s := range []string{"stale-swap-cache", "lazyfree", "swap-roundtrip", "writeback", "kernel-writes"} {
		assert.True(t, declaredCatch[s], "naive must be caught by %s", s)
	}
	require.NotEmpty(t, res.Checkpoint)
	for _, cp := range res.Checkpoint {
		want := []string{"PASS"}
		switch {
		case cp.Tracker == "naive" && cp.Target == "synthetic":
			want = []string{"CAUGHT"} // the oracle has teeth
		case cp.Tracker == "naive":
			want = []string{"CAUGHT", "NOT-CAUGHT"}
		}
		assert.Contains(t, want, cp.Verdict, "checkpoint %s/%s: missed %d, %s %s", cp.Target, cp.Tracker, cp.Missed, cp.Reason, cp.Error)
		assert.Empty(t, cp.Reports)
	}
	assert.Zero(t, res.Failures)
}
