package tests

// The developer VM as a kernel engineer uses it (issue 24): host
// directories shared into the guest, labctl cp with symlinks and clear
// errors, and labctl shell with and without a terminal, driven through
// tmux as a person at a terminal would.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ldtlab/orchestrator/lab"
)

// devVM boots a guest with `labctl up` (extra flags first) in a private
// state directory; down when the test ends.
func devVM(t *testing.T, suffix string, flags ...string) (cli, string, string) {
	t.Helper()
	state, err := os.MkdirTemp("", "ldtlab-st-") // short: unix socket paths
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(state) })
	c := cli{t: t, state: state}
	name := vmPrefix + suffix
	t.Cleanup(func() {
		if t.Failed() {
			so, _, _ := c.run("logs", name)
			t.Logf("console of %s:\n%s", name, tail(so, 60))
		}
		c.run("down", name)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		assert.True(t, waitGone(ctx, name), "QEMU of %s still running after down", name)
	})
	args := append(append([]string{"up", "--no-build"}, flags...), name)
	so, se, code := c.run(args...)
	require.Equal(t, 0, code, "labctl %v:\nstdout: %s\nstderr: %s", args, so, se)
	require.Contains(t, so, name+" is up")
	return c, name, so
}

func tail(s string, n int) string {
	l := strings.Split(s, "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// TestDevVMCopy: relative symlinks arrive as they are, `cp f x:` lands in
// the guest's home, and a missing guest path is named (issue 24 item 5).
func TestDevVMCopy(t *testing.T) {
	c, name, _ := devVM(t, "cp")
	src := filepath.Join(t.TempDir(), "tree")
	require.NoError(t, os.MkdirAll(filepath.Join(src, "sub"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(src, "a"), []byte("content-a"), 0o644))
	require.NoError(t, os.Symlink("a", filepath.Join(src, "link")))
	require.NoError(t, os.Symlink("../a", filepath.Join(src, "sub", "up")))

	// Relative to the home directory, and absolute.
	c.ok("cp", src, name+":")
	c.ok("cp", src, name+":/tmp/")
	for _, dir := range []string{"/root/tree", "/tmp/tree"} {
		out := c.ok("run", name, "--", fmt.Sprintf("cd %s && readlink link && readlink sub/up && cat sub/up", dir))
		assert.Equal(t, "a\n../a\ncontent-a", out, dir)
	}

	// `cp f x:` copies into the home directory, as scp does.
	f := filepath.Join(src, "a")
	so, se, code := c.run("cp", f, name+":")
	require.Equal(t, 0, code, "cp f x: %s%s", so, se)
	assert.Equal(t, "content-a", c.ok("run", name, "--", "cat /root/a"))

	// A missing guest directory or file is named.
	so, se, code = c.run("cp", f, name+":/no/such/dir/")
	assert.Equal(t, 1, code, "%s%s", so, se)
	assert.Contains(t, se, "guest directory /no/such/dir does not exist")
	so, se, code = c.run("cp", name+":/no/such", t.TempDir())
	assert.Equal(t, 1, code, "%s%s", so, se)
	assert.Contains(t, se, "guest /no/such does not exist")
	assert.NotContains(t, se, "file does not exist")
	_, se, code = c.run("cp", name+":", t.TempDir())
	assert.Equal(t, 2, code)
	assert.Contains(t, se, "name the guest file or directory to copy")

	// 50 MB both ways, timed (against scp through ssh-config when there).
	big := filepath.Join(t.TempDir(), "big")
	b := make([]byte, 50<<20)
	for i := range b {
		b[i] = byte(i*7 + i>>11)
	}
	require.NoError(t, os.WriteFile(big, b, 0o644))
	// Wall time on a loaded machine says little; the guest's CPU time
	// (QEMU's) is what the copy costs it.
	start, cpu := time.Now(), qemuCPU(t, c, name)
	so, se, code = c.run("cp", big, name+":/tmp/big")
	require.Equal(t, 0, code, "%s%s", so, se)
	up, upCPU := time.Since(start), qemuCPU(t, c, name)-cpu
	back := filepath.Join(t.TempDir(), "back")
	start, cpu = time.Now(), qemuCPU(t, c, name)
	c.ok("cp", name+":/tmp/big", back)
	down, downCPU := time.Since(start), qemuCPU(t, c, name)-cpu
	got, err := os.ReadFile(back)
	require.NoError(t, err)
	assert.True(t, string(got) == string(b), "50 MB came back changed")
	t.Logf("labctl cp 50 MB: up %s (guest CPU %s), down %s (guest CPU %s); progress lines: %q",
		up.Round(10*time.Millisecond), upCPU, down.Round(10*time.Millisecond), downCPU, se)
	if _, err := exec.LookPath("scp"); err == nil {
		cfg := filepath.Join(t.TempDir(), "ssh_config")
		require.NoError(t, os.WriteFile(cfg, []byte(c.ok("ssh-config", name)), 0o600))
		scp := func(args ...string) string {
			start, cpu := time.Now(), qemuCPU(t, c, name)
			cmd := exec.Command("scp", append([]string{"-q", "-F", cfg, "-o", "BatchMode=yes"}, args...)...)
			cmd.Env = append(os.Environ(), "LDTLAB_REPO="+repo)
			out, err := cmd.CombinedOutput()
			require.NoError(t, err, "scp: %s", out)
			return fmt.Sprintf("%s (guest CPU %s)", time.Since(start).Round(10*time.Millisecond), qemuCPU(t, c, name)-cpu)
		}
		t.Logf("scp 50 MB: up %s, down %s", scp(big, "ldtlab-"+name+":/tmp/big2"),
			scp("ldtlab-"+name+":/tmp/big2", filepath.Join(t.TempDir(), "b2")))
	}
}

// qemuCPU is the CPU time the VM's QEMU has used so far.
func qemuCPU(t *testing.T, c cli, name string) time.Duration {
	t.Helper()
	st, err := lab.ReadState(filepath.Join(c.state, "vms", name))
	require.NoError(t, err)
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", st.QEMUPID))
	require.NoError(t, err)
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ut, _ := strconv.Atoi(f[11]) // utime, stime: fields 14 and 15
	stime, _ := strconv.Atoi(f[12])
	return time.Duration(ut+stime) * 10 * time.Millisecond // USER_HZ 100
}

// tmuxPane is a terminal the test types into: a private tmux server with
// one 120x40 window running sh.
type tmuxPane struct {
	t    *testing.T
	sock string
}

func newTmux(t *testing.T, env ...string) *tmuxPane {
	t.Helper()
	if _, err := exec.LookPath("tmux"); err != nil {
		t.Skip("tmux not installed (labctl setup installs it)")
	}
	dir, err := os.MkdirTemp("", "tmux-")
	require.NoError(t, err)
	p := &tmuxPane{t: t, sock: filepath.Join(dir, "s")}
	t.Cleanup(func() {
		exec.Command("tmux", "-S", p.sock, "kill-server").Run()
		os.RemoveAll(dir)
	})
	args := []string{"-S", p.sock, "-f", "/dev/null", "new-session", "-d", "-x", "120", "-y", "40"}
	for _, e := range env {
		args = append(args, "-e", e)
	}
	args = append(args, "env", "PS1=host$ ", "sh")
	out, err := exec.Command("tmux", args...).CombinedOutput()
	require.NoError(t, err, "tmux: %s", out)
	p.waitFor("host$ ", 10*time.Second)
	return p
}

// typeLine types line and Enter.
func (p *tmuxPane) typeLine(line string) {
	p.t.Helper()
	out, err := exec.Command("tmux", "-S", p.sock, "send-keys", "-l", line).CombinedOutput()
	require.NoError(p.t, err, "%s", out)
	out, err = exec.Command("tmux", "-S", p.sock, "send-keys", "Enter").CombinedOutput()
	require.NoError(p.t, err, "%s", out)
}

// screen is the pane's text, scrollback included.
func (p *tmuxPane) screen() string {
	out, err := exec.Command("tmux", "-S", p.sock, "capture-pane", "-p", "-J", "-S", "-1000").Output()
	require.NoError(p.t, err)
	return string(out)
}

// waitStatus waits for the line `echo "rc=$?"` prints (a line of its
// own, unlike the command typed) and returns the screen and the status.
func (p *tmuxPane) waitStatus(d time.Duration) (string, int) {
	p.t.Helper()
	re := regexp.MustCompile(`(?m)^rc=(\d+)\s*$`)
	deadline := time.Now().Add(d)
	for {
		scr := p.screen()
		if m := re.FindStringSubmatch(scr); m != nil {
			code, _ := strconv.Atoi(m[1])
			return scr, code
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("the command never ended; the terminal shows:\n%s", scr)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitFor waits until the pane shows s; the screen so far.
func (p *tmuxPane) waitFor(s string, d time.Duration) string {
	p.t.Helper()
	deadline := time.Now().Add(d)
	for {
		scr := p.screen()
		if strings.Contains(scr, s) {
			return scr
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("the terminal never showed %q; it shows:\n%s", s, scr)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// clear empties the pane and its scrollback.
func (p *tmuxPane) clear() {
	p.typeLine("clear")
	exec.Command("tmux", "-S", p.sock, "clear-history").Run()
	time.Sleep(200 * time.Millisecond)
}

// TestDevVMShellTmux: `labctl shell` at a real terminal gets a pty of the
// terminal's size and the shell's exit status; without a terminal on
// stdin it allocates none, runs what stdin says and ends at its EOF
// (issue 24 item 8: `shell x </dev/null` hung and printed ^[[6n).
func TestDevVMShellTmux(t *testing.T) {
	c, name, _ := devVM(t, "sh")
	p := newTmux(t, "LDTLAB_STATE="+c.state, "LDTLAB_REPO="+repo)

	p.typeLine(labctl + " shell " + name + `; echo "rc=$?"`)
	p.waitFor(name+":~# ", 60*time.Second) // the guest's prompt
	p.typeLine("echo hi-$((6*7)); tty; stty size")
	scr := p.waitFor("hi-42", 30*time.Second)
	scr = p.waitFor("40 120", 10*time.Second)
	assert.Regexp(t, `/dev/pts/\d+`, scr)
	p.typeLine("exit 3")
	_, code := p.waitStatus(30 * time.Second)
	assert.Equal(t, 3, code, "the shell's exit status")

	// No terminal on stdin: no pty, no terminal query, and an end.
	p.clear()
	p.typeLine(labctl + " shell " + name + ` </dev/null; echo "rc=$?"`)
	scr, code = p.waitStatus(60 * time.Second)
	assert.Equal(t, 0, code)
	assert.NotContains(t, scr, "[6n")
	p.clear()
	p.typeLine(`printf 'echo piped-$((1+1)); tty; echo o""ops >&2; exit 4\n' | ` + labctl + " shell " + name + ` 2>/dev/null; echo "rc=$?"`)
	scr, code = p.waitStatus(60 * time.Second)
	assert.Contains(t, scr, "piped-2")
	assert.Contains(t, scr, "not a tty")
	assert.NotContains(t, scr, "oops", "stderr is apart without a pty")
	assert.Equal(t, 4, code)

	// run from a terminal: the command reads an empty stdin, never the
	// keyboard (README).
	p.clear()
	p.typeLine(labctl + " run " + name + ` -- 'cat; echo stdin-done'; echo "rc=$?"`)
	scr, code = p.waitStatus(60 * time.Second)
	assert.Contains(t, scr, "stdin-done")
	assert.Equal(t, 0, code)
}

// TestDevVMShareRefused: shares that cannot work are usage errors before
// anything boots.
func TestDevVMShareRefused(t *testing.T) {
	c := cli{t: t, state: t.TempDir()}
	dir := t.TempDir()
	for _, args := range [][]string{
		{"up", "--share", filepath.Join(dir, "nope"), "x"},
		{"up", "--share", dir + ":/usr", "x"},
		{"up", "--share", dir + ":/a", "--share", dir + ":/a/b", "x"},
		{"up", "--backend", "libvirt", "--connect", "qemu+ssh://u@elsewhere/system", "--share", dir, "x"},
	} {
		so, se, code := c.run(args...)
		assert.Equal(t, 2, code, "%v: %s%s", args, so, se)
	}
}
