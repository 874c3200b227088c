package tests

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ldtlab/images/kernel"
	"ldtlab/orchestrator/mmselftests"
)

// TestSelftestsLDTvsVanilla runs the kernel's own mm selftests on the LDT
// kernel and on the vanilla kernel: every test case must have the same
// result on both, and neither may print a kernel report.
func TestSelftestsLDTvsVanilla(t *testing.T) {
	o := guestOptions(t, "selftests")
	var progress strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	c, err := mmselftests.CompareKernels(ctx, o, kernel.Selftests, 0, &progress)
	t.Logf("selftests:\n%s", progress.String())
	require.NoError(t, err)
	for _, name := range []string{"ldt", "vanilla"} {
		ran := map[string]bool{}
		for _, r := range c.Results[name] {
			ran[r.Test] = true
			assert.NotEmpty(t, r.Cases, "%s on %s produced no result lines:\n%s", r.Test, name, r.Output)
		}
		assert.Len(t, ran, len(kernel.Selftests), "%s kernel ran every selftest", name)
	}
	for _, f := range c.Flaky {
		t.Logf("flaky, not counted as a difference: %s", f)
	}
	for _, f := range c.Inconclusive {
		t.Logf("inconclusive attempt: %s", f)
	}
	assert.Empty(t, c.Differences, "LDT and vanilla kernels disagree")
	assert.Empty(t, c.Reports, "kernel reports during the selftests")
}
