package tests

import (
	"bytes"
	"context"
	"fmt"
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

	"ldtlab/orchestrator/accel"
	"ldtlab/orchestrator/channel"
	"ldtlab/orchestrator/lab"
	"ldtlab/orchestrator/report"
	"ldtlab/orchestrator/vm"
)

// testWriter sends lab progress to the test log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// guestOptions is the plain guest `labctl up` boots: sizes left to the
// lab (and to preset.Pressure, for the catalogue's guests), as the
// labctl verbs leave them when no flag is given.
func guestOptions(t testing.TB, name string) lab.Options {
	return lab.Options{
		Repo: repo, Name: vmPrefix + name, NoBuild: true, Log: testWriter{t},
	}
}

// boot starts a guest that is torn down when the test ends, whatever happens.
func boot(t testing.TB, o lab.Options) *lab.Machine {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	m, err := lab.Boot(ctx, o)
	require.NoError(t, err, "booting %s", o.Name)
	t.Cleanup(func() {
		m.Close()
		if t.Failed() {
			t.Logf("console tail of %s:\n%s", o.Name, m.Tail(60))
		}
	})
	return m
}

func run(t testing.TB, m *lab.Machine, cmd string) lab.Result {
	t.Helper()
	r, err := m.Run(context.Background(), cmd)
	require.NoError(t, err, "running %q", cmd)
	return r
}

// suiteBackends are the VM backends the common tests run on: one body,
// then each backend's own proof that nothing of the VM is left.
var suiteBackends = []struct {
	name string
	opts func(t testing.TB, name string) lab.Options
	gone func(t testing.TB, m *lab.Machine)
}{
	{"qemu", guestOptions, func(t testing.TB, m *lab.Machine) {
		p, ok := m.Instance().(vm.Process)
		require.True(t, ok, "the QEMU backend's instances are local processes")
		assert.Error(t, syscall.Kill(p.Pid(), 0), "QEMU (pid %d) still runs after Close", p.Pid())
	}},
	{"libvirt", libvirtOptions, func(t testing.TB, m *lab.Machine) {
		assert.Empty(t, domainsLeft(t, localURI), "no domain left after Close")
	}},
}

func TestBootRunExitStatus(t *testing.T) {
	for _, be := range suiteBackends {
		t.Run(be.name, func(t *testing.T) {
			m := boot(t, be.opts(t, "basic"))
			t.Logf("boot to agent ready (%s): %s (%s)", be.name, m.BootTime, m.Accel.Kind)

			r := run(t, m, "uname -r")
			assert.Equal(t, 0, r.Code)
			assert.Equal(t, m.Kernel.Meta.KernelRelease, strings.TrimSpace(string(r.Stdout)))

			for _, code := range []int{0, 1, 3, 42, 255} {
				r := run(t, m, fmt.Sprintf("exit %d", code))
				assert.Equal(t, code, r.Code, "exit %d", code)
			}

			r = run(t, m, "echo out; echo err >&2; exit 5")
			assert.Equal(t, "out\n", string(r.Stdout))
			assert.Equal(t, "err\n", string(r.Stderr))
			assert.Equal(t, 5, r.Code)

			// A process killed by a signal reports 128+signo.
			r = run(t, m, "kill -9 $$")
			assert.Equal(t, 128+9, r.Code)

			// stdin reaches the guest command.
			var out bytes.Buffer
			res, err := m.RunWith(context.Background(), "wc -c", channel.RunOptions{Stdin: strings.NewReader(strings.Repeat("x", 100000)), Stdout: &out})
			require.NoError(t, err)
			assert.Equal(t, 0, res.Code)
			assert.Equal(t, "100000", strings.TrimSpace(out.String()))

			// Both swap kinds are set up by the image's init (the disk
			// found by its serial, whichever backend attached it).
			swaps := string(run(t, m, "cat /proc/swaps").Stdout)
			assert.Contains(t, swaps, "/dev/zram0")
			assert.Contains(t, swaps, "/dev/vd")
			// The backend's console reaches the lab's capture from the
			// boot's first line on.
			log := string(m.ConsoleLog())
			assert.Contains(t, log, "Linux version")
			assert.Contains(t, log, "ldtlab-agent: ready")
			assert.Empty(t, m.Reports(), "kernel reports during a plain boot")

			m.Close()
			be.gone(t, m)
		})
	}
}

func TestCommandTimeoutKillsRemoteProcess(t *testing.T) {
	m := boot(t, guestOptions(t, "timeout"))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err := m.Run(ctx, "echo $$ > /tmp/sleeper.pid; exec sleep 1000")
	require.Error(t, err)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	// The guest is fine, and the remote process is gone.
	require.NoError(t, m.Ping(context.Background()))
	require.Eventually(t, func() bool {
		r := run(t, m, "kill -0 $(cat /tmp/sleeper.pid) 2>/dev/null && echo alive || echo gone")
		return strings.TrimSpace(string(r.Stdout)) == "gone"
	}, 10*time.Second, 200*time.Millisecond)
}

func TestConsoleCaptured(t *testing.T) {
	m := boot(t, guestOptions(t, "console"))
	run(t, m, "echo ldtlab-console-marker > /dev/kmsg")
	require.Eventually(t, func() bool {
		return bytes.Contains(m.ConsoleLog(), []byte("ldtlab-console-marker"))
	}, 5*time.Second, 50*time.Millisecond)
	log := string(m.ConsoleLog())
	assert.Contains(t, log, "Linux version "+m.Kernel.Meta.KernelRelease)
	assert.Contains(t, log, "ldtlab-agent: ready")
	st, err := os.Stat(m.ConsolePath())
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())
}

// trigger pokes the labtest fault-injection module.
func trigger(t *testing.T, m *lab.Machine, what string) lab.Result {
	t.Helper()
	r, err := m.Run(context.Background(), "echo "+what+" > /sys/kernel/debug/labtest/trigger")
	require.NoError(t, err)
	return r
}

func waitReport(t *testing.T, m *lab.Machine, typ report.Type) report.Report {
	t.Helper()
	var found report.Report
	require.Eventually(t, func() bool {
		for _, r := range m.Reports() {
			if r.Type == typ && !r.Truncated {
				found = r
				return true
			}
		}
		return false
	}, 60*time.Second, 100*time.Millisecond, "no %s report in the console", typ)
	return found
}

func TestInjectedWarningIsTitled(t *testing.T) {
	m := boot(t, guestOptions(t, "warn"))
	require.Empty(t, m.Reports())
	trigger(t, m, "warn")
	r := waitReport(t, m, "warning")
	assert.Contains(t, r.Title, "WARNING in labtest")
	assert.Contains(t, r.Text, "WARNING:")
	// The guest survives a WARNING.
	require.NoError(t, m.Ping(context.Background()))
}

func TestInjectedBugAndListCorruption(t *testing.T) {
	m := boot(t, guestOptions(t, "bug"))
	trigger(t, m, "bug")
	r := waitReport(t, m, "kernel-bug")
	assert.Contains(t, r.Title, "labtest")
	trigger(t, m, "list")
	r = waitReport(t, m, "list-corruption")
	assert.Contains(t, r.Title, "corrupted list")
}

func TestInjectedPanicIsDetected(t *testing.T) {
	for _, be := range suiteBackends {
		for _, tc := range []struct {
			name, cmd, title string
		}{
			{"sysrq", "echo c > /proc/sysrq-trigger", "sysrq"},
			{"module", "echo panic > /sys/kernel/debug/labtest/trigger", "labtest"},
		} {
			if be.name != "qemu" && tc.name == "sysrq" {
				continue // one panic per extra backend is enough
			}
			t.Run(be.name+"/"+tc.name, func(t *testing.T) {
				m := boot(t, be.opts(t, "panic-"+tc.name))
				start := time.Now()
				_, err := m.Run(context.Background(), tc.cmd)
				var ce *vm.CrashError
				require.ErrorAs(t, err, &ce, "a guest panic must surface as a CrashError")
				assert.Equal(t, "panic", ce.Type)
				assert.Contains(t, strings.ToLower(ce.Title), tc.title)
				t.Logf("panic detected (%s) in %s: %s", be.name, time.Since(start), ce.Title)
				assert.True(t, vm.IsGuestFault(err))
				assert.NotContains(t, strings.ToLower(err.Error()), "panic: kernel panic", "the type is not repeated before the title")
				// The whole report reached the console (the guest was let run on).
				assert.Contains(t, string(m.ConsoleLog()), "---[ end Kernel panic")
				m.Close()
				be.gone(t, m)
			})
		}
	}
}

func TestHungGuestIsDetected(t *testing.T) {
	t.Run("boot", func(t *testing.T) {
		o := guestOptions(t, "hang-boot")
		o.Cmdline = "ldtlab.hang=1"
		start := time.Now()
		m, err := lab.Boot(context.Background(), o)
		if m != nil {
			m.Close()
		}
		var he *vm.HangError
		require.ErrorAs(t, err, &he)
		took := time.Since(start)
		timeouts := vm.Scaled(accel.DetectHost().Kind)
		assert.Less(t, took, timeouts.Boot+30*time.Second, "hang must be reported within the scaled boot timeout")
		assert.Contains(t, he.Tail, "hang requested", "the error carries the console tail")
	})
	// A guest paused by its backend is a hang to the lab, whichever
	// backend froze it.
	for _, be := range suiteBackends {
		t.Run("running/"+be.name, func(t *testing.T) {
			m := boot(t, be.opts(t, "hang-run"))
			run(t, m, "true") // a guest in use, then frozen
			require.NoError(t, m.Instance().Pause(context.Background()))
			start := time.Now()
			err := m.Ping(context.Background())
			var he *vm.HangError
			require.ErrorAs(t, err, &he)
			assert.Less(t, time.Since(start), m.Timeouts.Ping+10*time.Second)
			m.Close()
			be.gone(t, m)
		})
	}
}

func TestTwoGuestsAtOnce(t *testing.T) {
	var wg sync.WaitGroup
	ms := make([]*lab.Machine, 2)
	errs := make([]error, 2)
	for i := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ms[i], errs[i] = lab.Boot(context.Background(), guestOptions(t, fmt.Sprintf("pair%d", i)))
		}()
	}
	wg.Wait()
	for i := range ms {
		if ms[i] != nil {
			t.Cleanup(func() { ms[i].Close() })
		}
		require.NoError(t, errs[i])
	}
	for i, m := range ms {
		r := run(t, m, "hostname")
		assert.Equal(t, fmt.Sprintf("%spair%d", vmPrefix, i), strings.TrimSpace(string(r.Stdout)))
	}
	assert.NotEqual(t, ms[0].Dir, ms[1].Dir)
}

func TestInjectedHungTaskIsTitled(t *testing.T) {
	m := boot(t, guestOptions(t, "hungtask"))
	run(t, m, "echo 2 > /proc/sys/kernel/hung_task_timeout_secs")
	trigger(t, m, "hung")
	r := waitReport(t, m, "hung-task")
	assert.Contains(t, r.Title, "INFO: task hung in")
}

// A full host disk surfaces as an I/O error in the guest and as a disk
// error naming the host file, not as a silently paused VM (QEMU's default
// werror=enospc stops the guest, which looks like a hang).
func TestHostDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a small tmpfs needs root")
	}
	dir, err := os.MkdirTemp("", "ldtlab-full-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	o := guestOptions(t, "diskfull")
	o.Dir = filepath.Join(dir, "vm")
	o.SwapMiB = -1
	o.DataMiB = 256
	m := boot(t, o) // its Close runs before the unmount
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	r, err := m.Run(ctx, "dd if=/dev/zero of=/mnt/data/fill bs=1M count=100 conv=fsync 2>&1; echo dd=$?")
	require.NoError(t, err, "the command must return: the guest is not paused")
	t.Logf("dd on a full host disk returned in %s:\n%s", time.Since(start).Round(time.Millisecond), r.Stdout)
	assert.NotContains(t, string(r.Stdout), "dd=0", "the write must fail in the guest")
	assert.Contains(t, m.DiskError(), "no space left on "+filepath.Join(o.Dir, "disk0-ldtdata.img"), "the host file of the data disk (the only disk) is named")
	run(t, m, "true") // and the guest still answers
}

// agentPids finds the guest agent's serve process(es).
const agentPids = `for d in /proc/[0-9]*; do case "$(tr '\0' ' ' < $d/cmdline 2>/dev/null)" in "ldtlab-agent serve"*) echo ${d#/proc/};; esac; done`

// The agent is protected from the OOM killer (what it runs is not); if it
// dies anyway, init restarts it and the lab reconnects: the command in
// flight fails, the next one works.
func TestAgentRestartReconnects(t *testing.T) {
	m := boot(t, guestOptions(t, "agent-restart"))
	r := run(t, m, `for p in $(`+agentPids+`); do cat /proc/$p/oom_score_adj; done; cat /proc/self/oom_score_adj`)
	assert.Equal(t, "-1000\n0\n", string(r.Stdout), "agent protected, its commands not")

	_, err := m.Run(context.Background(), `kill -9 $(`+agentPids+`)`)
	require.Error(t, err, "the agent died under the command")
	assert.False(t, vm.IsGuestFault(err), "the kernel is fine: %v", err)
	var res lab.Result
	require.Eventually(t, func() bool {
		res, err = m.Run(context.Background(), "echo back")
		return err == nil
	}, 2*time.Minute, time.Second, "no reconnect: %v", err)
	assert.Equal(t, "back\n", string(res.Stdout))
	assert.Equal(t, 1, m.Reconnects())
	assert.Empty(t, m.Reports())
}

// The soak's dump of a stuck guest: magic SysRq typed on the serial
// console (a QMP break, then the key) makes the kernel print every task
// (t) and the blocked ones (w), with a task stuck in D state among the
// latter, and the lab files none of it as a kernel report.
func TestSysrqDump(t *testing.T) {
	m := boot(t, guestOptions(t, "sysrq"))
	_, serial := m.Instance().(vm.SysRqer)
	require.True(t, serial, "the QEMU backend types SysRq on the serial console")
	trigger(t, m, "hung") // labtest-hung: a kthread in TASK_UNINTERRUPTIBLE
	mark := m.ReportMark()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dump, err := m.SysrqDump(ctx, "tw", 5*time.Second, 2*time.Minute)
	require.NoError(t, err)
	all, blocked, ok := strings.Cut(dump, "Show Blocked State")
	require.True(t, ok, "sysrq-w ran: %.2000s", dump)
	// (The dumps are long: say what is missing, not the whole text.)
	assert.True(t, strings.Contains(all, "sysrq: Show State"), "sysrq-t ran")
	assert.True(t, strings.Contains(all, "task:kthreadd") && strings.Contains(all, "task:init"), "sysrq-t lists every task, kernel threads and user space")
	assert.True(t, strings.Contains(blocked, "task:labtest-hung") && strings.Contains(blocked, "state:D"), "sysrq-w lists the task stuck in D state: %.1500s", blocked)
	for _, r := range m.ReportsSince(ctx, mark) {
		assert.Equal(t, report.Type("hung-task"), r.Type, "a SysRq dump is not a kernel report: %s", r.String())
	}
}
