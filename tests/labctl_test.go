package tests

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ldtlab/images/cache"
	"ldtlab/images/kernel"
	"ldtlab/internal/fileutil"
	"ldtlab/orchestrator/lab"
)

// cli runs labctl with a private state directory.
type cli struct {
	t     *testing.T
	state string
}

func (c cli) run(args ...string) (stdout, stderr string, code int) {
	c.t.Helper()
	return c.runIn(repo, args...)
}

// runIn runs labctl in the working directory dir.
func (c cli) runIn(dir string, args ...string) (stdout, stderr string, code int) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, labctl, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "LDTLAB_STATE="+c.state, "LDTLAB_REPO="+repo)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	code = 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		c.t.Fatalf("labctl %v: %v", args, err)
	}
	return so.String(), se.String(), code
}

func (c cli) ok(args ...string) string {
	c.t.Helper()
	so, se, code := c.run(args...)
	require.Equal(c.t, 0, code, "labctl %v failed:\nstdout: %s\nstderr: %s", args, so, se)
	return so
}

func TestLabctlLifecycle(t *testing.T) {
	state, err := os.MkdirTemp("", "ldtlab-st-") // short: unix socket paths
	require.NoError(t, err)
	defer os.RemoveAll(state)
	c := cli{t: t, state: state}
	name := vmPrefix + "cli"
	t.Cleanup(func() {
		c.run("down", name)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		assert.True(t, waitGone(ctx, name), "QEMU of %s still running after down", name)
	})

	out := c.ok("up", "--no-build", name)
	assert.Contains(t, out, name+" is up")

	ls := c.ok("ls")
	assert.Regexp(t, name+`\s+running`, ls)

	// The lab's own kernel answers.
	uname := strings.TrimSpace(c.ok("run", name, "--", "uname", "-r"))
	assert.Contains(t, uname, "6.12")

	// The command may follow NAME without "--" (its own flags included).
	assert.Equal(t, uname, strings.TrimSpace(c.ok("run", name, "uname", "-r")))

	// A kernel report the command caused is printed on stderr with its
	// title; the command's status stays, unless --fail-on-report.
	warn := "echo warn > /sys/kernel/debug/labtest/trigger"
	so, se, code := c.run("run", name, "--", warn)
	assert.Equal(t, 0, code, "stderr: %s", se)
	assert.Contains(t, se, "the kernel reported during the command")
	assert.Contains(t, se, "WARNING in labtest_warn")
	assert.Contains(t, se, "deliberate WARN_ON via debugfs trigger")
	so, se, code = c.run("run", "--fail-on-report", name, "--", warn)
	assert.Equal(t, 1, code, "--fail-on-report: stdout %s stderr %s", so, se)
	assert.Contains(t, se, "--fail-on-report: 1 kernel report(s)")
	_, se, code = c.run("run", name, "--", "true")
	assert.Equal(t, 0, code)
	assert.NotContains(t, se, "kernel report", "an earlier command's report is not this one's")

	// Exit status and stderr propagate.
	so, se, code = c.run("run", name, "--", "echo hi; echo oops >&2; exit 9")
	assert.Equal(t, 9, code)
	assert.Equal(t, "hi\n", so)
	assert.Contains(t, se, "oops")

	// Copy both ways.
	local := filepath.Join(t.TempDir(), "payload")
	payload := bytes.Repeat([]byte("ldtlab\x00\xff"), 50000)
	require.NoError(t, os.WriteFile(local, payload, 0o640))
	c.ok("cp", local, name+":/tmp/payload")
	assert.Equal(t, "400000\n", c.ok("run", name, "--", "wc -c < /tmp/payload"))
	back := filepath.Join(t.TempDir(), "back")
	c.ok("cp", name+":/tmp/payload", back)
	got, err := os.ReadFile(back)
	require.NoError(t, err)
	assert.Equal(t, payload, got)

	// Both forms the README shows: a directory destination means "into
	// it", as cp and scp do, in both directions, with or without a slash.
	c.ok("cp", local, name+":/tmp/")
	assert.Equal(t, "400000\n", c.ok("run", name, "--", "wc -c < /tmp/payload"))
	require.Equal(t, "", c.ok("run", name, "--", "mkdir -p /tmp/in && rm /tmp/payload"))
	c.ok("cp", local, name+":/tmp/in")
	assert.Equal(t, "400000\n", c.ok("run", name, "--", "wc -c < /tmp/in/payload"))
	into := t.TempDir()
	so, se, code = c.runIn(into, "cp", name+":/tmp/in/payload", ".")
	require.Equal(t, 0, code, "cp x:/tmp/in/payload .: %s%s", so, se)
	got, err = os.ReadFile(filepath.Join(into, "payload"))
	require.NoError(t, err)
	assert.Equal(t, payload, got)
	into2 := t.TempDir()
	c.ok("cp", name+":/tmp/in/payload", into2+"/")
	got, err = os.ReadFile(filepath.Join(into2, "payload"))
	require.NoError(t, err)
	assert.Equal(t, payload, got)

	// The guest is not trusted: no setuid bit unless asked, no symlink
	// that leads out of the copy (README, "labctl cp").
	c.ok("run", name, "--", "mkdir -p /tmp/h/sub && printf x > /tmp/h/s && chmod 4755 /tmp/h/s && ln -s /etc/passwd /tmp/h/abs && ln -s ../s /tmp/h/sub/rel")
	hostile := t.TempDir()
	so, se, code = c.run("cp", name+":/tmp/h", hostile)
	require.Equal(t, 0, code, "cp x:/tmp/h: %s%s", so, se)
	assert.Contains(t, se, "labctl cp: warning: skipped guest symlink /tmp/h/abs -> /etc/passwd: absolute target")
	fi, err := os.Lstat(filepath.Join(hostile, "h", "s"))
	require.NoError(t, err)
	assert.Equal(t, fs.FileMode(0o755), fi.Mode())
	_, err = os.Lstat(filepath.Join(hostile, "h", "abs"))
	assert.ErrorIs(t, err, fs.ErrNotExist)
	rel, err := os.Readlink(filepath.Join(hostile, "h", "sub", "rel"))
	require.NoError(t, err)
	assert.Equal(t, "../s", rel)
	c.ok("cp", "--preserve-special-bits", name+":/tmp/h/s", filepath.Join(hostile, "suid"))
	fi, err = os.Lstat(filepath.Join(hostile, "suid"))
	require.NoError(t, err)
	assert.Equal(t, fs.ModeSetuid|0o755, fi.Mode())

	// A standard OpenSSH client gets in through `labctl proxy`.
	cfgText := c.ok("ssh-config", name)
	assert.Contains(t, cfgText, "ProxyCommand")
	if _, err := exec.LookPath("ssh"); err == nil {
		cfg := filepath.Join(t.TempDir(), "ssh_config")
		require.NoError(t, os.WriteFile(cfg, []byte(cfgText), 0o600))
		// From another shell: no LDTLAB_STATE; the config carries it.
		cmd := exec.Command("ssh", "-F", cfg, "-o", "BatchMode=yes", "ldtlab-"+name, "uname -r; exit 4")
		cmd.Env = append(os.Environ(), "LDTLAB_REPO="+repo)
		for i, e := range cmd.Env {
			if strings.HasPrefix(e, "LDTLAB_STATE=") {
				cmd.Env[i] = "LDTLAB_STATE_UNSET=1"
			}
		}
		out, err := cmd.Output()
		ee, _ := err.(*exec.ExitError)
		require.NotNil(t, ee, "ssh should exit 4: %v", err)
		assert.Equal(t, 4, ee.ExitCode(), "stderr: %s", ee.Stderr)
		assert.NotContains(t, string(ee.Stderr), "interrupted", "the proxy ends quietly when ssh hangs up")
		assert.Equal(t, uname, strings.TrimSpace(string(out)))

		// rsync and legacy scp run their own binary in the guest: both are
		// shipped into developer VMs.
		src := filepath.Join(t.TempDir(), "tree")
		require.NoError(t, os.MkdirAll(filepath.Join(src, "d"), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(src, "d", "f"), []byte("via rsync\n"), 0o644))
		require.NoError(t, os.Symlink("d/f", filepath.Join(src, "link")))
		ssh := "ssh -F " + cfg + " -o BatchMode=yes"
		for _, tc := range []struct {
			name string
			argv []string
			path string
		}{
			{"rsync", []string{"rsync", "-a", "-e", ssh, src + "/", "ldtlab-" + name + ":/tmp/rs/"}, "/tmp/rs/link"},
			{"scp -O", []string{"scp", "-O", "-r", "-F", cfg, "-o", "BatchMode=yes", src, "ldtlab-" + name + ":/tmp/scpO"}, "/tmp/scpO/d/f"},
		} {
			if _, err := exec.LookPath(tc.argv[0]); err != nil {
				t.Logf("%s not installed on the host; not exercised", tc.argv[0])
				continue
			}
			cmd := exec.Command(tc.argv[0], tc.argv[1:]...)
			cmd.Env = append(os.Environ(), "LDTLAB_REPO="+repo)
			out, err := cmd.CombinedOutput()
			require.NoError(t, err, "%s into the guest: %s", tc.name, out)
			assert.Equal(t, "via rsync", strings.TrimSpace(c.ok("run", name, "--", "cat", tc.path)), tc.name)
		}
		assert.Equal(t, "d/f", strings.TrimSpace(c.ok("run", name, "--", "readlink", "/tmp/rs/link")), "rsync -a keeps the relative link")
	} else {
		t.Log("ssh(1) not installed; OpenSSH interop not exercised")
	}

	// Logs show the console and the report section.
	logs := c.ok("logs", name)
	assert.Contains(t, logs, "Linux version")
	assert.Contains(t, logs, "kernel report(s)")

	// Per-VM keys are private.
	dir := filepath.Join(state, "vms", name, "keys")
	for _, f := range []string{"id_ed25519", "host_ed25519"} {
		st, err := os.Stat(filepath.Join(dir, f))
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o600), st.Mode().Perm(), f)
	}

	// Errors name the problem and the fix.
	_, se, code = c.run("run", "no-such-vm", "--", "true")
	assert.Equal(t, 2, code, "an unknown VM is a usage error")
	assert.Contains(t, se, "labctl up no-such-vm")

	// down tries every name: an unknown one does not leave the next running.
	so, se, code = c.run("down", "no-such-vm", name)
	assert.Equal(t, 2, code, "stdout %s stderr %s", so, se)
	assert.Contains(t, se, `no VM named "no-such-vm"`)
	assert.Contains(t, so, name+" is down")
	// The WARNINGs above: down keeps the console and the reports.
	kept := filepath.Join(state, "crashed", name)
	assert.Contains(t, se, "kept the console and 2 kernel report(s) of "+name+" in "+kept)
	rep, err := os.ReadFile(filepath.Join(kept, "reports.txt"))
	require.NoError(t, err)
	assert.Contains(t, string(rep), "WARNING in labtest_warn")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	assert.True(t, waitGone(ctx, name))
	_, err = os.Stat(filepath.Join(state, "vms", name))
	assert.True(t, os.IsNotExist(err), "down removes the VM directory")
}

// TestLabctlUsageErrors: a command line that makes no sense exits 2
// (README), with no guest involved.
func TestLabctlUsageErrors(t *testing.T) {
	c := cli{t: t, state: t.TempDir()}
	for _, args := range [][]string{
		{"run", "x"}, {"run"}, {"up"}, {"up", "bad/name"}, {"up", "a", "b"},
		{"up", "--config", "bogus", "x"}, {"cp", "a", "b", "x:/tmp/"}, {"cp", "a"},
		{"logs"}, {"down"}, {"ssh-config"}, {"proxy"}, {"report"},
		{"down", "no-such-vm"}, {"logs", "bad/name"}, {"ssh-config", "no-such-vm"},
	} {
		so, se, code := c.run(args...)
		assert.Equal(t, 2, code, "labctl %v: stdout %s stderr %s", args, so, se)
	}
	_, se, _ := c.run("up", "--config", "bogus", "x")
	assert.Contains(t, se, `unknown kernel config "bogus"`)
}

func TestLabctlHelpOnEveryVerb(t *testing.T) {
	c := cli{t: t, state: t.TempDir()}
	for _, verb := range []string{"setup", "build", "up", "ls", "run", "shell", "cp", "logs", "ssh-config", "down", "proxy", "check", "selftests", "bench", "stress", "report", "soak", "bisect", "checkpatch", "series-check"} {
		_, se, code := c.run(verb, "--help")
		assert.Equal(t, 0, code, verb)
		assert.Contains(t, se, "Usage: labctl "+verb, verb)
		assert.NotContains(t, se, "-redis labctl", "a backquoted word in a flag's usage becomes its argument name")
	}
}

// vmProcs lists the supervisors and QEMUs that really run for a VM.
func vmProcs(state, name string) []lab.Proc {
	return lab.Processes(name, filepath.Join(state, "vms", name))
}

func waitNoProcs(t *testing.T, state, name string) {
	t.Helper()
	for i := 0; i < 200; i++ {
		if len(vmProcs(state, name)) == 0 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Errorf("processes of %s still running: %v", name, vmProcs(state, name))
}

func pidOf(procs []lab.Proc, role string) int {
	for _, p := range procs {
		if p.Role == role {
			return p.PID
		}
	}
	return 0
}

// The fault campaign of issue 14, on one VM name: bad sizes, two `up` at
// the same instant, ^C, a QEMU killed during `run`, a state file that
// lies, a supervisor killed; every time the message says what happened,
// the exit status is the README's, and `down` stops what really runs.
func TestLabctlFaults(t *testing.T) {
	state, err := os.MkdirTemp("", "ldtlab-st-")
	require.NoError(t, err)
	defer os.RemoveAll(state)
	c := cli{t: t, state: state}
	name := vmPrefix + "flt"
	t.Cleanup(func() {
		c.run("down", name)
		waitNoProcs(t, state, name)
	})

	// Sizes that make no sense are refused before anything starts (2).
	for _, bad := range [][]string{{"--cpus", "0"}, {"--mem", "100"}, {"--swap", "-5"}, {"--cpus", "-1"}, {"--backend", "xen"}} {
		_, se, code := c.run(append([]string{"up", "--no-build", name}, bad...)...)
		assert.Equal(t, 2, code, "%v: %s", bad, se)
		assert.Contains(t, se, bad[0]+" "+bad[1], bad)
		_, err := os.Stat(filepath.Join(state, "vms", name))
		assert.True(t, os.IsNotExist(err), "%v left a VM directory", bad)
	}

	// QEMU that cannot allocate the guest's memory is a lab failure (3).
	_, se, code := c.run("up", "--no-build", "--mem", "1048576", name)
	assert.Equal(t, 3, code, se)
	assert.Contains(t, se, "Cannot allocate memory")
	c.run("down", name)

	// Two `up` at the same instant: one boots it, the other is told.
	type res struct {
		so, se string
		code   int
	}
	results := make(chan res, 2)
	var wg sync.WaitGroup
	for i := 0; i < 2; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			so, se, code := c.run("up", "--no-build", name)
			results <- res{so, se, code}
		}()
	}
	wg.Wait()
	close(results)
	var ok, refused int
	for r := range results {
		if r.code == 0 {
			ok++
			assert.Contains(t, r.so, name+" is up")
		} else {
			refused++
			assert.Regexp(t, "already (booting|exists)", r.se)
		}
	}
	require.Equal(t, 1, ok, "exactly one `up` wins")
	require.Equal(t, 1, refused)
	procs := vmProcs(state, name)
	require.Len(t, procs, 2, "one supervisor and one QEMU: %v", procs)
	assert.Regexp(t, name+`\s+running`, c.ok("ls"))

	// ^C during `run` kills the remote command and exits 130.
	cmd := exec.Command(labctl, "run", name, "--", "sleep 120")
	cmd.Env = append(os.Environ(), "LDTLAB_STATE="+state, "LDTLAB_REPO="+repo)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	time.Sleep(3 * time.Second)
	cmd.Process.Signal(os.Interrupt)
	err = cmd.Wait()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, stderr.String())
	assert.Equal(t, 130, ee.ExitCode(), stderr.String())
	assert.Equal(t, "0\n", c.ok("run", name, "--", "ps | grep -c '[s]leep 120' || true"), "the remote sleep was killed")

	// QEMU killed during `run`: the guest died, and why (1); ls says
	// failed, not stopped; the next run says the same.
	cmd = exec.Command(labctl, "run", name, "--", "sleep 120")
	cmd.Env = append(os.Environ(), "LDTLAB_STATE="+state, "LDTLAB_REPO="+repo)
	stderr.Reset()
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	time.Sleep(3 * time.Second)
	qemu := pidOf(vmProcs(state, name), "qemu")
	require.NotZero(t, qemu)
	require.NoError(t, syscall.Kill(qemu, syscall.SIGKILL))
	err = cmd.Wait()
	require.ErrorAs(t, err, &ee, stderr.String())
	assert.Equal(t, 1, ee.ExitCode(), stderr.String())
	assert.Contains(t, stderr.String(), "the guest died: QEMU was killed (SIGKILL)")
	assert.NotContains(t, stderr.String(), "exited without exit status\n")
	ls := c.ok("ls")
	assert.Regexp(t, name+`\s+failed`, ls)
	_, se, code = c.run("run", name, "--", "true")
	assert.Equal(t, 1, code)
	assert.Contains(t, se, "status failed: the guest died: QEMU was killed")
	waitNoProcs(t, state, name)
	c.ok("down", name)

	// A state file that lies (what the losing `up` used to write): down
	// still stops the supervisor and QEMU that really run.
	c.ok("up", "--no-build", name)
	procs = vmProcs(state, name)
	require.Len(t, procs, 2)
	dead := exec.Command("true")
	require.NoError(t, dead.Run())
	st := fmt.Sprintf(`{"name":%q,"status":"failed","supervisor_pid":%d}`, name, dead.Process.Pid)
	require.NoError(t, os.WriteFile(filepath.Join(state, "vms", name, "state.json"), []byte(st), 0o600))
	assert.Contains(t, c.ok("down", name), name+" is down")
	waitNoProcs(t, state, name)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	assert.True(t, waitGone(ctx, name))

	// The supervisor killed: its QEMU goes with it, and run says so (3).
	c.ok("up", "--no-build", name)
	sup := pidOf(vmProcs(state, name), "supervisor")
	require.NotZero(t, sup)
	require.NoError(t, syscall.Kill(sup, syscall.SIGKILL))
	waitNoProcs(t, state, name)
	_, se, code = c.run("run", name, "--", "true")
	assert.Equal(t, 3, code, se)
	assert.Contains(t, se, fmt.Sprintf("supervisor (pid %d) is no longer running", sup))
	assert.NotContains(t, se, "status running")
	assert.Regexp(t, name+`\s+dead`, c.ok("ls"))
	c.ok("down", name)
}

// A damaged cache entry is never booted: labctl names the damaged file
// and the command that rebuilds it (3), where it used to boot a truncated
// bzImage and fail as "guest channel handshake: ... EOF" with an empty
// console. The shared cache is not touched: the entry is copied into a
// private cache and the copy is truncated.
func TestLabctlCorruptCacheEntry(t *testing.T) {
	kb, ok, err := kernel.Find(kernel.Options{Repo: repo, Config: "debug"})
	require.NoError(t, err)
	require.True(t, ok, "the suite needs the cached debug kernel")
	priv := t.TempDir()
	entry := filepath.Join(priv, "kernels", filepath.Base(kb.Dir))
	err = filepath.WalkDir(kb.Dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(kb.Dir, p)
		dst := filepath.Join(entry, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(dst, 0o755)
		case rel == ".manifest.json" || !d.Type().IsRegular():
			return nil
		case rel == "vmlinux":
			// Hundreds of MB, only ever read: share it if we can.
			if os.Link(p, dst) == nil {
				return nil
			}
		}
		return fileutil.CopyFile(p, dst, 0o644)
	})
	require.NoError(t, err)
	t.Setenv("LDTLAB_CACHE", priv)
	_, ok = cache.Open("kernels").Lookup(filepath.Base(kb.Dir)) // records the copy's manifest
	require.True(t, ok)
	require.NoError(t, os.Truncate(filepath.Join(entry, "bzImage"), 4096))

	state := t.TempDir()
	c := cli{t: t, state: state}
	name := vmPrefix + "corrupt"
	t.Cleanup(func() { c.run("down", name) })
	start := time.Now()
	_, se, code := c.run("up", "--no-build", name)
	assert.Equal(t, 3, code, se)
	assert.Contains(t, se, "is corrupt: bzImage has 4096 bytes")
	assert.Contains(t, se, "labctl build --config debug")
	assert.NotContains(t, se, "handshake")
	assert.Less(t, time.Since(start), 30*time.Second, "refused at lookup, not after a boot attempt")
	assert.Empty(t, vmProcs(state, name))
}

// TestLabctlRunThrowaway: `labctl run -- CMD` without a VM name boots a
// throwaway guest of the default kernel, copies files in, passes the
// command's exit status through and says which patches the kernel has;
// a selection the series does not have is refused before any build.
func TestLabctlRunThrowaway(t *testing.T) {
	c := cli{t: t, state: t.TempDir()}
	payload := filepath.Join(t.TempDir(), "payload")
	require.NoError(t, os.WriteFile(payload, []byte("from the host\n"), 0o644))
	so, se, code := c.run("run", "--no-build", "--copy", payload+":/tmp/in/", "--", "cat /tmp/in/payload; exit 7")
	assert.Equal(t, 7, code, se)
	assert.Equal(t, "from the host\n", so)
	assert.Contains(t, se, "kernel patches: all ")

	for _, args := range [][]string{
		{"run", "--patches", "0099", "--", "true"},
		{"run", "--vanilla", "--without", "0001", "--", "true"},
		{"build", "--patches", "0003-0001"},
		{"run", "--config", "perf", "some-vm", "--", "true"},
	} {
		start := time.Now()
		_, se, code := c.run(args...)
		assert.Equal(t, 2, code, "%v: %s", args, se)
		assert.Less(t, time.Since(start), 30*time.Second, "%v: refused before any build", args)
	}
}
