package migrate

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"

	"ldtlab/guest/result"
	"ldtlab/orchestrator/cell"
)

func TestSummary(t *testing.T) {
	res := &Result{Kernel: "6.12.118", Variant: "debug", Accel: "tcg", ToGuest: true, Options: cell.MigrateOptions{Pressure: true},
		Runs: []*cell.Migrate{
			{Tracker: "ldt", Verdict: result.VPass, Rounds: 3, Copied: []int{7000, 900, 40, 30, 20}, DigestBefore: "abc", DigestAfter: "abc", Restored: true, Served: true, Benchmark: true, DumpedPages: 7100, Pressure: true, Swapped: 300, ToGuest: true, TransferMiB: 30, TransferS: 20},
			{Tracker: "naive", Verdict: result.VCaught, Rounds: 3, Copied: []int{7000, 10, 10, 10, 5}, DigestBefore: "abc", DigestAfter: "def", Restored: true, Served: true, DumpedPages: 7100, Differ: 50, Absent: 40, Caught: []string{"digest differs"}},
			{Tracker: "pagemap-scan", Verdict: result.VNA, Reason: "it tracks only the calling process"},
		}, Failures: 0}
	var b strings.Builder
	Summary(&b, res)
	out := b.String()
	assert.Contains(t, out, "restored on a second guest (the image crosses the host)")
	assert.Contains(t, out, "under memory pressure")
	assert.Contains(t, out, "ldt           PASS       rounds 3, pages copied per round 7000 900 40 30 20")
	assert.Contains(t, out, "30.0 MiB through the host in 20.0 s")
	assert.Contains(t, out, "digest abc = abc")
	assert.Contains(t, out, "digest abc ≠ def")
	assert.Contains(t, out, "CRIU 7100 pages: 50 differ (40 never copied")
	assert.Contains(t, out, "caught by: digest differs")
	assert.Contains(t, out, "pagemap-scan  N/A        it tracks only the calling process")
	assert.Contains(t, out, "3 runs: 1 PASS, 1 CAUGHT, 1 N/A; 0 failure(s)")
}
