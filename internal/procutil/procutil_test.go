package procutil

import (
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// start runs a shell script in its own process group; its exit shows on
// the returned channel.
func start(t *testing.T, script string) (*exec.Cmd, chan error) {
	t.Helper()
	cmd := exec.Command("sh", "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	require.NoError(t, cmd.Start())
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	})
	// Let the shell install its traps before it is signalled.
	time.Sleep(200 * time.Millisecond)
	return cmd, done
}

func TestTerminate(t *testing.T) {
	cases := []struct {
		name   string
		script string
		group  bool
		killed bool
	}{
		{"obeys SIGTERM", "sleep 30", false, false},
		{"ignores SIGTERM", "trap '' TERM; while :; do sleep 0.05; done", false, true},
		{"group obeys SIGTERM", "sleep 30 & sleep 30 & wait", true, false},
		{"group ignores SIGTERM", "trap '' TERM; sleep 30 & wait", true, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cmd, done := start(t, c.script)
			pid := cmd.Process.Pid
			if c.group {
				pid = -pid
			}
			t0 := time.Now()
			assert.Equal(t, c.killed, Terminate(pid, 3*time.Second, done)) // generous: the machine may be loaded
			if !c.killed {
				assert.Less(t, time.Since(t0), 2500*time.Millisecond, "SIGTERM alone should have ended it, before the grace period")
			}
		})
	}
}

func TestTerminateAlreadyExited(t *testing.T) {
	exited := make(chan struct{})
	close(exited)
	// pid 0 would signal our own group: Terminate must not signal at all.
	assert.False(t, Terminate(0, time.Second, exited))
}

func TestStop(t *testing.T) {
	stubborn, _ := start(t, "trap '' TERM; while :; do sleep 0.05; done")
	polite, _ := start(t, "sleep 30")
	all := []int{stubborn.Process.Pid, polite.Process.Pid}
	assert.True(t, Alive(all[0]))
	t0 := time.Now()
	left := Stop(all[1:], all, 300*time.Millisecond)
	assert.Empty(t, left)
	assert.GreaterOrEqual(t, time.Since(t0), 300*time.Millisecond, "the stubborn one waited for the grace period")
	assert.False(t, Alive(all[0]))
	assert.False(t, Alive(all[1]))
}

// TermWait never kills: a process that ignores SIGTERM is still there,
// and named.
func TestTermWait(t *testing.T) {
	stubborn, _ := start(t, "trap '' TERM; while :; do sleep 0.05; done")
	polite, _ := start(t, "sleep 30")
	all := []int{stubborn.Process.Pid, polite.Process.Pid}
	left := TermWait(all, all, 300*time.Millisecond)
	assert.Equal(t, all[:1], left)
	assert.True(t, Alive(all[0]))
	assert.False(t, Alive(all[1]))
}

func TestAlive(t *testing.T) {
	assert.True(t, Alive(syscall.Getpid()))
	assert.False(t, Alive(1<<30), "no such pid")
	assert.True(t, WaitGone(nil, 0))
}
