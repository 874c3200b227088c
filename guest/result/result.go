// Package result is the one contract between host and guest: the wire
// type of every guest program's result (a catalogue cell, ldt-check's
// comparison and checkpoint run, ldt-stress, ldt-migrate: wire.go), the
// one verdict vocabulary, and the judges that turn a result into a
// verdict (judge.go: the negative control must be CAUGHT, a known kernel
// gap excuses missed pages only, Verdict.Failed is the one definition of
// a failure), with the tables of known kernel gaps (gaps.go,
// fuzzgaps.go). ldt-check, ldt-stress and ldt-migrate fill the guest's
// half; the host (orchestrator/cell, stress, check, soak, the tests)
// reads the same types and adds what it saw.
package result

// Outcomes the guest gives a cell.
const (
	Pass = "pass"
	Fail = "fail"
	Skip = "skip"
	NA   = "n/a"
)

// Verdict is the host's judgement of a cell, and of every other step the
// lab judges (a comparison, a checkpoint run, a stress run, a migration,
// a soak step): the one vocabulary of check, stress, migrate, soak and the
// tests.
type Verdict string

// Verdicts. Failed tells which of them fail a run.
const (
	VPass      Verdict = "PASS"
	VFail      Verdict = "FAIL"
	VCaught    Verdict = "CAUGHT"     // the negative control failed as declared
	VNoTeeth   Verdict = "NO-TEETH"   // the negative control passed a scenario that must catch it
	VKnownGap  Verdict = "KNOWN-GAP"  // a documented kernel limitation (missed pages only)
	VSkip      Verdict = "SKIP"       // did not reach its path: not a pass
	VNA        Verdict = "N/A"        // the tracker cannot work in this scenario
	VSurvived  Verdict = "SURVIVED"   // a mutant passed this cell (informational)
	VNotCaught Verdict = "NOT-CAUGHT" // informational negative control (redis checkpoint)
	VError     Verdict = "ERROR"      // the run did not produce a result
	// The soak's steps that are not cells.
	VInfo     Verdict = "INFO"     // ran, not judged here (an mm selftest: labctl selftests compares it with vanilla)
	VInjected Verdict = "INJECTED" // a kernel fault the soak fired on purpose: its reports are filed, not failed
	VLab      Verdict = "LAB"      // the lab failed under the step: filed as a lab failure, not a failed cell
)

// Verdicts is the whole vocabulary, in the order tables list it.
var Verdicts = []Verdict{VPass, VCaught, VKnownGap, VNA, VSurvived, VNotCaught, VInfo, VInjected, VFail, VNoTeeth, VSkip, VError, VLab}

// Failed tells whether a verdict is an unexpected outcome: the one
// definition every judge, table and exit status uses. A lab failure is
// not the kernel's: it is counted apart (labctl's exit status 3, the
// soak's lab-failures/).
func (v Verdict) Failed() bool {
	switch v {
	case VFail, VNoTeeth, VSkip, VError:
		return true
	}
	return false
}

// Expect is what the negative control (the naive tracker) must do to a
// scenario.
type Expect string

// Expectations of the negative control.
const (
	LoseData  Expect = "lose-data"  // corrupted > 0
	MissPages Expect = "miss-pages" // missed > 0
	Nothing   Expect = "nothing"    // passes like ldt
)

// Entry is one scenario of the catalogue as `ldt-check -list` gives it.
type Entry struct {
	Name     string            `json:"name"`
	Paths    string            `json:"paths"`
	Doc      string            `json:"doc"`
	Naive    Expect            `json:"naive_expectation"`
	Trackers []string          `json:"trackers"`
	NotFor   map[string]string `json:"not_for,omitempty"`
	Child    bool              `json:"child_process,omitempty"`
}

// Allows tells whether the scenario runs under tracker t; a mutant runs
// wherever ldt does.
func (e Entry) Allows(t string) bool {
	if IsMutant(t) {
		t = "ldt"
	}
	for _, x := range e.Trackers {
		if x == t {
			return true
		}
	}
	return false
}

// Cell is one scenario under one tracker.
type Cell struct {
	// Guest side (ldt-check).
	Scenario         string         `json:"scenario"`
	Tracker          string         `json:"tracker"`
	Seed             uint64         `json:"seed"`
	Epochs           int            `json:"epochs"`
	Outcome          string         `json:"outcome"` // pass | fail | skip | n/a
	AsExpected       bool           `json:"as_expected"`
	Reason           string         `json:"reason"`
	Missed           int            `json:"missed"`
	Extra            int            `json:"extra"`
	ExtraClassified  map[string]int `json:"extra_classified,omitempty"`
	Corrupted        int            `json:"corrupted"`
	NaiveExpectation Expect         `json:"naive_expectation"`
	Written          []int          `json:"written,omitempty"`
	Reported         []int          `json:"reported,omitempty"`
	MissedPerEpoch   []int          `json:"missed_per_epoch,omitempty"`
	CorruptPerEpoch  []int          `json:"corrupted_per_epoch,omitempty"`
	DurationMS       int64          `json:"duration_ms"`
	// Notes are facts the scenario established on the way (pages really
	// swapped out, THPs really formed...): what makes a pass meaningful.
	Notes []string `json:"notes,omitempty"`
	// Samples are the first missed and corrupted pages, for diagnosis.
	Samples []string `json:"samples,omitempty"`
	// ReportedSets holds each epoch's reported page offsets (-compare).
	ReportedSets [][]int `json:"reported_sets,omitempty"`
	// QuietEpochs counts the collections made right after another with
	// nothing written in between; QuietReported the pages they reported
	// (must be 0: a tracker that reports unwritten pages fails).
	QuietEpochs   int `json:"quiet_epochs"`
	QuietReported int `json:"quiet_reported"`
	// DeclaredLoss counts corrupted pages of the scenario's Loss kind.
	DeclaredLoss int `json:"declared_loss,omitempty"`
	// Unexplained counts extra reports no mechanism explains
	// (unclassified, outside the range, in the unmapped reservation):
	// a failure for ldt.
	Unexplained int `json:"unexplained_extra"`

	// Host side.
	Verdict      Verdict  `json:"verdict,omitempty"`
	KernelReport []string `json:"kernel_reports,omitempty"`
	Error        string   `json:"error,omitempty"`
	Repro        string   `json:"repro,omitempty"`
	Took         float64  `json:"took_s,omitempty"`
}

// ExitCode is ldt-check's status for a cell: 0 as expected, 1 otherwise.
func (c *Cell) ExitCode() int {
	if c.AsExpected {
		return 0
	}
	return 1
}

// Failed tells whether the cell is an unexpected outcome.
func (c *Cell) Failed() bool { return c.Verdict.Failed() }
