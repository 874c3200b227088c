// Package result is the one result type of a catalogue cell (scenario ×
// tracker): ldt-check fills the guest's half, the host adds what it saw
// (kernel reports, errors, the verdict). Both sides also share the verdict
// names, the host's judgement and the table of known kernel gaps, so a
// verdict means the same in `labctl check`, the soak and the tests.
package result

// Outcomes the guest gives a cell.
const (
	Pass = "pass"
	Fail = "fail"
	Skip = "skip"
	NA   = "n/a"
)

// Verdict is the host's judgement of a cell.
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
)

// Failed tells whether a verdict is an unexpected outcome.
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
