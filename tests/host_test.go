package tests

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ldtlab/orchestrator/accel"
)

// simulateHost makes the lab, for the rest of t, see the machine h instead
// of this one (issue 26: the suite must hold with no /dev/kvm, a PVM-only
// one or a working one, whatever this machine has).
func simulateHost(t *testing.T, h accel.Host) {
	t.Helper()
	root, err := accel.Simulate(t.TempDir(), h)
	require.NoError(t, err)
	t.Setenv(accel.HostRootEnv, root)
}

// onlineCPUs counts the host's online CPUs as the kernel lists them, which
// is what libvirt reports; runtime.NumCPU is this process's affinity and
// is smaller in a cpuset-limited container.
func onlineCPUs(t testing.TB) int {
	t.Helper()
	b, err := os.ReadFile("/sys/devices/system/cpu/online")
	require.NoError(t, err)
	n := 0
	for _, r := range strings.Split(strings.TrimSpace(string(b)), ",") {
		lo, hi, ok := strings.Cut(r, "-")
		a, err := strconv.Atoi(lo)
		require.NoError(t, err, "parsing %q", b)
		z := a
		if ok {
			z, err = strconv.Atoi(hi)
			require.NoError(t, err, "parsing %q", b)
		}
		n += z - a + 1
	}
	return n
}

// TestNoKVMHost boots a guest on each backend as if this machine had no
// /dev/kvm at all, so that `make test` covers a KVM-less machine (the
// common first machine of a new user) even where /dev/kvm exists: the lab
// must pick TCG with the probe's reason and the guest must work.
func TestNoKVMHost(t *testing.T) {
	for _, be := range suiteBackends {
		t.Run(be.name, func(t *testing.T) {
			simulateHost(t, accel.NoKVM)
			m := boot(t, be.opts(t, "nokvm"))
			assert.Equal(t, accel.Choice{Kind: accel.TCG, Reason: "tcg: /dev/kvm does not exist"}, m.Accel)
			r, err := m.Run(context.Background(), "cat /proc/cpuinfo | grep -c ^processor")
			require.NoError(t, err)
			assert.Equal(t, 0, r.Code)
			m.Close()
			be.gone(t, m)
		})
	}
}
