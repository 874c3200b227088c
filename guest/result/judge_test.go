package result

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestJudge(t *testing.T) {
	cases := []struct {
		name string
		cell Cell
		gap  string
		want Verdict
	}{
		{"ldt clean", Cell{Tracker: "ldt", Outcome: "pass"}, "", "PASS"},
		{"ldt missed", Cell{Tracker: "ldt", Outcome: "fail", Missed: 3}, "", "FAIL"},
		{"ldt corrupted", Cell{Tracker: "ldt", Outcome: "fail", Corrupted: 1}, "", "FAIL"},
		{"kernel report fails a clean cell", Cell{Tracker: "ldt", Outcome: "pass", KernelReport: []string{"warning: WARNING in x"}}, "", "FAIL"},
		{"skip", Cell{Tracker: "softdirty", Outcome: "skip"}, "", "SKIP"},
		{"naive caught", Cell{Tracker: "naive", Outcome: "fail", AsExpected: true, Corrupted: 5, NaiveExpectation: "lose-data"}, "", "CAUGHT"},
		{"naive no teeth", Cell{Tracker: "naive", Outcome: "pass", AsExpected: false, NaiveExpectation: "miss-pages"}, "", "NO-TEETH"},
		{"naive must do nothing", Cell{Tracker: "naive", Outcome: "pass", AsExpected: true, NaiveExpectation: "nothing"}, "", "PASS"},
		{"naive loses data where it must not", Cell{Tracker: "naive", Outcome: "fail", Corrupted: 1, NaiveExpectation: "nothing"}, "", "FAIL"},
		{"known gap", Cell{Tracker: "softdirty", Outcome: "fail", Missed: 68}, "kernel", "KNOWN-GAP"},
		{"known gap never excuses corruption", Cell{Tracker: "softdirty", Outcome: "fail", Missed: 1, Corrupted: 1}, "kernel", "FAIL"},
		{"known gap never excuses an error", Cell{Tracker: "softdirty", Outcome: "fail", Error: "boom"}, "kernel", "FAIL"},
		{"known gap never excuses a failure without missed pages", Cell{Tracker: "softdirty", Outcome: "fail", Reason: "collect: EIO"}, "kernel", "FAIL"},
		{"known gap never excuses over-reporting", Cell{Tracker: "softdirty", Outcome: "fail", Missed: 2, QuietReported: 1}, "kernel", "FAIL"},
		{"naive like ldt fails on a scenario error", Cell{Tracker: "naive", Outcome: "fail", Reason: "mremap: EINVAL", NaiveExpectation: "nothing"}, "", "FAIL"},
		{"ldt fails on a failed outcome with clean counts", Cell{Tracker: "ldt", Outcome: "fail", QuietReported: 4}, "", "FAIL"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.cell
			assert.Equal(t, tc.want, judge(&c, tc.gap))
		})
	}
}

func TestJudgeMutant(t *testing.T) {
	cases := []struct {
		name string
		cell Cell
		want Verdict
	}{
		{"caught", Cell{Tracker: "mutant-all", Outcome: "fail", QuietReported: 9}, "CAUGHT"},
		{"survived this cell", Cell{Tracker: "mutant-pfn", Outcome: "pass"}, "SURVIVED"},
		{"skip is not a catch", Cell{Tracker: "mutant-pfn", Outcome: "skip"}, "SKIP"},
		{"kernel report", Cell{Tracker: "mutant-pfn", Outcome: "fail", KernelReport: []string{"BUG"}}, "FAIL"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.cell
			assert.Equal(t, tc.want, judgeMutant(&c))
		})
	}
}

func TestFailedCountsSkips(t *testing.T) {
	for v, want := range map[Verdict]bool{"PASS": false, "CAUGHT": false, "KNOWN-GAP": false, "N/A": false, "SURVIVED": false, "FAIL": true, "NO-TEETH": true, "SKIP": true} {
		c := Cell{Verdict: v}
		assert.Equal(t, want, c.Failed(), v)
	}
}

func TestJudgeVanilla(t *testing.T) {
	c := Cell{Scenario: "x", Tracker: "ldt", Outcome: "skip"}
	Judge(&c, true)
	assert.Equal(t, VNA, c.Verdict, "no /dev/ldt on a vanilla kernel")
	c = Cell{Scenario: "x", Tracker: "softdirty", Outcome: "skip"}
	Judge(&c, true)
	assert.Equal(t, VSkip, c.Verdict, "a reference tracker's skip stays a failure")
	c = Cell{Scenario: "ksm", Tracker: "softdirty", Outcome: "fail", Missed: 31}
	Judge(&c, false)
	assert.Equal(t, VKnownGap, c.Verdict, "the table of known gaps is consulted")
}
