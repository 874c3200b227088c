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

func TestJudgeNegative(t *testing.T) {
	for _, c := range []struct {
		lost, required bool
		want           Verdict
	}{
		{true, true, VCaught},
		{true, false, VCaught},
		{false, true, VNoTeeth},
		{false, false, VNotCaught},
	} {
		assert.Equal(t, c.want, JudgeNegative(c.lost, c.required), "lost=%v required=%v", c.lost, c.required)
	}
}

// Every verdict of the vocabulary has its one answer to Failed.
func TestVerdictFailed(t *testing.T) {
	failed := map[Verdict]bool{VFail: true, VNoTeeth: true, VSkip: true, VError: true}
	assert.Len(t, Verdicts, 13)
	for _, v := range Verdicts {
		assert.Equal(t, failed[v], v.Failed(), "%s", v)
	}
}

func TestJudgeCheckpoint(t *testing.T) {
	for _, c := range []struct {
		name, tracker, target string
		r                     Checkpoint
		reports               bool
		want                  Verdict
	}{
		{"ldt clean", "ldt", "synthetic", Checkpoint{Outcome: Pass}, false, VPass},
		{"ldt missed", "ldt", "redis", Checkpoint{Outcome: Fail, Missed: 2}, false, VFail},
		{"a report fails a clean run", "ldt", "redis", Checkpoint{Outcome: Pass}, true, VFail},
		{"skip", "softdirty", "redis", Checkpoint{Outcome: Skip}, false, VSkip},
		{"naive caught", "naive", "synthetic", Checkpoint{Outcome: Fail, Missed: 9}, false, VCaught},
		{"naive no teeth on the synthetic writer", "naive", "synthetic", Checkpoint{Outcome: Pass}, false, VNoTeeth},
		{"naive informational on redis", "naive", "redis", Checkpoint{Outcome: Pass}, false, VNotCaught},
	} {
		t.Run(c.name, func(t *testing.T) {
			v, _ := JudgeCheckpoint(c.tracker, c.target, &c.r, c.reports)
			assert.Equal(t, c.want, v)
		})
	}
}

func TestJudgeStress(t *testing.T) {
	for _, c := range []struct {
		tracker    string
		code, lost int
		want       Verdict
	}{
		{"ldt", 0, 0, VPass},
		{"ldt", 1, 3, VFail},
		{"ldt", 2, 0, VError},
		{"ldt", 1, 0, VError},
		{"ldt", 0, 3, VError},
		{"naive", 1, 5, VCaught},
		{"naive", 0, 0, VNoTeeth},
	} {
		assert.Equal(t, c.want, JudgeStress(c.tracker, c.code, c.lost), "%+v", c)
	}
}
