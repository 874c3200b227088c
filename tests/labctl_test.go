package tests

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// cli runs labctl with a private state directory.
type cli struct {
	t     *testing.T
	state string
}

func (c cli) run(args ...string) (stdout, stderr string, code int) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, labctl, args...)
	cmd.Dir = repo
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

	// Exit status and stderr propagate.
	so, se, code := c.run("run", name, "--", "echo hi; echo oops >&2; exit 9")
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

	// A standard OpenSSH client gets in through `labctl proxy`.
	cfgText := c.ok("ssh-config", name)
	assert.Contains(t, cfgText, "ProxyCommand")
	if _, err := exec.LookPath("ssh"); err == nil {
		cfg := filepath.Join(t.TempDir(), "ssh_config")
		require.NoError(t, os.WriteFile(cfg, []byte(cfgText), 0o600))
		cmd := exec.Command("ssh", "-F", cfg, "-o", "BatchMode=yes", "ldtlab-"+name, "uname -r; exit 4")
		cmd.Env = append(os.Environ(), "LDTLAB_STATE="+state, "LDTLAB_REPO="+repo)
		out, err := cmd.Output()
		ee, _ := err.(*exec.ExitError)
		require.NotNil(t, ee, "ssh should exit 4: %v", err)
		assert.Equal(t, 4, ee.ExitCode(), "stderr: %s", ee.Stderr)
		assert.Equal(t, uname, strings.TrimSpace(string(out)))
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
	assert.NotEqual(t, 0, code)
	assert.Contains(t, se, "labctl up no-such-vm")

	out = c.ok("down", name)
	assert.Contains(t, out, name+" is down")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	assert.True(t, waitGone(ctx, name))
	_, err = os.Stat(filepath.Join(state, "vms", name))
	assert.True(t, os.IsNotExist(err), "down removes the VM directory")
}

func TestLabctlHelpOnEveryVerb(t *testing.T) {
	c := cli{t: t, state: t.TempDir()}
	for _, verb := range []string{"setup", "build", "up", "ls", "run", "shell", "cp", "logs", "ssh-config", "down", "proxy", "check", "selftests", "bench"} {
		_, se, code := c.run(verb, "--help")
		assert.Equal(t, 0, code, verb)
		assert.Contains(t, se, "Usage: labctl "+verb, verb)
	}
}
