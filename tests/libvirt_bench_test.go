package tests

import (
	"context"
	"os"
	"sort"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"ldtlab/orchestrator/lab"
)

// TestBenchBootToCommandLibvirt measures boot-to-first-command through
// libvirt (unix socket, and SSH through the suite's loopback sshd) against
// the QEMU backend, interleaved so that the host's load hits all alike. It
// reports figures and asserts nothing about them; it runs only when asked
// (LDTLAB_BENCH_LIBVIRT=N boots per backend), for docs/benchmarks.md.
func TestBenchBootToCommandLibvirt(t *testing.T) {
	n := 0
	if v := os.Getenv("LDTLAB_BENCH_LIBVIRT"); v != "" {
		n = int(v[0] - '0')
	}
	if n <= 0 || n > 9 {
		t.Skip("set LDTLAB_BENCH_LIBVIRT=N (1-9 boots per backend) to measure")
	}
	backends := []struct{ label, name, connect string }{
		{"qemu (direct)", "qemu", ""},
		{"libvirt qemu:///system", "libvirt", localURI},
		{"libvirt qemu+ssh://127.0.0.1/system", "libvirt", remoteURI(t)},
	}
	times := map[string][]time.Duration{}
	for i := range n {
		for _, b := range backends {
			o := guestOptions(t, "bench")
			o.Backend, o.Connect = b.name, b.connect
			start := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			m, err := lab.Boot(ctx, o)
			require.NoError(t, err, "%s", b.label)
			_, err = m.Run(ctx, "true")
			took := time.Since(start)
			m.Close()
			cancel()
			require.NoError(t, err)
			times[b.label] = append(times[b.label], took)
			t.Logf("round %d %-38s boot-to-command %s (agent ready %s, %s)", i, b.label, took.Round(time.Millisecond), m.BootTime.Round(time.Millisecond), m.Accel.Kind)
		}
	}
	for _, b := range backends {
		d := times[b.label]
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		t.Logf("%-38s median %s  min %s  max %s  (n=%d)", b.label, d[len(d)/2].Round(time.Millisecond), d[0].Round(time.Millisecond), d[len(d)-1].Round(time.Millisecond), len(d))
	}
}
