package scenario

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ldtlab/guest/tracker"
)

func TestStampContent(t *testing.T) {
	a, b := StampFor(1, 3, 1), StampFor(1, 3, 2)
	assert.NotEqual(t, a, b, "generations differ")
	assert.NotEqual(t, a, StampFor(2, 3, 1), "seeds differ")
	assert.NotEqual(t, a, StampFor(1, 4, 1), "pages differ")
	page := Content(a)
	assert.True(t, Matches(page, a))
	assert.False(t, Matches(page, b))
	page[PageSize-1] ^= 1 // a torn tail is caught, not only the header
	assert.False(t, Matches(page, a))
	assert.True(t, Matches(make([]byte, PageSize), 0))
	assert.False(t, Matches(Content(a), 0))
}

func newTestWS(t *testing.T, kind Kind, n int) *Workset {
	ws, err := NewWorkset(9, n)
	require.NoError(t, err)
	t.Cleanup(func() { ws.Close() })
	_, err = ws.Map("t", kind, 0, n, -1)
	require.NoError(t, err)
	assert.Zero(t, ws.Base%HugePage, "2 MiB aligned")
	return ws
}

func TestJudge(t *testing.T) {
	ws := newTestWS(t, Anon, 16)
	r := func(pages ...int) []tracker.Region {
		var out []tracker.Region
		for _, p := range pages {
			out = append(out, tracker.Region{Start: ws.Base + uintptr(p)*PageSize, End: ws.Base + uintptr(p+1)*PageSize})
		}
		return out
	}
	tests := []struct {
		name         string
		write        []int
		hint         []int
		report       []int
		missed, extr int
		classes      map[string]int
	}{
		{"exact", []int{1, 2}, nil, []int{1, 2}, 0, 0, map[string]int{}},
		{"missed", []int{1, 2, 3}, nil, []int{2}, 2, 0, map[string]int{}},
		{"extra hinted", []int{1}, []int{5}, []int{1, 5, 6}, 0, 2, map[string]int{"hinted": 1, "unclassified": 1}},
		{"nothing", nil, nil, nil, 0, 0, map[string]int{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, id := range tt.write {
				ws.Write(id)
			}
			for _, h := range tt.hint {
				ws.Hint(h, 1, "hinted")
			}
			st := ws.Judge(r(tt.report...))
			assert.Len(t, st.Missed, tt.missed)
			assert.Equal(t, tt.extr, st.Extra)
			assert.Equal(t, tt.classes, st.Classified)
			assert.Equal(t, len(tt.write), st.Written)
			assert.Zero(t, ws.WrittenCount(), "a new epoch starts")
		})
	}
}

func TestVerifyDescribes(t *testing.T) {
	ws := newTestWS(t, Anon, 4)
	for id := range 4 {
		ws.Write(id)
	}
	stale := append([]byte(nil), ws.Page(1)...)
	ws.Write(1)
	copy(ws.Page(1), stale)        // a lost write: the old generation is back
	clear(ws.Page(2))              // a discarded page
	copy(ws.Page(3), Content(777)) // garbage
	cs, err := ws.Verify(nil)
	require.NoError(t, err)
	require.Len(t, cs, 3)
	assert.Contains(t, cs[0].What, "stale generation 1, want 2")
	assert.Contains(t, cs[1].What, "all zeros")
	assert.Contains(t, cs[2].What, "unrecognised")
}

func TestJudgeOutcome(t *testing.T) {
	tests := []struct {
		tracker           string
		naive             Expect
		missed, corrupted int
		outcome           string
		expected          bool
	}{
		{"ldt", LoseData, 0, 0, Pass, true},
		{"ldt", Nothing, 1, 0, Fail, false},
		{"softdirty", Nothing, 0, 2, Fail, false},
		{"naive", LoseData, 0, 3, Fail, true},
		{"naive", LoseData, 5, 0, Fail, false}, // failed, but not the declared way
		{"naive", MissPages, 5, 0, Fail, true},
		{"naive", MissPages, 0, 0, Pass, false}, // no teeth
		{"naive", Nothing, 0, 0, Pass, true},
		{"naive", Nothing, 1, 0, Fail, false},
	}
	for _, tt := range tests {
		t.Run(tt.tracker+"/"+string(tt.naive), func(t *testing.T) {
			res := &Result{Tracker: tt.tracker, Missed: tt.missed, Corrupted: tt.corrupted}
			judge(&Scenario{Naive: tt.naive}, res)
			assert.Equal(t, tt.outcome, res.Outcome)
			assert.Equal(t, tt.expected, res.AsExpected, res.Reason)
		})
	}
}

// TestConcurrencyWindow pins the collection-window arithmetic: E is 2j-1
// while collection j runs and 2j after it.
func TestConcurrencyWindow(t *testing.T) {
	tests := []struct {
		a, b   int32
		lo, hi int
	}{
		{0, 0, 1, 1}, // before any collection: the first must report it
		{2, 2, 2, 2}, // between collections 1 and 2
		{1, 1, 1, 2}, // during collection 1: 1 or 2
		{1, 2, 1, 2}, // straddles the end of 1
		{2, 3, 2, 3}, // straddles the start of 2
		{0, 4, 1, 3},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.lo, winLo(tt.a), "lo(%d)", tt.a)
		assert.Equal(t, tt.hi, winHi(tt.b), "hi(%d)", tt.b)
	}
}

func TestCatalogue(t *testing.T) {
	names := Names()
	assert.Len(t, names, len(order))
	assert.Equal(t, order, func() []string {
		var out []string
		for _, s := range Catalogue() {
			out = append(out, s.Name)
		}
		return out
	}())
	for _, must := range []string{"stale-swap-cache", "lazyfree", "swap-roundtrip", "writeback", "kernel-writes"} {
		s, ok := Lookup(must)
		require.True(t, ok, must)
		assert.NotEqual(t, Nothing, s.Naive, "%s must catch naive", must)
	}
	for _, s := range Catalogue() {
		assert.Contains(t, s.Trackers(), "ldt", s.Name)
		assert.Contains(t, s.Trackers(), "naive", s.Name)
		for tr, why := range s.NotFor {
			assert.NotEmpty(t, why, "%s excludes %s without a reason", s.Name, tr)
		}
	}
}

func TestCheckRegions(t *testing.T) {
	const start, end = 0x10000, 0x20000
	cases := []struct {
		name string
		rs   []tracker.Region
		ok   bool
	}{
		{"none", nil, true},
		{"inside", []tracker.Region{{Start: start, End: start + PageSize}, {Start: end - PageSize, End: end}}, true},
		{"unaligned start", []tracker.Region{{Start: start + 8, End: start + PageSize}}, false},
		{"unaligned end", []tracker.Region{{Start: start, End: start + 100}}, false},
		{"inverted", []tracker.Region{{Start: start + 2*PageSize, End: start + PageSize}}, false},
		{"empty", []tracker.Region{{Start: start, End: start}}, false},
		{"below", []tracker.Region{{Start: start - PageSize, End: start + PageSize}}, false},
		{"above", []tracker.Region{{Start: end - PageSize, End: end + PageSize}}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckRegions(tc.rs, start, end)
			assert.Equal(t, tc.ok, err == nil, "%v", err)
		})
	}
}

// TestJudgeOverReporting: a pass needs no missed and no corrupted pages,
// and no over-reporting: nothing in a quiet epoch (any tracker) and no
// unexplained extra report (ldt and the mutants).
func TestJudgeOverReporting(t *testing.T) {
	s := &Scenario{Name: "x", Naive: MissPages}
	cases := []struct {
		name     string
		res      Result
		outcome  string
		expected bool
	}{
		{"ldt clean", Result{Tracker: "ldt"}, Pass, true},
		{"ldt quiet epoch reported", Result{Tracker: "ldt", QuietReported: 3}, Fail, false},
		{"ldt unexplained extra", Result{Tracker: "ldt", Unexplained: 1}, Fail, false},
		{"mutant unexplained extra", Result{Tracker: "mutant-all", Unexplained: 1}, Fail, false},
		{"softdirty unexplained extra is a label", Result{Tracker: "softdirty", Unexplained: 5}, Pass, true},
		{"softdirty quiet epoch reported", Result{Tracker: "softdirty", QuietReported: 1}, Fail, false},
		{"naive caught", Result{Tracker: "naive", Missed: 2}, Fail, true},
		{"naive no teeth", Result{Tracker: "naive"}, Pass, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.res
			judge(s, &r)
			assert.Equal(t, tc.outcome, r.Outcome, r.Reason)
			assert.Equal(t, tc.expected, r.AsExpected, r.Reason)
		})
	}
}

func TestJudgeDeclaredLoss(t *testing.T) {
	s := &Scenario{Name: "x", Naive: LoseData, Loss: "all zeros"}
	r := Result{Tracker: "naive", Corrupted: 4}
	judge(s, &r)
	assert.False(t, r.AsExpected, "stale data is not the zeros the scenario declares")
	r = Result{Tracker: "naive", Corrupted: 4, DeclaredLoss: 4}
	judge(s, &r)
	assert.True(t, r.AsExpected)
}

// TestNoQuietEpochFails: RunCell fails a scenario that ran no quiet epoch.
func TestNoQuietEpochFails(t *testing.T) {
	s := &Scenario{Name: "stub-no-quiet", Naive: Nothing, Run: func(e *Env) error { return nil }}
	res := RunCell(s, Config{Tracker: "pagemap-scan", Seed: 1})
	assert.Equal(t, Fail, res.Outcome)
	assert.Contains(t, res.Reason, "quiet epoch")
}

func TestUnexplained(t *testing.T) {
	for class, want := range map[string]bool{"unclassified": true, "outside-range": true, "unmapped-reservation": true,
		"child:unclassified": true, "thp-pmd-granularity": false, "thp-split": false, "new-vma": false, "mremap": false} {
		assert.Equal(t, want, Unexplained(class), class)
	}
}
