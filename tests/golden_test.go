package tests

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestCaptureGoldenLogs provokes each failure the parser must title in a
// real guest and stores the console as orchestrator/report/testdata/
// guest-*.log. It only runs when asked (LDTLAB_CAPTURE_GOLDEN=1); the
// parser's unit tests then hold every capture to its .want file.
func TestCaptureGoldenLogs(t *testing.T) {
	if os.Getenv("LDTLAB_CAPTURE_GOLDEN") == "" {
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
