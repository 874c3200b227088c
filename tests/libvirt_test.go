package tests

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ldtlab/orchestrator/lab"
	"ldtlab/orchestrator/vm"
	lv "ldtlab/orchestrator/vm/libvirt"
)

// The libvirt backend's suite runs against this machine's libvirtd (set up
// by TestMain through `labctl setup --backend libvirt`): over the unix
// socket (qemu:///system) and, for the remote-style tests, over TCP on
// loopback (qemu+tcp://127.0.0.1/system).
const (
	localURI  = "qemu:///system"
	remoteURI = "qemu+tcp://127.0.0.1/system"
)

func libvirtOptions(t testing.TB, name string) lab.Options {
	o := guestOptions(t, "lv-"+name)
	o.Backend = "libvirt"
	return o
}

// domainsLeft lists the suite's domains still known to libvirtd.
func domainsLeft(t testing.TB, uri string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	names, err := lv.Domains(ctx, uri, lv.NamePrefix+vmPrefix)
	require.NoError(t, err)
	return names
}

func TestLibvirtBootRunExitStatus(t *testing.T) {
	t.Setenv(lv.URIEnv, localURI)
	m := boot(t, libvirtOptions(t, "basic"))
	t.Logf("boot to agent ready through libvirt: %s (%s)", m.BootTime, m.Accel.Kind)

	r := run(t, m, "uname -r")
	assert.Equal(t, 0, r.Code)
	assert.Equal(t, m.Kernel.Meta.KernelRelease, strings.TrimSpace(string(r.Stdout)))
	for _, code := range []int{0, 1, 42, 255} {
		assert.Equal(t, code, run(t, m, fmt.Sprint("exit ", code)).Code)
	}
	r = run(t, m, "echo out; echo err >&2; exit 5")
	assert.Equal(t, "out\n", string(r.Stdout))
	assert.Equal(t, "err\n", string(r.Stderr))
	assert.Equal(t, 5, r.Code)

	// The disks and fw_cfg keys arrived: swap on the virtio disk (found by
	// serial), and the channel's authentication worked already.
	assert.Contains(t, string(run(t, m, "cat /proc/swaps").Stdout), "/dev/vd")
	// The console stream from libvirt reaches the lab's capture, from
	// the first line of the boot on.
	log := string(m.ConsoleLog())
	assert.Contains(t, log, "Linux version")
	assert.Contains(t, log, "ldtlab-agent: ready")

	require.Contains(t, domainsLeft(t, localURI), lv.NamePrefix+vmPrefix+"lv-basic")
	m.Close()
	assert.Empty(t, domainsLeft(t, localURI), "no domain left after Close")
}

func TestLibvirtInjectedPanicIsDetected(t *testing.T) {
	t.Setenv(lv.URIEnv, localURI)
	m := boot(t, libvirtOptions(t, "panic"))
	start := time.Now()
	_, err := m.Run(context.Background(), "echo panic > /sys/kernel/debug/labtest/trigger")
	var ce *vm.CrashError
	require.ErrorAs(t, err, &ce, "a guest panic must surface as a CrashError")
	assert.Equal(t, "panic", ce.Type)
	assert.Contains(t, strings.ToLower(ce.Title), "labtest")
	t.Logf("panic detected through libvirt in %s: %s", time.Since(start), ce.Title)
	// The whole report reached the console (the guest was let run on).
	assert.Contains(t, string(m.ConsoleLog()), "---[ end Kernel panic")
	m.Close()
	assert.Empty(t, domainsLeft(t, localURI))
}
