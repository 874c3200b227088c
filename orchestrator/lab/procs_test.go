package lab

import (
	"bufio"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The test binary doubles as a fake supervisor (before the test flags are
// parsed, which would reject -dir).
func init() {
	if os.Getenv("LDTLAB_FAKE_SUPERVISOR") == "1" {
		signal.Ignore(syscall.SIGTERM)
		os.Stdout.WriteString("ready\n")
		for {
			time.Sleep(time.Hour)
		}
	}
}

func TestMatchVM(t *testing.T) {
	dir := "/st/vms/x"
	sup := []string{"/repo/bin/labctl", "supervise", "-dir", dir, "-config", "debug", "x"}
	qemu := []string{"/usr/bin/qemu-system-x86_64", "-name", "ldtlab-x,debug-threads=on", "-qmp", "unix:/st/vms/x/qmp.sock,server=on,wait=off"}
	cases := []struct {
		name string
		argv []string
		vm   string
		dir  string
		want string
	}{
		{"supervisor", sup, "x", dir, "supervisor"},
		{"qemu", qemu, "x", dir, "qemu"},
		{"supervisor of xy is not x's", []string{"labctl", "supervise", "-dir", "/st/vms/xy", "xy"}, "x", dir, ""},
		{"qemu of xy is not x's", []string{"qemu-system-x86_64", "-qmp", "unix:/st/vms/xy/qmp.sock,server=on"}, "x", dir, ""},
		{"x's supervisor is not xy's", sup, "xy", "/st/vms/xy", ""},
		{"x's qemu is not xy's", qemu, "xy", "/st/vms/xy", ""},
		{"same name, other state dir", sup, "x", "/other/vms/x", ""},
		{"throwaway qemu with the same name", []string{"qemu-system-x86_64", "-name", "ldtlab-x", "-qmp", "unix:/tmp/ldtlab-vm-1/qmp.sock,server=on"}, "x", dir, ""},
		{"labctl run x is not the supervisor", []string{"labctl", "run", "x", "--", "supervise", "-dir", dir, "x"}, "x", dir, ""},
		{"some other program", []string{"sleep", "-dir", dir, "x"}, "x", dir, ""},
		{"empty", nil, "x", dir, ""},
	}
	for _, c := range cases {
		assert.Equal(t, c.want, MatchVM(c.argv, c.vm, c.dir), c.name)
	}
}

// Processes finds a real process by its command line, and Stop ends it.
func TestProcessesAndStop(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "vms", "x")
	// A stand-in supervisor: this test binary under the name labctl,
	// ignoring SIGTERM, so that Stop has to escalate to SIGKILL.
	exe, err := os.Executable()
	require.NoError(t, err)
	bin := filepath.Join(t.TempDir(), "labctl")
	require.NoError(t, os.Symlink(exe, bin))
	start := func(dir, name string) (*exec.Cmd, chan struct{}) {
		cmd := exec.Command(bin, "supervise", "-dir", dir, name)
		cmd.Env = append(os.Environ(), "LDTLAB_FAKE_SUPERVISOR=1")
		ready, err := cmd.StdoutPipe()
		require.NoError(t, err)
		require.NoError(t, cmd.Start())
		t.Cleanup(func() { cmd.Process.Kill() })
		line, err := bufio.NewReader(ready).ReadString('\n')
		require.NoError(t, err)
		require.Equal(t, "ready\n", line)
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		return cmd, exited
	}
	cmd, exited := start(dir, "x")
	other, _ := start(dir+"y", "xy")

	procs := Processes("x", dir)
	require.Equal(t, []Proc{{PID: cmd.Process.Pid, Role: "supervisor"}}, procs)
	t0 := time.Now()
	Stop(procs, 300*time.Millisecond)
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Fatal("Stop left the process running")
	}
	assert.GreaterOrEqual(t, time.Since(t0), 300*time.Millisecond, "SIGTERM was ignored: Stop waited the grace period")
	assert.Less(t, time.Since(t0), 3*time.Second)
	assert.True(t, alive(other.Process.Pid), "xy's process must not be touched")
	assert.Empty(t, Processes("x", dir))
}
