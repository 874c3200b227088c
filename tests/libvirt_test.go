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
	"syscall"
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
// socket (qemu:///system) and, for the remote-style tests, over SSH
// through the suite's loopback sshd (remoteURI). libvirtd has no TCP
// listener: with auth_tcp none it was root for every local user.
const localURI = "qemu:///system"

// remoteURI reaches this machine's libvirtd the way a remote host is
// reached: qemu+ssh:// through the suite's sshd, key-authenticated.
func remoteURI(t testing.TB) string { return suiteSSHD(t).uri }

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
// libvirtd as two hosts — the unix socket and SSH through the suite's
// loopback sshd, the way a remote host is reached — and fans a short run
// out over a guest on each. The initramfs is a fresh artifact (the cached
// one plus trailing cpio padding, which the kernel skips), so it must be
// uploaded, and that happens through the SSH connection.
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

	// Two boots (the first uploads the initramfs through SSH, encrypted)
	// and the rounds; a TCG boot alone takes over a minute on a loaded
	// host.
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	remote := remoteURI(t)
	in, err := lv.ArtifactInPool(ctx, remote, "initrd", fresh.Initramfs, false)
	require.NoError(t, err)
	require.False(t, in, "the fresh initramfs must not be in the pool yet")
	t.Cleanup(func() { lv.ArtifactInPool(context.Background(), remote, "initrd", fresh.Initramfs, true) })

	hosts := []string{remote, localURI}
	machines := make([]*lab.Machine, len(hosts))
	for i, uri := range hosts {
		ho := libvirtOptions(t, fmt.Sprintf("fan%d", i))
		ho.Connect = uri
		start := time.Now()
		m, err := lab.BootBuilt(ctx, ho, kb, &fresh)
		require.NoError(t, err, "booting on %s", uri)
		t.Cleanup(func() { m.Close() })
		machines[i] = m
		t.Logf("%s: booted in %s (agent ready %s)", strings.SplitN(uri, "?", 2)[0], time.Since(start).Round(time.Millisecond), m.BootTime.Round(time.Millisecond))
		if i == 0 {
			in, err := lv.ArtifactInPool(ctx, remote, "initrd", fresh.Initramfs, false)
			require.NoError(t, err)
			require.True(t, in, "the first boot (over SSH) uploaded the initramfs")
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
	b, err := vm.Open("libvirt", vm.BackendConfig{Connect: remoteURI(t)})
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

// sshdServer is an sshd on loopback as the far end of qemu+ssh://: its
// own host key, one authorized client key (both 0600, in a private
// directory), local forwarding on (OpenSSH permits a socket path only
// where it permits local TCP forwarding), nothing else. Its address is
// reachable by every local user; only the key gets in.
type sshdServer struct {
	addr string // 127.0.0.1:port
	uri  string // qemu+ssh:// to this machine's libvirtd through it
	cmd  *exec.Cmd
	log  *strings.Builder
	wait chan struct{}
}

func (s *sshdServer) stop() {
	s.cmd.Process.Kill()
	<-s.wait
}

// startSSHDIn starts an sshd whose keys and configuration live in dir
// (private to this user).
func startSSHDIn(dir string) (*sshdServer, error) {
	sshd, err := exec.LookPath("sshd")
	if err != nil {
		sshd = "/usr/sbin/sshd"
	}
	if _, err := os.Stat(sshd); err != nil {
		return nil, fmt.Errorf("sshd (Debian package openssh-server; `labctl setup --backend libvirt` installs it): %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, err
	}
	for _, k := range []string{"host_key", "id_ed25519"} {
		out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ldtlab-e2e", "-f", filepath.Join(dir, k)).CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("ssh-keygen: %v: %s", err, out)
		}
	}
	pub, err := os.ReadFile(filepath.Join(dir, "id_ed25519.pub"))
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), pub, 0o600); err != nil {
		return nil, err
	}
	// The port is picked, then bound by sshd: a race with another
	// process taking it meanwhile shows as sshd not listening below.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := l.Addr().String()
	l.Close()
	cfg := filepath.Join(dir, "sshd_config")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`ListenAddress %s
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
`, addr, dir, dir, dir)), 0o600); err != nil {
		return nil, err
	}
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil { // privilege separation
		return nil, err
	}
	s := &sshdServer{addr: addr, log: &strings.Builder{}, wait: make(chan struct{})}
	s.cmd = exec.Command(sshd, "-D", "-e", "-f", cfg)
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	// It dies with the suite, even when go test's -timeout kills it.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { s.cmd.Wait(); close(s.wait) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			s.stop()
			return nil, fmt.Errorf("sshd not listening on %s: %v\n%s", addr, err, s.log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	hostPub, err := os.ReadFile(filepath.Join(dir, "host_key.pub"))
	if err != nil {
		s.stop()
		return nil, err
	}
	_, port, _ := net.SplitHostPort(addr)
	known := filepath.Join(dir, "known_hosts")
	if err := os.WriteFile(known, []byte("[127.0.0.1]:"+port+" "+string(hostPub)), 0o600); err != nil {
		s.stop()
		return nil, err
	}
	s.uri = fmt.Sprintf("qemu+ssh://root@%s/system?keyfile=%s&known_hosts=%s", addr, filepath.Join(dir, "id_ed25519"), known)
	return s, nil
}

// The suite's loopback sshd: the far end of every qemu+ssh:// connection
// the suite makes to this machine's libvirtd (the remote-style path),
// with keys of its own; started on first use, stopped by TestMain.
var (
	sshdOnce sync.Once
	sshdRun  *sshdServer
	sshdErr  error
)

func suiteSSHD(t testing.TB) *sshdServer {
	t.Helper()
	sshdOnce.Do(func() {
		dir, err := os.MkdirTemp(suiteTmp, "sshd-")
		if err != nil {
			sshdErr = err
			return
		}
		sshdRun, sshdErr = startSSHDIn(dir)
	})
	require.NoError(t, sshdErr, "starting the suite's loopback sshd")
	return sshdRun
}

// stopSuiteSSHD ends the suite's sshd, if it was started.
func stopSuiteSSHD() {
	if sshdRun != nil {
		sshdRun.stop()
	}
}

// startSSHD is an sshd of the test's own (per-test host and client keys),
// stopped when the test ends; it returns the libvirt URI through it.
func startSSHD(t *testing.T) string {
	t.Helper()
	s, err := startSSHDIn(t.TempDir())
	require.NoError(t, err)
	t.Cleanup(func() {
		s.stop()
		if t.Failed() {
			t.Logf("sshd log:\n%s", s.log.String())
		}
	})
	return s.uri
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
