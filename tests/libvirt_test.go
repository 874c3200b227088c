package tests

import (
	"context"
	"fmt"
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

	"ldtlab/orchestrator/accel"
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
	o.Connect = localURI
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

// TestLibvirtTwoHostsFanOut treats two connections to this machine's
// libvirtd as two hosts — the unix socket and TCP on loopback, the way a
// remote host is reached — and fans a short run out over a guest on each.
// The initramfs is a fresh artifact (the cached one plus trailing cpio
// padding, which the kernel skips), so it must be uploaded, and that
// happens through the TCP connection.
func TestLibvirtTwoHostsFanOut(t *testing.T) {
	o := libvirtOptions(t, "fan")
	kb, img, err := lab.Prepare(context.Background(), o)
	require.NoError(t, err)
	fresh := *img
	fresh.Initramfs = filepath.Join(t.TempDir(), "initramfs.cpio")
	b, err := os.ReadFile(img.Initramfs)
	require.NoError(t, err)
	// cpio padding must be NULs: a fresh hash comes from its length.
	pad := make([]byte, 512*(1+int(time.Now().UnixNano()%4096)))
	require.NoError(t, os.WriteFile(fresh.Initramfs, append(b, pad...), 0o600))

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	in, err := lv.ArtifactInPool(ctx, remoteURI, "initrd", fresh.Initramfs, false)
	require.NoError(t, err)
	require.False(t, in, "the fresh initramfs must not be in the pool yet")
	t.Cleanup(func() { lv.ArtifactInPool(context.Background(), remoteURI, "initrd", fresh.Initramfs, true) })

	hosts := []string{remoteURI, localURI}
	machines := make([]*lab.Machine, len(hosts))
	for i, uri := range hosts {
		ho := libvirtOptions(t, fmt.Sprintf("fan%d", i))
		ho.Connect = uri
		start := time.Now()
		m, err := lab.BootBuilt(ctx, ho, kb, &fresh)
		require.NoError(t, err, "booting on %s", uri)
		t.Cleanup(func() { m.Close() })
		machines[i] = m
		t.Logf("%s: booted in %s (agent ready %s)", uri, time.Since(start).Round(time.Millisecond), m.BootTime.Round(time.Millisecond))
		if i == 0 {
			in, err := lv.ArtifactInPool(ctx, remoteURI, "initrd", fresh.Initramfs, false)
			require.NoError(t, err)
			require.True(t, in, "the first boot (over TCP) uploaded the initramfs")
		}
	}
	require.Len(t, domainsLeft(t, localURI), 2, "both domains run on the one daemon behind both connections")

	// The fan-out: rounds spread over both hosts, all at once.
	const rounds = 6
	var wg sync.WaitGroup
	codes := make([]int, rounds)
	outs := make([]string, rounds)
	errs := make([]error, rounds)
	for r := range rounds {
		wg.Go(func() {
			m := machines[r%len(machines)]
			res, err := m.Run(ctx, fmt.Sprintf("head -c 1M /dev/urandom | sha256sum >/dev/null && cat /proc/sys/kernel/hostname && exit %d", r))
			codes[r], outs[r], errs[r] = res.Code, strings.TrimSpace(string(res.Stdout)), err
		})
	}
	wg.Wait()
	for r := range rounds {
		require.NoError(t, errs[r], "round %d", r)
		assert.Equal(t, r, codes[r], "round %d exit status", r)
		assert.Equal(t, fmt.Sprintf("%slv-fan%d", vmPrefix, r%len(machines)), outs[r], "round %d ran on its host's guest", r)
	}
	for _, m := range machines {
		m.Close()
	}
	assert.Empty(t, domainsLeft(t, localURI), "no domain left on either host")
}

// TestLibvirtPowerdown: an ACPI power-off through libvirt ends the domain
// cleanly (a paused domain is a hang: TestHungGuestIsDetected).
func TestLibvirtPowerdown(t *testing.T) {
	t.Run("powerdown", func(t *testing.T) {
		m := boot(t, libvirtOptions(t, "off"))
		require.NoError(t, m.Shutdown(context.Background()))
		<-m.Instance().Done()
		assert.Contains(t, m.ExitReason(), "guest powered off")
		assert.Empty(t, domainsLeft(t, localURI))
	})
}

// TestLibvirtBackendHost: what the backend says about its host, through
// the remote-style connection, matches this machine.
func TestLibvirtBackendHost(t *testing.T) {
	b, err := vm.Open("libvirt", vm.BackendConfig{Connect: remoteURI})
	require.NoError(t, err)
	defer b.Close()
	assert.Equal(t, "libvirt", b.Name())
	c, err := b.Capacity()
	require.NoError(t, err)
	assert.Equal(t, onlineCPUs(t), c.CPUs, "libvirt counts the host's online CPUs (not this process's affinity)")
	assert.Positive(t, c.MemoryMiB)
	t.Logf("libvirt host: %d CPUs, %d MiB free", c.CPUs, c.MemoryMiB)
	// The loopback host is this machine: the lab's own probe decides,
	// whatever libvirt's domain capabilities claim about /dev/kvm, on this
	// machine and on each kind of machine the lab must work on.
	offers := lv.OffersKVM(context.Background(), localURI)
	for _, h := range append([]accel.Host{""}, accel.Hosts...) {
		name := string(h)
		if h == "" {
			name = "this machine"
		}
		t.Run(name, func(t *testing.T) {
			if h != "" {
				simulateHost(t, h)
			}
			want, wantErr := accel.ResolveHost("auto")
			got, err := b.Accel("auto")
			assert.Equal(t, wantErr, err)
			if want.Kind == accel.KVM && offers != nil {
				// Only a KVM the probe found usable is vetoed by libvirt.
				assert.Equal(t, accel.Choice{Kind: accel.TCG, Reason: "tcg: libvirt host has no kvm domain type"}, got)
			} else {
				assert.Equal(t, want, got)
			}
			t.Logf("accelerator: %s (libvirt offers kvm: %v)", got.Reason, offers == nil)
		})
	}

	_, err = vm.Open("libvirt", vm.BackendConfig{Connect: "qemu+tcp://127.0.0.1:1/system"})
	require.Error(t, err, "nothing listens on port 1")
	assert.Contains(t, err.Error(), "connecting to libvirtd at qemu+tcp://127.0.0.1:1/system")
}

// startSSHD runs an sshd on loopback as the far end of qemu+ssh://: its
// own host key, one authorized client key (both 0600, per test), local
// forwarding on (OpenSSH permits a socket path only where it permits local
// TCP forwarding), nothing else. It returns the libvirt URI to this
// machine's daemon through it.
func startSSHD(t *testing.T) string {
	t.Helper()
	sshd, err := exec.LookPath("sshd")
	if err != nil {
		sshd = "/usr/sbin/sshd"
	}
	require.FileExists(t, sshd, "sshd (Debian package openssh-server; `labctl setup --backend libvirt` installs it)")
	dir := t.TempDir()
	for _, k := range []string{"host_key", "id_ed25519"} {
		out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ldtlab-e2e", "-f", filepath.Join(dir, k)).CombinedOutput()
		require.NoError(t, err, "ssh-keygen: %s", out)
	}
	pub, err := os.ReadFile(filepath.Join(dir, "id_ed25519.pub"))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "authorized_keys"), pub, 0o600))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	l.Close()
	cfg := filepath.Join(dir, "sshd_config")
	require.NoError(t, os.WriteFile(cfg, []byte(fmt.Sprintf(`ListenAddress %s
HostKey %s/host_key
AuthorizedKeysFile %s/authorized_keys
PidFile %s/sshd.pid
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowStreamLocalForwarding yes
AllowTcpForwarding local
X11Forwarding no
`, addr, dir, dir, dir)), 0o600))
	require.NoError(t, os.MkdirAll("/run/sshd", 0o755)) // privilege separation
	cmd := exec.Command(sshd, "-D", "-e", "-f", cfg)
	var log strings.Builder
	cmd.Stdout, cmd.Stderr = &log, &log
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("sshd log:\n%s", log.String())
		}
	})
	require.Eventually(t, func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, 10*time.Second, 50*time.Millisecond, "sshd listening on %s", addr)
	hostPub, err := os.ReadFile(filepath.Join(dir, "host_key.pub"))
	require.NoError(t, err)
	_, port, _ := net.SplitHostPort(addr)
	known := filepath.Join(dir, "known_hosts")
	require.NoError(t, os.WriteFile(known, []byte("[127.0.0.1]:"+port+" "+string(hostPub)), 0o600))
	return fmt.Sprintf("qemu+ssh://root@%s/system?keyfile=%s&known_hosts=%s", addr, filepath.Join(dir, "id_ed25519"), known)
}

// TestLibvirtOverSSH: the same guest through qemu+ssh:// — libvirt's RPC,
// the console and the agent channel all forwarded over a real sshd — and
// nothing left behind.
func TestLibvirtOverSSH(t *testing.T) {
	uri := startSSHD(t)
	o := libvirtOptions(t, "ssh")
	o.Connect = uri
	m := boot(t, o)
	t.Logf("booted through %s in %s (%s)", strings.SplitN(uri, "?", 2)[0], m.BootTime, m.Accel.Kind)
	r := run(t, m, "uname -r")
	assert.Equal(t, m.Kernel.Meta.KernelRelease, strings.TrimSpace(string(r.Stdout)))
	assert.Equal(t, 7, run(t, m, "exit 7").Code)
	assert.Contains(t, string(m.ConsoleLog()), "ldtlab-agent: ready", "the console stream came through SSH")
	require.Contains(t, domainsLeft(t, localURI), lv.NamePrefix+vmPrefix+"lv-ssh")
	m.Close()
	assert.Empty(t, domainsLeft(t, localURI), "no domain left after Close")
}
