package soak

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A journal of two sessions (the first killed mid-round) summarizes to
// the finished rounds only, and the report shows them.
func TestSummarizeAndReport(t *testing.T) {
	dir := t.TempDir()
	j, err := OpenJournal(dir)
	require.NoError(t, err)
	t0 := time.Date(2026, 11, 29, 1, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	st := &Start{Options: Options{Seed: 9, VMs: 2, Config: "debug", For: time.Hour}, Kernel: "6.12.117", Accel: "tcg"}
	add := func(r Record) { require.NoError(t, j.Append(r)) }
	add(Record{Type: "start", At: at(0), Start: st})
	add(Record{Type: "cell", At: at(10), Cell: &CellRecord{Round: 1, Step: Step{Kind: "scenario", Scenario: "ksm", Tracker: "ldt"}, Verdict: "PASS", Pages: 100}})
	add(Record{Type: "cell", At: at(20), Cell: &CellRecord{Round: 1, Step: Step{Kind: "stress", Tracker: "ldt"}, Verdict: "FAIL", Failed: true, Pages: 50, Crashes: []string{"warning: WARNING in z"}}})
	add(Record{Type: "round", At: at(21), Round: &RoundRecord{Round: 1}})
	// Round 2 was cut by the kill: its cell does not count.
	add(Record{Type: "cell", At: at(30), Cell: &CellRecord{Round: 2, Step: Step{Kind: "scenario", Scenario: "ksm", Tracker: "naive"}, Verdict: "CAUGHT", Pages: 1000}})
	add(Record{Type: "start", At: at(1000), Session: 1, Start: st})
	add(Record{Type: "cell", At: at(1010), Session: 1, Cell: &CellRecord{Round: 2, Step: Step{Kind: "scenario", Scenario: "ksm", Tracker: "naive"}, Verdict: "CAUGHT", Pages: 7}})
	add(Record{Type: "round", At: at(1011), Session: 1, Round: &RoundRecord{Round: 2}})
	add(Record{Type: "lab-failure", At: at(1012), Session: 1, LabFailure: &LabFailure{Round: 3, Phase: "boot", Error: "lab failure while starting QEMU"}})
	add(Record{Type: "end", At: at(1020), Session: 1, End: &End{Reason: "deadline"}})
	j.Close()

	recs, err := Replay(dir)
	require.NoError(t, err)
	s := Summarize(recs)
	assert.Equal(t, 2, s.Sessions)
	assert.Equal(t, 2, s.Rounds)
	assert.Equal(t, 3, s.Cells)
	assert.Equal(t, int64(157), s.Pages)
	assert.Equal(t, 1, s.Failures)
	assert.Equal(t, 1, s.LabFailures)
	assert.Equal(t, "deadline", s.Ended)
	assert.Equal(t, 50*time.Second, s.Elapsed, "30 s of the killed session + 20 s of the resumed one")
	assert.Equal(t, map[int]bool{1: true, 2: true}, s.roundsDone)
	require.Len(t, s.Timeline, 2)
	assert.Equal(t, 1, s.Timeline[1].Crashes)

	store, _ := OpenStore(dir)
	store.Record(Occurrence{Title: "warning: WARNING in z", Kind: "kernel", At: at(20), Repro: "labctl stress --seed 1"})
	store.Record(Occurrence{Title: "page-table-check: WARNING in w", Kind: "known", Known: "vanilla bug", At: at(30)})
	md, html, err := WriteReport(dir)
	require.NoError(t, err)
	mb, _ := os.ReadFile(md)
	hb, _ := os.ReadFile(html)
	for _, want := range []string{"warning: WARNING in z", "labctl stress --seed 1", "2 rounds", "1 CAUGHT", "finished: deadline", "starting QEMU",
		"1 unique, 1 occurrences; plus 1 known kernel bug(s) outside LDT seen 1 time(s)"} {
		assert.Contains(t, string(mb), want)
		assert.Contains(t, string(hb), want)
	}
	assert.Equal(t, 2, strings.Count(string(hb), "data:image/png;base64,"), "both figures inline")
	assert.FileExists(t, filepath.Join(dir, "report-progress.png"))
}
