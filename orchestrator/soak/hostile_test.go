package soak

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// victim is a file outside the soak directory that a planted symlink
// points at: nothing the soak does may change or read it.
func victim(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "victim")
	require.NoError(t, os.WriteFile(p, []byte(content), 0o600))
	return p
}

func unchanged(t *testing.T, p, want string) {
	t.Helper()
	b, err := os.ReadFile(p)
	require.NoError(t, err)
	assert.Equal(t, want, string(b), "the file the symlink points at was changed")
}

// The printed replay command once suggested --out /tmp/replay-rN: another
// user pre-created it as a symlink and the replay wrote through it.
func TestOpenJournalRefusesSymlinkedDir(t *testing.T) {
	target := t.TempDir()
	link := filepath.Join(t.TempDir(), "replay-r3")
	require.NoError(t, os.Symlink(target, link))
	j, err := OpenJournal(link)
	if err == nil {
		j.Close()
	}
	require.Error(t, err)
	assert.Contains(t, err.Error(), "symbolic link")
	_, err = os.Stat(filepath.Join(target, "soak.lock"))
	assert.True(t, os.IsNotExist(err), "nothing is created through the link")
}

// soak.lock and journal.jsonl planted as symlinks: the lock's truncation
// and the journal's torn-tail repair must not reach their targets.
func TestOpenJournalRefusesSymlinkedFiles(t *testing.T) {
	for _, name := range []string{"soak.lock", JournalName, "soak.log"} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			v := victim(t, "root-only secret, no newline")
			require.NoError(t, os.Symlink(v, filepath.Join(dir, name)))
			j, err := OpenJournal(dir)
			if err == nil {
				j.Close()
			}
			if name != "soak.log" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), "symbolic link")
			}
			unchanged(t, v, "root-only secret, no newline")
		})
	}
}

// A new soak directory is created private; an existing one must be ours
// and not writable by others.
func TestOpenJournalDirPermissions(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new")
	j, err := OpenJournal(dir)
	require.NoError(t, err)
	j.Close()
	st, err := os.Stat(dir)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o700), st.Mode().Perm(), "a new soak directory is 0700")

	open := filepath.Join(t.TempDir(), "open")
	require.NoError(t, os.Mkdir(open, 0o755))
	require.NoError(t, os.Chmod(open, 0o777))
	j, err = OpenJournal(open)
	if err == nil {
		j.Close()
	}
	require.Error(t, err)
	assert.Contains(t, err.Error(), "writable")
}

func TestOpenJournalRefusesAnotherUsersDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give a directory to another user")
	}
	dir := filepath.Join(t.TempDir(), "replay-r1")
	require.NoError(t, os.Mkdir(dir, 0o700))
	require.NoError(t, os.Chown(dir, 65534, 65534))
	j, err := OpenJournal(dir)
	if err == nil {
		j.Close()
	}
	require.Error(t, err)
	assert.Contains(t, err.Error(), "owned by uid 65534")
}

// A crash.json (or a crash directory) planted as a symlink to a file
// outside the soak is not read: its content never reaches the report.
func TestCrashesDoNotFollowSymlinks(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenStore(dir)
	require.NoError(t, err)
	_, err = s.Record(Occurrence{Title: "warning: real", Kind: "kernel", At: time.Now()})
	require.NoError(t, err)
	secret, _ := json.Marshal(Crash{Title: "SECRET FROM OUTSIDE", Count: 1})
	v := victim(t, string(secret))
	d := filepath.Join(dir, "crashes", "0123456789abcdef")
	require.NoError(t, os.Mkdir(d, 0o755))
	require.NoError(t, os.Symlink(v, filepath.Join(d, "crash.json")))
	outside := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(outside, "crash.json"), secret, 0o600))
	require.NoError(t, os.Symlink(outside, filepath.Join(dir, "crashes", "fedcba9876543210")))

	cs, _ := Crashes(dir)
	for _, c := range cs {
		assert.NotContains(t, c.Title, "SECRET", "a crash was read through a symlink")
	}
	md, _, err := WriteReport(dir)
	if err == nil {
		b, _ := os.ReadFile(md)
		assert.NotContains(t, string(b), "SECRET")
	}
}

// The journal is read as a regular file only: a FIFO (or /dev/zero) in
// its place is refused instead of read forever.
func TestReplayRefusesNonRegularJournal(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, JournalName)
	require.NoError(t, syscall.Mkfifo(p, 0o600))
	go func() {
		// A writer, so that a reader that opens it is not stuck forever.
		f, err := os.OpenFile(p, os.O_WRONLY, 0)
		if err == nil {
			fmt.Fprintln(f, `{"type":"end","session":0}`)
			f.Close()
		}
	}()
	_, err := Replay(dir)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "not a regular file")
}

// A journal that is a symlink (to /dev/zero, to another user's file) is
// refused.
func TestReplayRefusesSymlinkedJournal(t *testing.T) {
	dir := t.TempDir()
	v := victim(t, `{"type":"start","session":0,"start":{"options":{"hosts":["qemu+tcp://evil/system"]}}}`+"\n")
	require.NoError(t, os.Symlink(v, filepath.Join(dir, JournalName)))
	_, err := Replay(dir)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "symbolic link")
}

// --resume does not take the libvirt hosts to connect to from the
// journal alone: they must be given again (and match).
func TestResumeRequiresHostsAgain(t *testing.T) {
	old := []Record{{Type: "start", At: time.Now(), Start: &Start{Options: Options{Seed: 1, Hosts: []string{"qemu+tcp://evil/system"}, VMsPerHost: 1}}}}
	s := &Soak{Dir: t.TempDir(), done: map[int]bool{}, inflight: map[int]bool{}}
	err := s.restore(old)
	require.Error(t, err, "resumed onto hosts only the journal named")
	assert.Contains(t, err.Error(), "qemu+tcp://evil/system")
	assert.Contains(t, err.Error(), "--hosts")

	s = &Soak{Dir: t.TempDir(), O: Options{Hosts: []string{"qemu+tcp://other/system"}}, done: map[int]bool{}, inflight: map[int]bool{}}
	require.Error(t, s.restore(old), "hosts differ from the journal's")

	s = &Soak{Dir: t.TempDir(), O: Options{Hosts: []string{"qemu+tcp://evil/system"}}, done: map[int]bool{}, inflight: map[int]bool{}}
	require.NoError(t, s.restore(old), "the same hosts given again")
	assert.Equal(t, []string{"qemu+tcp://evil/system"}, s.O.Hosts)

	s = &Soak{Dir: t.TempDir(), O: Options{Hosts: []string{"qemu:///system"}}, done: map[int]bool{}, inflight: map[int]bool{}}
	require.Error(t, s.restore([]Record{{Type: "start", At: time.Now(), Start: &Start{Options: Options{Seed: 1}}}}),
		"hosts given for a soak that ran locally")
}

// The replay command suggests a directory inside the soak's own, never a
// shared one such as /tmp.
func TestReproReplayDirUnderSoak(t *testing.T) {
	s := &Soak{Dir: "/var/soaks/night one", O: Options{Seed: 5}}
	r := s.repro(2, Step{Kind: "selftest"})
	assert.NotContains(t, r, "/tmp/")
	assert.Contains(t, r, "--out '/var/soaks/night one/replay-r2'")
}

// Names from the guest's catalogue reach the printed commands quoted.
func TestReproQuotesGuestNames(t *testing.T) {
	s := &Soak{Dir: "/s", O: Options{Seed: 5}}
	r := s.repro(1, Step{Kind: "scenario", Scenario: "ksm; touch /tmp/pwned", Tracker: "ldt", Seed: 3})
	assert.Contains(t, r, "--scenario 'ksm; touch /tmp/pwned'")
	r = s.repro(1, Step{Kind: "stress", Tracker: "ldt$(id)", Seed: 3, MTHP: "a b", Agitators: []string{"x;y"}})
	assert.Contains(t, r, "--tracker 'ldt$(id)'")
	assert.Contains(t, r, "--mthp 'a b'")
	assert.Contains(t, r, "--agitators 'x;y'")
}

// Crash titles are bounded: past MaxTitles distinct titles, new ones are
// counted under one "other" entry (disk and the report stay bounded).
func TestStoreBoundsTitles(t *testing.T) {
	defer func(m int) { maxTitles = m }(maxTitles)
	maxTitles = 20
	dir := t.TempDir()
	s, err := OpenStore(dir)
	require.NoError(t, err)
	n := maxTitles + 25
	for i := 0; i < n; i++ {
		_, err := s.Record(Occurrence{Title: fmt.Sprintf("warning: WARNING %d", i), Kind: "kernel", At: time.Now(), Span: "s", Log: []byte("l")})
		require.NoError(t, err)
	}
	ents, err := os.ReadDir(filepath.Join(dir, "crashes"))
	require.NoError(t, err)
	assert.LessOrEqual(t, len(ents), maxTitles+1, "crash directories")
	cs, err := Crashes(dir)
	require.NoError(t, err)
	total := 0
	other := false
	for _, c := range cs {
		total += c.Count
		if strings.HasPrefix(c.Title, "other:") {
			other = true
			assert.Equal(t, 25, c.Count)
		}
	}
	assert.Equal(t, n, total, "every occurrence is counted")
	assert.True(t, other, "the overflow is counted under other")
}

// Guest text in report.md is escaped: no raw HTML, no code-span breakout,
// no row injected through a newline.
func TestMarkdownEscapesGuestText(t *testing.T) {
	c := Crash{Title: "warning: <img src=x onerror=alert(1)> `code` *b* [l](http://x)\n| injected | row |", Kind: "kernel", Count: 1,
		Repro: "labctl check --scenario `touch /tmp/pwned` --tracker ldt", Dir: "/s/crashes/00"}
	st := Step{Kind: "scenario", Scenario: "<script>alert(1)</script>", Tracker: "ldt"}
	s := Summary{Table: map[string]map[string]*Cellstat{st.Name(): {"ldt": {Verdicts: map[string]int{"<b>PASS</b>": 1}}}},
		Failed:  []CellRecord{{Round: 1, Step: st, Verdict: "FAIL<i>", Reason: "<iframe>", Repro: "x ` y"}},
		LabFail: []LabFailure{{Round: 1, Phase: "boot", Error: "<script>"}}}
	r := buildReport("/s", s, []Crash{c})
	md := r.markdown(nil)
	for _, raw := range []string{"<img", "<script", "<iframe", "<b>", "<i>", "\n| injected"} {
		assert.NotContains(t, md, raw)
	}
	assert.Contains(t, md, "`` labctl check --scenario `touch /tmp/pwned` --tracker ldt ``", "a code span whose fence is longer than any backtick run inside")
	assert.Contains(t, md, "`` x ` y ``")
	assert.NotContains(t, md, "[l](http://x)", "no link from guest text")
}

// The breakdown tables carry names the guest chose (agitators, their
// effects, fuzz operations, vmstat counters): escaped like the rest, in
// both renderings.
func TestBreakdownTablesEscapeGuestText(t *testing.T) {
	evil := "<script>x</script>|\n| injected | row |"
	recs := []Record{
		{Type: "start", Start: &Start{Options: Options{Seed: 1}, Env: &Env{Commit: "abc`def", QEMU: "<b>qemu</b>"}}},
		{Type: "cell", Cell: &CellRecord{Round: 1, Step: Step{Kind: "stress", Tracker: "ldt"}, Verdict: "PASS",
			Detail: &Detail{Agitators: map[string]int{evil: 1}, Effects: map[string]map[string]int{evil: {evil: 2}}}}},
		{Type: "cell", Cell: &CellRecord{Round: 1, Step: Step{Kind: "fuzz"}, Verdict: "PASS",
			Detail: &Detail{FuzzTrackers: map[string]*FuzzTracker{evil: {Sequences: 1}}, OpsDone: map[string]int{evil: 3}}}},
		{Type: "round", Round: &RoundRecord{Round: 1, Cells: 2, VMStat: VMStat{evil: 5}, VMStatCells: 2}},
	}
	r := buildReport("/s", summarize(recs, nil), nil)
	md := r.markdown(nil)
	for _, raw := range []string{"<script", "<b>", "\n| injected"} {
		assert.NotContains(t, md, raw)
	}
	h, err := r.html(nil)
	require.NoError(t, err)
	for _, raw := range []string{"<script", "<b>qemu"} {
		assert.NotContains(t, string(h), raw)
	}
}
