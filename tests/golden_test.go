package tests

import (
	"context"
	"encoding/json"
	"ldtlab/orchestrator/preset"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestCaptureGoldenLogs provokes each failure the parser must title in a
// real guest and stores the console as orchestrator/report/testdata/
// guest-*.log. It only runs when asked (LDTLAB_CAPTURE_GOLDEN=1); the
// parser's unit tests then hold every capture to its .want file.
func TestCaptureGoldenLogs(t *testing.T) {
	if v := os.Getenv("LDTLAB_CAPTURE_GOLDEN"); v == "" || v == "sanitize" {
		t.Skip("set LDTLAB_CAPTURE_GOLDEN=1 to capture new golden logs from real guests")
	}
	cases := []struct {
		name string
		cmds []string
		wait time.Duration
	}{
		{"warn", []string{"echo warn > /sys/kernel/debug/labtest/trigger"}, 2 * time.Second},
		{"bug", []string{"echo bug > /sys/kernel/debug/labtest/trigger"}, 2 * time.Second},
		{"list-corruption", []string{"echo list > /sys/kernel/debug/labtest/trigger"}, 2 * time.Second},
		{"hung-task", []string{"echo 2 > /proc/sys/kernel/hung_task_timeout_secs", "echo hung > /sys/kernel/debug/labtest/trigger"}, 20 * time.Second},
		{"vm-bug", []string{"echo vmbug > /sys/kernel/debug/labtest/trigger"}, 2 * time.Second},
		{"soft-lockup", []string{"echo 5 > /proc/sys/kernel/watchdog_thresh", "echo softlockup > /sys/kernel/debug/labtest/trigger"}, 40 * time.Second},
		{"several", []string{"echo warn > /sys/kernel/debug/labtest/trigger", "echo warn > /sys/kernel/debug/labtest/trigger", "echo bug > /sys/kernel/debug/labtest/trigger"}, 3 * time.Second},
		{"sysrq-panic", []string{"echo c > /proc/sysrq-trigger"}, 3 * time.Second},
		{"module-panic", []string{"echo panic > /sys/kernel/debug/labtest/trigger"}, 3 * time.Second},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := boot(t, guestOptions(t, "golden-"+tc.name))
			for _, c := range tc.cmds {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				m.Run(ctx, c) // a crash ends the command; that is the point
				cancel()
			}
			time.Sleep(tc.wait)
			out := filepath.Join(repo, "orchestrator", "report", "testdata", "guest-"+tc.name+".log")
			require.NoError(t, os.WriteFile(out, m.ConsoleLog(), 0o644))
			for _, r := range m.Reports() {
				t.Logf("%s: %s", tc.name, r)
			}
		})
	}
}

// sanitizeCaptures are the labtest triggers of the sanitizer and detector
// reports, one fresh guest each (lockdep reports only once per boot).
var sanitizeCaptures = []struct {
	name string
	cmds []string
	wait time.Duration
}{
	// A boot without a bug: the sanitizers themselves must stay quiet.
	{"clean", []string{"uname -a", "cat /proc/cmdline"}, 3 * time.Second},
	{"kasan-oob", []string{"echo kasan-oob > /sys/kernel/debug/labtest/trigger"}, 3 * time.Second},
	{"kasan-uaf", []string{"echo kasan-uaf > /sys/kernel/debug/labtest/trigger"}, 3 * time.Second},
	{"kfence", []string{"echo kfence > /sys/kernel/debug/labtest/trigger"}, 3 * time.Second},
	{"ubsan-shift", []string{"echo ubsan-shift > /sys/kernel/debug/labtest/trigger"}, 3 * time.Second},
	{"ubsan-bounds", []string{"echo ubsan-bounds > /sys/kernel/debug/labtest/trigger"}, 3 * time.Second},
	{"lockdep", []string{"echo lockdep > /sys/kernel/debug/labtest/trigger"}, 3 * time.Second},
	{"atomic-sleep", []string{"echo atomic-sleep > /sys/kernel/debug/labtest/trigger"}, 3 * time.Second},
	{"refcount", []string{"echo refcount > /sys/kernel/debug/labtest/trigger"}, 3 * time.Second},
	// kmemleak reports objects older than 5 s; the first scan after that
	// finds the leak, verbose=1 prints it on the console.
	{"kmemleak", []string{"echo 1 > /sys/module/kmemleak/parameters/verbose", "echo leak > /sys/kernel/debug/labtest/trigger",
		"sleep 7", "echo scan > /sys/kernel/debug/kmemleak", "echo scan > /sys/kernel/debug/kmemleak"}, 3 * time.Second},
	{"kasan-double-free", []string{"echo kasan-double-free > /sys/kernel/debug/labtest/trigger"}, 3 * time.Second},
	{"kasan-global", []string{"echo kasan-global > /sys/kernel/debug/labtest/trigger"}, 3 * time.Second},
	{"kasan-stack", []string{"echo kasan-stack > /sys/kernel/debug/labtest/trigger"}, 3 * time.Second},
	{"lockdep-inconsistent", []string{"echo inconsistent > /sys/kernel/debug/labtest/trigger"}, 3 * time.Second},
	{"lockdep-rcu", []string{"echo rcu-deref > /sys/kernel/debug/labtest/trigger"}, 3 * time.Second},
	{"lockdep-wait-context", []string{"echo wait-context > /sys/kernel/debug/labtest/trigger"}, 3 * time.Second},
	{"lockdep-unlock-balance", []string{"echo unlock-balance > /sys/kernel/debug/labtest/trigger"}, 3 * time.Second},
	// The stall timeout is read at each grace period's start; 3 s is
	// its floor. The spin lasts 15 s, under the soft-lockup threshold.
	{"rcu-stall", []string{"echo 3 > /sys/module/rcupdate/parameters/rcu_cpu_stall_timeout",
		"echo rcustall > /sys/kernel/debug/labtest/trigger"}, 30 * time.Second},
	// The buddy detector checks every ~4 s and reports after three
	// missed hrtimer ticks; the spin lasts 40 s.
	{"hard-lockup", []string{"echo hardlockup > /sys/kernel/debug/labtest/trigger"}, 50 * time.Second},
	{"divide-error", []string{"echo divide > /sys/kernel/debug/labtest/trigger"}, 3 * time.Second},
	{"gpf", []string{"echo gpf > /sys/kernel/debug/labtest/trigger"}, 3 * time.Second},
	{"null-deref", []string{"echo null > /sys/kernel/debug/labtest/trigger"}, 3 * time.Second},
}

// TestCaptureSanitizeGoldenLogs is TestCaptureGoldenLogs for the sanitize
// kernel (LDTLAB_CAPTURE_GOLDEN=sanitize; needs `labctl build --config
// sanitize`): guest-sanitize-*.log. Under TCG it takes ~6 min here (the
// lab boots the sanitize kernel with acpi=noirq: docs/benchmarks.md).
func TestCaptureSanitizeGoldenLogs(t *testing.T) {
	if os.Getenv("LDTLAB_CAPTURE_GOLDEN") != "sanitize" {
		t.Skip("set LDTLAB_CAPTURE_GOLDEN=sanitize to capture golden logs from the sanitize kernel")
	}
	for _, tc := range sanitizeCaptures {
		t.Run(tc.name, func(t *testing.T) {
			o := guestOptions(t, "golden-"+tc.name)
			o.Config = "sanitize"
			m := boot(t, o)
			for _, c := range tc.cmds {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				m.Run(ctx, c) // an oops ends the command; that is the point
				cancel()
			}
			time.Sleep(tc.wait)
			out := filepath.Join(repo, "orchestrator", "report", "testdata", "guest-sanitize-"+tc.name+".log")
			require.NoError(t, os.WriteFile(out, m.ConsoleLog(), 0o644))
			for _, r := range m.Reports() {
				t.Logf("%s: %s", tc.name, r)
			}
		})
	}
}

// TestLabctlReport: `labctl report` on the parser's golden logs, with the
// README's exit statuses: 0 no report, 1 reports, 3 a file it cannot read.
func TestLabctlReport(t *testing.T) {
	c := cli{t: t, state: t.TempDir()}
	td := filepath.Join(repo, "orchestrator", "report", "testdata")
	so, _, code := c.run("report", filepath.Join(td, "synthetic-noise.log"))
	assert.Equal(t, 0, code, so)
	assert.Contains(t, so, "0 kernel report(s)")

	so, _, code = c.run("report", filepath.Join(td, "guest-warn.log"), filepath.Join(td, "synthetic-noise.log"))
	assert.Equal(t, 1, code, so)
	assert.Contains(t, so, "warning: WARNING in labtest_warn")

	so, _, code = c.run("report", "--json", filepath.Join(td, "synthetic-kasan.log"))
	assert.Equal(t, 1, code, so)
	var reps []struct{ File, Type, Title string }
	require.NoError(t, json.Unmarshal([]byte(so), &reps), so)
	require.Len(t, reps, 1)
	assert.Equal(t, "KASAN: slab-use-after-free Read in ldt_tracker_lookup", reps[0].Title)

	_, se, code := c.run("report", filepath.Join(td, "guest-warn.log"), filepath.Join(t.TempDir(), "missing.log"))
	assert.Equal(t, 3, code)
	assert.Contains(t, se, "missing.log")

	_, _, code = c.run("report")
	assert.Equal(t, 2, code, "no FILE is a usage error")
}

// TestCaptureBusyCleanLogs stores the consoles of guests that worked hard
// without a bug — every catalogue scenario under ldt, then 20 s of stress
// with every agitator — as guest-busy-clean-<config>.log: real logs
// without a crash, full of swap, THP, migration, KSM and sanitizer
// chatter, on which the parser must find nothing
// (LDTLAB_CAPTURE_GOLDEN=clean; needs the debug and sanitize kernels).
func TestCaptureBusyCleanLogs(t *testing.T) {
	if os.Getenv("LDTLAB_CAPTURE_GOLDEN") != "clean" {
		t.Skip("set LDTLAB_CAPTURE_GOLDEN=clean to capture busy crash-free consoles")
	}
	for _, config := range []string{"debug", "sanitize"} {
		t.Run(config, func(t *testing.T) {
			o := guestOptions(t, "busy-"+config)
			o.Config = config
			preset.Pressure(&o)
			m := boot(t, o)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
			defer cancel()
			list, err := m.Run(ctx, "ldt-check -list")
			require.NoError(t, err)
			var scenarios []struct{ Name string }
			require.NoError(t, json.Unmarshal(list.Stdout, &scenarios))
			require.NotEmpty(t, scenarios)
			for _, sc := range scenarios {
				r, err := m.Run(ctx, "ldt-check -q -tracker ldt -seed 1 -scenario "+sc.Name)
				require.NoError(t, err, sc.Name)
				t.Logf("%s: exit %d", sc.Name, r.Code)
			}
			r, err := m.Run(ctx, "ldt-stress -tracker ldt -pages 16384 -duration 20s -seed 1")
			require.NoError(t, err)
			t.Logf("stress: exit %d", r.Code)
			time.Sleep(3 * time.Second)
			out := filepath.Join(repo, "orchestrator", "report", "testdata", "guest-busy-clean-"+config+".log")
			require.NoError(t, os.WriteFile(out, m.ConsoleLog(), 0o644))
			assert.Empty(t, m.Reports(), "a busy run without a bug")
		})
	}
}
