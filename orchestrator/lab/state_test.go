package lab

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ldtlab/orchestrator/vm"
)

func TestStateDirPrecedence(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("HOME", "/home/someone")
	t.Setenv("XDG_STATE_HOME", "/xdg/state")
	t.Setenv("LDTLAB_STATE", tmp)
	StateDir := func() string {
		d, err := StateDir()
		require.NoError(t, err)
		return d
	}
	assert.Equal(t, tmp, StateDir(), "LDTLAB_STATE wins")

	t.Setenv("LDTLAB_STATE", "")
	assert.Equal(t, "/xdg/state/ldtlab", StateDir(), "then XDG_STATE_HOME")

	t.Setenv("XDG_STATE_HOME", "")
	assert.Equal(t, "/home/someone/.local/state/ldtlab", StateDir(), "then HOME")
}

func TestVMDir(t *testing.T) {
	state := t.TempDir()
	t.Setenv("LDTLAB_STATE", state)
	good := []string{"a", "vm1", "ldt-debug", "my_vm.2", "A", "0", strings.Repeat("x", 32)}
	for _, name := range good {
		t.Run("ok "+name, func(t *testing.T) {
			dir, err := VMDir(name)
			require.NoError(t, err)
			assert.Equal(t, filepath.Join(state, "vms", name), dir)
		})
	}
	bad := []string{
		"", "../x", "..", ".", ".hidden", "-flag", "_x", "a/b", "/abs", "a b", " a", "a ",
		"a\tb", "a\nb", "a,b", "a:b", "a;b", "a$b", "é", strings.Repeat("x", 33), "a\x00b",
	}
	for _, name := range bad {
		t.Run("bad "+name, func(t *testing.T) {
			dir, err := VMDir(name)
			require.Error(t, err)
			assert.Empty(t, dir)
			assert.Contains(t, err.Error(), "invalid VM name")
		})
	}
}

func TestVMDirStaysInStateDir(t *testing.T) {
	state := t.TempDir()
	t.Setenv("LDTLAB_STATE", state)
	for _, name := range []string{"a", "a.b", "a..b", "z-9_."} {
		dir, err := VMDir(name)
		if err != nil {
			continue
		}
		rel, err := filepath.Rel(filepath.Join(state, "vms"), dir)
		require.NoError(t, err)
		assert.Equal(t, name, rel, "%q must not escape vms/", name)
	}
}

func writeStateFile(t *testing.T, dir, content string) {
	t.Helper()
	require.NoError(t, os.MkdirAll(dir, 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "state.json"), []byte(content), 0o600))
}

func TestReadState(t *testing.T) {
	t.Setenv("LDTLAB_STATE", t.TempDir())
	dir, err := VMDir("alpha")
	require.NoError(t, err)

	_, err = ReadState(dir)
	assert.ErrorIs(t, err, os.ErrNotExist, "a missing state file is reported as such (Socket relies on it)")

	writeStateFile(t, dir, `{"name":"alpha","status":"running","supervisor_pid":123,"qemu_pid":456,
		"kernel":"6.12.0","accel":"tcg","started":"2024-01-02T03:04:05Z","boot_seconds":1.5,"unknown_field":true}`)
	st, err := ReadState(dir)
	require.NoError(t, err)
	assert.Equal(t, "alpha", st.Name)
	assert.Equal(t, StatusRunning, st.Status)
	assert.Equal(t, 123, st.SupervisorPID)
	assert.Equal(t, 456, st.QEMUPID)
	assert.Equal(t, "tcg", st.Accel)
	assert.Equal(t, 1.5, st.BootSeconds)
	assert.True(t, st.Started.Equal(time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)))
}

func TestReadStateCorrupt(t *testing.T) {
	t.Setenv("LDTLAB_STATE", t.TempDir())
	for name, content := range map[string]string{
		"truncated": `{"name":"alpha","stat`,
		"empty":     ``,
		"not json":  `hello`,
		"bad type":  `{"supervisor_pid":"many"}`,
	} {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "vm")
			writeStateFile(t, dir, content)
			_, err := ReadState(dir)
			require.Error(t, err)
			assert.Contains(t, err.Error(), filepath.Join(dir, "state.json"), "the error names the file")
			assert.Contains(t, err.Error(), "corrupt")
		})
	}
}

func TestWriteStateRoundTrip(t *testing.T) {
	dir := t.TempDir()
	in := &State{Name: "b", Status: StatusFailed, Error: "boom\nmore", SupervisorPID: 7, Started: time.Now().UTC().Truncate(time.Second)}
	require.NoError(t, writeState(dir, in))
	out, err := ReadState(dir)
	require.NoError(t, err)
	assert.Equal(t, in, out)
	st, err := os.Stat(filepath.Join(dir, "state.json"))
	require.NoError(t, err)
	assert.True(t, st.Mode().IsRegular())
}

// startProcess starts a long sleep under the given argv and returns its pid;
// it is killed and reaped at the end of the test.
func startProcess(t *testing.T, argv ...string) int {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	// Wait until /proc shows the final argv (after exec).
	want := strings.Join(argv, "\x00")
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(cmd.Process.Pid), "cmdline"))
		if err == nil && strings.HasPrefix(string(b), want) {
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	return cmd.Process.Pid
}

func deadPid(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("true")
	require.NoError(t, cmd.Run())
	return cmd.Process.Pid // reaped: no such process (barring pid reuse)
}

func TestAlive(t *testing.T) {
	sleepy := startProcess(t, "sleep", "300")
	// A process named labctl with a "supervise" argument, like the real
	// one; the trailing ":" keeps sh from exec'ing sleep in its place.
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash")
	}
	supervisor := startProcess(t, bash, "-c", "exec -a /usr/bin/labctl sh -c 'sleep 300; :' supervise")
	// bash needs a moment to exec into the renamed process.
	require.Eventually(t, func() bool {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", supervisor))
		return strings.HasPrefix(string(b), "/usr/bin/labctl\x00")
	}, 5*time.Second, 5*time.Millisecond)

	cases := []struct {
		name string
		pid  int
		want bool
	}{
		{"pid 0", 0, false},
		{"negative pid", -1, false},
		{"dead pid", deadPid(t), false},
		{"live process that is not a supervisor", sleepy, false},
		{"the test process itself", os.Getpid(), false},
		{"live supervisor", supervisor, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.pid == os.Getpid() {
				b, _ := os.ReadFile("/proc/self/cmdline")
				if strings.Contains(string(b), "supervise") {
					t.Skip("the test binary was started with 'supervise' in its arguments")
				}
			}
			st := &State{Name: "x", Status: StatusRunning, SupervisorPID: c.pid}
			assert.Equal(t, c.want, st.Alive())
		})
	}
}

func TestSocket(t *testing.T) {
	t.Setenv("LDTLAB_STATE", t.TempDir())

	_, _, err := Socket("../escape")
	assert.ErrorContains(t, err, "invalid VM name")

	_, _, err = Socket("nobody")
	require.Error(t, err)
	assert.Contains(t, err.Error(), `no VM named "nobody"`)
	assert.Contains(t, err.Error(), "labctl up nobody")

	dir, err := VMDir("deadvm")
	require.NoError(t, err)
	writeStateFile(t, dir, `{"name":"deadvm","status":"failed","error":"kernel report: BUG\nstack","supervisor_pid":0}`)
	_, st, err := Socket("deadvm")
	require.Error(t, err)
	require.NotNil(t, st)
	assert.Contains(t, err.Error(), "is not running (status failed: kernel report: BUG)")
	assert.NotContains(t, err.Error(), "stack", "only the first line of the error")

	// state.json says running, but the supervisor was killed: say so,
	// not "not running (status running)".
	dir, err = VMDir("orphan")
	require.NoError(t, err)
	dead := deadPid(t)
	writeStateFile(t, dir, fmt.Sprintf(`{"name":"orphan","status":"running","supervisor_pid":%d,"qemu_pid":%d}`, dead, dead))
	_, _, err = Socket("orphan")
	require.Error(t, err)
	assert.NotContains(t, err.Error(), "status running")
	assert.Contains(t, err.Error(), fmt.Sprintf("supervisor (pid %d) is no longer running", dead))
	assert.Contains(t, err.Error(), "its QEMU is gone too")
	assert.Contains(t, err.Error(), "labctl down orphan")
	var ie *vm.InfraError
	assert.ErrorAs(t, err, &ie, "a dead supervisor is a lab failure (exit 3)")

	dir, err = VMDir("corrupt")
	require.NoError(t, err)
	writeStateFile(t, dir, `{`)
	_, _, err = Socket("corrupt")
	assert.ErrorContains(t, err, "corrupt")
}

// A state write on a full disk fails and says where.
func TestWriteStateDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs: %v %s", err, out)
	}
	defer exec.Command("umount", "-l", dir).Run()
	require.NoError(t, writeState(dir, &State{Name: "x", Status: StatusRunning}))
	os.WriteFile(filepath.Join(dir, "console.log"), make([]byte, 1<<20), 0o600) // fills it
	err := writeState(dir, &State{Name: "x", Status: StatusFailed, Error: strings.Repeat("e", 64<<10)})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "no space left on "+filepath.Join(dir, "state.json"))
	st, err := ReadState(dir)
	require.NoError(t, err, "the old state stays readable")
	assert.Equal(t, StatusRunning, st.Status)
	assert.Contains(t, DiskHint(dir), "no space left on "+dir)
	assert.Empty(t, DiskHint(t.TempDir()))
}

func TestList(t *testing.T) {
	state := t.TempDir()
	t.Setenv("LDTLAB_STATE", state)
	names, err := List()
	require.NoError(t, err)
	assert.Empty(t, names)

	for _, n := range []string{"b", "a", "c"} {
		require.NoError(t, os.MkdirAll(filepath.Join(state, "vms", n), 0o700))
	}
	require.NoError(t, os.WriteFile(filepath.Join(state, "vms", "stray-file"), nil, 0o600))
	names, err = List()
	require.NoError(t, err)
	assert.Equal(t, []string{"a", "b", "c"}, names)
}

func TestErrSuffix(t *testing.T) {
	assert.Equal(t, "", errSuffix(""))
	assert.Equal(t, ": one", errSuffix("one"))
	assert.Equal(t, ": first", errSuffix("first\nsecond"))
}

// Without HOME the state directory must not fall back to /tmp, where any
// user can plant it.
func TestStateDirWithoutHomeIsNotShared(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	t.Setenv("HOME", "")
	t.Setenv("LDTLAB_STATE", "")
	t.Setenv("XDG_STATE_HOME", "")
	d, err := StateDir()
	if err != nil {
		assert.Contains(t, err.Error(), "LDTLAB_STATE")
		return
	}
	assert.False(t, strings.HasPrefix(d, tmp), "state dir %s is under TMPDIR", d)
	assert.False(t, strings.HasPrefix(d, "/tmp/"), "state dir %s is under /tmp", d)
}

// A state directory planted by another user (or open to everyone) is
// refused when a VM directory is made in it.
func TestMkdirStateRefusesOpenDir(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state")
	require.NoError(t, os.Mkdir(state, 0o700))
	require.NoError(t, os.Chmod(state, 0o777))
	t.Setenv("LDTLAB_STATE", state)
	dir, err := VMDir("x")
	require.NoError(t, err)
	err = MkdirState(dir, 0o700)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "LDTLAB_STATE")
	_, err = EnsureStateDir()
	require.Error(t, err)
}
