package check

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

// Scenario names come from the guest's catalogue: the printed
// reproduction command quotes them.
func TestReproQuotesNames(t *testing.T) {
	r := &runner{o: Options{Seed: 7}}
	got := r.repro("ksm; touch /tmp/pwned", "ldt")
	assert.Equal(t, "labctl check --scenario 'ksm; touch /tmp/pwned' --tracker ldt --seed 7", got)
}

// The table escapes guest text for the terminal.
func TestTableEscapes(t *testing.T) {
	var b strings.Builder
	Table(&b, &Result{Cells: []*Cell{{Scenario: "x\x1b[2J", Tracker: "ldt", Verdict: "FAIL", Reason: "r\x1b]0;t\x07"}}})
	assert.NotContains(t, b.String(), "\x1b")
	assert.Contains(t, b.String(), `x\x1b[2J`)
}
