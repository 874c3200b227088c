package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ldtlab/orchestrator/channel"
)

const runMainEnv = "LDTLAB_AGENT_TEST_MAIN"

// TestMain lets the test binary stand in for ldtlab-agent itself.
func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestServeMode runs "ldtlab-agent serve" as a process with host paths for
// every flag, and reconnects once to check the agent serves a new host.
func TestServeMode(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.Chmod(dir, 0o700))
	keys, err := channel.GenerateKeys(dir)
	require.NoError(t, err)
	sock := filepath.Join(dir, "ctl.sock")
	ln, err := net.Listen("unix", sock)
	require.NoError(t, err)
	defer ln.Close()

	self, err := os.Executable()
	require.NoError(t, err)
	cmd := exec.Command(self, "serve", "--port", sock, "--host-key", keys.HostKeyPath(),
		"--authorized-key", keys.AuthorizedKeyPath(), "--shell", "/bin/sh", "--kmsg", "")
	cmd.Env = append(os.Environ(), runMainEnv+"=1")
	var stderr lockedBuffer
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()

	for round := 0; round < 2; round++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		conn, err := ln.Accept()
		require.NoError(t, err)
		mux, err := channel.Handshake(ctx, conn)
		require.NoError(t, err)
		s, err := mux.Open(ctx)
		require.NoError(t, err)
		c, err := channel.Dial(ctx, s, keys)
		require.NoError(t, err)
		out, _, code, err := c.Output(ctx, "echo round-$((1+"+string(rune('0'+round))+"))")
		require.NoError(t, err)
		assert.Equal(t, 0, code)
		assert.Equal(t, "round-"+string(rune('1'+round))+"\n", string(out))
		c.Close()
		mux.Close() // the agent must come back for the next host
		cancel()
	}
	assert.Contains(t, stderr.String(), "ldtlab-agent: ready")
}

func TestUsage(t *testing.T) {
	self, err := os.Executable()
	require.NoError(t, err)
	cmd := exec.Command(self, "bogus")
	cmd.Env = append(os.Environ(), runMainEnv+"=1")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee)
	assert.Equal(t, 2, ee.ExitCode())
	assert.True(t, strings.Contains(string(out), "usage"), string(out))
}
