package tests

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ldtlab/orchestrator/soak"
)

const (
	injWarnTitle  = "warning: WARNING in labtest_warn"
	injPanicTitle = "panic: kernel panic: labtest: deliberate panic via debugfs trigger"
)

// TestSoakShort is a short `labctl soak` (light rounds, 2 guests) in which
// the labtest module makes the real kernel WARN twice and panic once
// mid-run: both titles are filed once each under DIR/crashes and
// deduplicated on repeat, rounds go on after each; the orchestrator is
// killed with SIGKILL, its QEMUs die with it, `--resume` finishes with
// every finished round kept; status and the report work; no QEMU of the
// soak is left.
func TestSoakShort(t *testing.T) {
	state, err := os.MkdirTemp("", "ldtlab-st-") // short: unix socket paths
	require.NoError(t, err)
	defer os.RemoveAll(state)
	dir := filepath.Join(state, "soak")
	c := cli{t: t, state: state}
	prefix := "ldtlab-soak-" + soak.TitleHash(dir)[:8] + "-"
	defer func() {
		for _, p := range soakQEMUs(prefix) {
			syscall.Kill(p, syscall.SIGKILL)
		}
	}()

	// 1. Start, and kill -9 once the injected rounds are done.
	var out bytes.Buffer
	cmd := exec.Command(labctl, "soak", "--light", "--vms", "2", "--for", "300s", "--seed", "7",
		"--inject", "warn@1,panic@2,warn@3", "--out", dir, "--no-build")
	cmd.Dir = repo
	cmd.Env = append(os.Environ(), "LDTLAB_STATE="+state, "LDTLAB_REPO="+repo)
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var before map[int]bool
	lockChecked := false
	// Generous for a loaded machine (boots under TCG take 10-50 s here).
	deadline := time.Now().Add(240 * time.Second)
	for {
		select {
		case err := <-exited:
			t.Fatalf("the soak ended before it was killed (%v):\n%s", err, out.String())
		case <-time.After(2 * time.Second):
		}
		before = roundsDone(t, dir)
		if !lockChecked && len(before) > 0 {
			// A second soak in the same directory is refused.
			_, se, code := c.run("soak", "--resume", dir)
			assert.NotEqual(t, 0, code)
			assert.Contains(t, se, "another soak is running")
			lockChecked = true
		}
		if (before[1] && before[2] && before[3] && len(before) >= 4) || time.Now().After(deadline) {
			break
		}
	}
	require.True(t, before[1] && before[2] && before[3], "the injected rounds did not finish in time:\n%s", out.String())
	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	<-exited
	// Its QEMUs die with it (parent-death signal).
	gone := false
	for i := 0; i < 100 && !gone; i++ {
		gone = len(soakQEMUs(prefix)) == 0
		time.Sleep(100 * time.Millisecond)
	}
	require.True(t, gone, "QEMU left after the orchestrator was killed: %v", soakQEMUs(prefix))
	t.Logf("killed after %d finished rounds", len(before))

	// A kill can tear the last line; resume must ignore such a tail.
	f, err := os.OpenFile(filepath.Join(dir, soak.JournalName), os.O_APPEND|os.O_WRONLY, 0)
	require.NoError(t, err)
	f.WriteString(`{"type":"cell","at":"2026-`)
	f.Close()

	so := c.ok("soak", "status", dir)
	assert.Contains(t, so, "stopped without an end record")

	// 2. Resume: finishes the planned length with every round kept. --for
	// on resume sets the soak's new total length: about a minute more.
	recs, err := soak.Replay(dir)
	require.NoError(t, err)
	length := soak.Summarize(recs).Elapsed + 70*time.Second
	so = c.ok("soak", "--resume", dir, "--for", length.Round(time.Second).String())
	t.Logf("resume:\n%s", so)
	after := roundsDone(t, dir)
	for r := range before {
		assert.True(t, after[r], "round %d finished before the kill is lost after --resume", r)
	}
	assert.Greater(t, len(after), len(before), "the resumed soak ran no round")
	recs, err = soak.Replay(dir)
	require.NoError(t, err)
	sum := soak.Summarize(recs)
	assert.Equal(t, 2, sum.Sessions)
	assert.Equal(t, "deadline", sum.Ended)
	assert.Greater(t, sum.Pages, int64(0), "no page verified")

	// 3. The injected reports: filed under their titles, deduplicated.
	crashes, err := soak.Crashes(dir)
	require.NoError(t, err)
	byTitle := map[string]soak.Crash{}
	for _, cr := range crashes {
		byTitle[cr.Title] = cr
		t.Logf("crash %d× %s (%s)", cr.Count, cr.Title, cr.Kind)
	}
	warn, ok := byTitle[injWarnTitle]
	require.True(t, ok, "the injected WARNING is not filed")
	assert.GreaterOrEqual(t, warn.Count, 2, "warn@1 and warn@3 must land in one crash directory")
	pan, ok := byTitle[injPanicTitle]
	require.True(t, ok, "the injected panic is not filed")
	assert.GreaterOrEqual(t, pan.Count, 1)
	for _, cr := range []soak.Crash{warn, pan} {
		assert.Equal(t, "kernel", cr.Kind)
		assert.NotEmpty(t, cr.Repro)
		assert.NotEmpty(t, cr.KernelKey)
		assert.FileExists(t, filepath.Join(cr.Dir, "title"))
		rep, err := os.ReadFile(filepath.Join(cr.Dir, "1", "report.txt"))
		require.NoError(t, err)
		assert.Contains(t, string(rep), "labtest")
		log, err := os.ReadFile(filepath.Join(cr.Dir, "1", "console.log"))
		require.NoError(t, err)
		assert.Contains(t, string(log), "labtest")
	}
	// Rounds went on after the panic.
	later := 0
	for _, r := range recs {
		if r.Type == "round" && r.Round.Started.After(pan.FirstSeen) {
			later++
		}
	}
	assert.Greater(t, later, 0, "no round started after the panic")

	// 4. Status and report.
	so = c.ok("soak", "status", dir)
	assert.Contains(t, so, "finished (deadline)")
	assert.Contains(t, so, injWarnTitle)
	c.ok("soak", "report", dir)
	md, err := os.ReadFile(filepath.Join(dir, "report.md"))
	require.NoError(t, err)
	assert.Contains(t, string(md), injPanicTitle)
	html, err := os.ReadFile(filepath.Join(dir, "report.html"))
	require.NoError(t, err)
	assert.Contains(t, string(html), "data:image/png;base64,")
	assert.Contains(t, string(html), "labtest_warn")

	assert.Empty(t, soakQEMUs(prefix), "QEMU of the soak still running")

	// 5. SIGINT ends a session cleanly: rounds kept, an end record, no QEMU.
	n0 := len(roundsDone(t, dir))
	out.Reset()
	cmd = exec.Command(labctl, "soak", "--resume", dir, "--for", "30m")
	cmd.Dir = repo
	cmd.Env = append(os.Environ(), "LDTLAB_STATE="+state, "LDTLAB_REPO="+repo)
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Start())
	exited = make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	for end := time.Now().Add(150 * time.Second); len(roundsDone(t, dir)) == n0 && time.Now().Before(end); {
		time.Sleep(2 * time.Second)
	}
	require.NoError(t, cmd.Process.Signal(os.Interrupt))
	select {
	case err := <-exited:
		var ee *exec.ExitError
		require.ErrorAs(t, err, &ee, out.String())
		assert.Equal(t, 130, ee.ExitCode(), out.String())
	case <-time.After(90 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("the soak did not end within 90 s of SIGINT:\n%s", out.String())
	}
	assert.Empty(t, soakQEMUs(prefix), "QEMU left after SIGINT")
	recs, err = soak.Replay(dir)
	require.NoError(t, err)
	sum = soak.Summarize(recs)
	assert.Equal(t, 3, sum.Sessions)
	assert.Equal(t, "interrupted", sum.Ended)
	assert.GreaterOrEqual(t, sum.Rounds, n0)
}

// roundsDone are the round numbers the journal says finished.
func roundsDone(t *testing.T, dir string) map[int]bool {
	done := map[int]bool{}
	recs, err := soak.Replay(dir)
	if err != nil {
		return done
	}
	for _, r := range recs {
		if r.Type == "round" && r.Round != nil {
			done[r.Round.Round] = true
		}
	}
	return done
}

// soakQEMUs are the pids of QEMUs whose arguments name the soak's guests.
func soakQEMUs(prefix string) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if !strings.Contains(filepath.Base(args[0]), "qemu-system") || !strings.Contains(string(b), prefix) {
			continue
		}
		var pid int
		if _, err := fmt.Sscan(e.Name(), &pid); err == nil {
			out = append(out, pid)
		}
	}
	return out
}

// Bad input: a clear error and status, nothing created.
func TestSoakBadInput(t *testing.T) {
	state := t.TempDir()
	c := cli{t: t, state: state}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"soak", "--inject", "warn", "--out", filepath.Join(state, "x")}, 2, "WORD@ROUND"},
		{[]string{"soak", "frob", state}, 2, "labctl soak report DIR"},
		{[]string{"soak", "report", filepath.Join(state, "none")}, 1, "no soak journal"},
		{[]string{"soak", "status", filepath.Join(state, "none")}, 1, "no soak journal"},
		{[]string{"soak", "--resume", filepath.Join(state, "none")}, 1, "no soak journal"},
	} {
		_, se, code := c.run(tc.args...)
		assert.Equal(t, tc.code, code, "%v: %s", tc.args, se)
		assert.Contains(t, se, tc.want, "%v", tc.args)
	}
	_, err := os.Stat(filepath.Join(state, "x"))
	assert.True(t, os.IsNotExist(err), "a rejected soak created its directory")
}
