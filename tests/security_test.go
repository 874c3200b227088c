package tests

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"libvirt.org/go/libvirtxml"

	"ldtlab/orchestrator/channel"
	lv "ldtlab/orchestrator/vm/libvirt"
)

// nobodyUID is the unprivileged user the security test plays: any local
// account that is not root and in no group of the lab's.
const nobodyUID = 65534

// TestUnprivilegedUserReachesNothing plays a local user (uid 65534, no
// groups) against what `labctl setup --backend libvirt` leaves and against
// running guests of both backends: no libvirt connection over any
// transport, no gdbstub, no socket, no key, and no key on a command line
// or in a log such a user can read. Loopback is not a permission.
func TestUnprivilegedUserReachesNothing(t *testing.T) {
	u := newUnprivileged(t)

	t.Run("setup", func(t *testing.T) {
		// TestMain ran `labctl setup --backend libvirt` (setup.Libvirt).
		c, err := net.DialTimeout("tcp", "127.0.0.1:16509", 2*time.Second)
		if err == nil {
			c.Close()
		}
		assert.Error(t, err, "nothing listens on libvirtd's TCP port 127.0.0.1:16509")
		u.noLibvirt(t, "")
	})

	t.Run("qemu-guest-gdb", func(t *testing.T) {
		// The state directory is traversable by anyone, as a home
		// directory often is: only the VM directory's own mode protects
		// what is in it.
		state := u.dir(t, "st")
		c := cli{t: t, state: state}
		name := vmPrefix + "sec"
		t.Cleanup(func() {
			c.run("down", name)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			assert.True(t, waitGone(ctx, name), "QEMU of %s still running after down", name)
		})
		out := c.ok("up", "--gdb", "--no-build", name)
		t.Logf("labctl up --gdb:\n%s", out)
		m := regexp.MustCompile(`gdb (?:-q )?(\S+) -ex 'target remote ([^']+)'`).FindStringSubmatch(out)
		require.NotNil(t, m, "labctl up --gdb prints the gdb command line")
		gdbAddr := m[2]
		// The owner debugs the guest with exactly what was printed.
		if code, out := u.probeAs(t, 0, "gdb", gdbAddr); !assert.Equal(t, 0, code, "root reads the guest's registers at %s: %s", gdbAddr, out) {
			return
		}
		dir := filepath.Join(state, "vms", name)
		procs := vmProcs(state, name)
		qemu, sup := pidOf(procs, "qemu"), pidOf(procs, "supervisor")
		require.NotZero(t, qemu, "QEMU of %s runs: %v", name, procs)
		require.NotZero(t, sup, "supervisor of %s runs: %v", name, procs)

		u.cannot(t, "gdb", gdbAddr, "the gdbstub")
		u.noListener(t, qemu, "QEMU")
		u.noListener(t, sup, "the supervisor")
		u.noFileIn(t, dir)
		assertPrivateKeys(t, dir)
		u.noKeyOnCmdline(t, qemu, dir)
		u.noLibvirt(t, "")
	})

	t.Run("libvirt-guest", func(t *testing.T) {
		o := libvirtOptions(t, "sec")
		o.Dir = filepath.Join(u.dir(t, "lv"), "vm")
		mach := boot(t, o)
		domain := lv.NamePrefix + o.Name
		qemu := libvirtQEMU(t, domain)
		require.NotZero(t, qemu, "the QEMU process of %s", domain)

		u.noKeyOnCmdline(t, qemu, o.Dir)
		// libvirt writes the QEMU command line to its log.
		logPath := "/var/log/libvirt/qemu/" + domain + ".log"
		if b, err := os.ReadFile(logPath); assert.NoError(t, err) {
			assertNoKey(t, string(b), o.Dir, logPath)
		}
		// The live definition: what a read-only libvirt connection shows.
		xml := liveXML(t, domain)
		assertNoKey(t, xml, o.Dir, "the live domain XML")

		u.noListener(t, qemu, "QEMU")
		u.noFileIn(t, o.Dir)
		assertPrivateKeys(t, o.Dir)
		u.cannot(t, "read", logPath, "libvirt's QEMU log")
		// What QEMU has open (disk volumes, the console's pty) and what
		// the definition names on the host (fw_cfg files, sockets).
		for _, f := range qemuFiles(qemu) {
			u.cannot(t, "read", f, "a file QEMU has open")
		}
		for _, f := range domainPaths(t, xml) {
			op := "read"
			if st, err := os.Stat(f); err == nil && st.Mode()&fs.ModeSocket != 0 {
				op = "dial"
			}
			u.cannot(t, op, f, "a path in the live domain XML")
		}
		u.noLibvirt(t, domain)
		run(t, mach, "true") // the guest was up throughout
	})
}

// unprivileged runs probes as nobodyUID.
type unprivileged struct {
	base  string // 0755, removed at the end
	home  string // nobody's HOME, owned by it
	probe string // the probe binary, 0755
}

func newUnprivileged(t *testing.T) *unprivileged {
	t.Helper()
	// TMPDIR is the suite's private directory; these must be reachable by
	// the unprivileged user, so they live beside it.
	base, err := os.MkdirTemp(filepath.Dir(suiteTmp), "ldtlab-sec-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(base) })
	require.NoError(t, os.Chmod(base, 0o755))
	u := &unprivileged{base: base, home: filepath.Join(base, "home"), probe: filepath.Join(base, "probe")}
	require.NoError(t, os.Mkdir(u.home, 0o700))
	require.NoError(t, os.Chown(u.home, nobodyUID, nobodyUID))
	out, err := exec.Command("go", "build", "-o", u.probe, "./probe").CombinedOutput()
	require.NoError(t, err, "building the probe: %s", out)
	require.NoError(t, os.Chmod(u.probe, 0o755))
	return u
}

// dir makes a directory anyone may traverse.
func (u *unprivileged) dir(t *testing.T, name string) string {
	d := filepath.Join(u.base, name)
	require.NoError(t, os.Mkdir(d, 0o755))
	return d
}

// runAs runs a command as uid (0: as this test, root) with no groups and
// a minimal environment; it returns the combined output and exit status.
func (u *unprivileged) runAs(t *testing.T, uid int, name string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C", "HOME=" + u.home}
	if uid != 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid), Groups: []uint32{}}}
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s %v: %v", name, args, err)
	}
	return strings.TrimSpace(out.String()), code
}

func (u *unprivileged) probeAs(t *testing.T, uid int, op, target string) (int, string) {
	out, code := u.runAs(t, uid, u.probe, op, target)
	return code, out
}

// cannot asserts that the unprivileged user's probe fails.
func (u *unprivileged) cannot(t *testing.T, op, target, what string) {
	t.Helper()
	code, out := u.probeAs(t, nobodyUID, op, target)
	assert.NotEqual(t, 0, code, "uid %d reached %s: probe %s %s: %s", nobodyUID, what, op, target, out)
}

// noListener: no socket the process listens on lets the user in.
func (u *unprivileged) noListener(t *testing.T, pid int, who string) {
	t.Helper()
	for _, a := range listeners(t, pid) {
		u.cannot(t, "dial", a, who+"'s listening socket "+a)
	}
}

// noFileIn: nothing in dir (sockets included) opens for the user.
func (u *unprivileged) noFileIn(t *testing.T, dir string) {
	t.Helper()
	n := 0
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return nil
		}
		switch {
		case d.Type()&fs.ModeSocket != 0:
			u.cannot(t, "dial", p, "a socket of the VM")
		case d.Type().IsRegular():
			u.cannot(t, "read", p, "a file of the VM")
		}
		n++
		return nil
	})
	assert.Positive(t, n, "the VM directory %s has content", dir)
}

// noKeyOnCmdline: the process's command line (world-readable in /proc)
// carries none of the VM's private keys.
func (u *unprivileged) noKeyOnCmdline(t *testing.T, pid int, vmDir string) {
	t.Helper()
	code, out := u.probeAs(t, nobodyUID, "read", fmt.Sprintf("/proc/%d/cmdline", pid))
	require.Equal(t, 0, code, "a command line is world-readable: %s", out)
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	require.NoError(t, err)
	assertNoKey(t, string(bytes.ReplaceAll(b, []byte{0}, []byte{' '})), vmDir, fmt.Sprintf("/proc/%d/cmdline", pid))
}

// assertNoKey: text holds no line of the VM's private keys' bodies.
func assertNoKey(t *testing.T, text, vmDir, where string) {
	t.Helper()
	for _, k := range []string{channel.HostKeyFile, channel.ClientKeyFile} {
		b, err := os.ReadFile(filepath.Join(vmDir, "keys", k))
		require.NoError(t, err)
		for _, l := range strings.Split(string(b), "\n") {
			if len(l) < 16 || strings.HasPrefix(l, "-----") {
				continue
			}
			// Not assert.NotContains: its message would print the text.
			if !assert.False(t, strings.Contains(text, l), "%s shows the private key %s (its line %.12s…)", where, k, l) {
				return
			}
		}
	}
}

// assertPrivateKeys: the VM directory is 0700 and every key in it 0600.
func assertPrivateKeys(t *testing.T, vmDir string) {
	t.Helper()
	st, err := os.Stat(vmDir)
	require.NoError(t, err)
	assert.Equal(t, fs.FileMode(0o700), st.Mode().Perm(), "VM directory %s", vmDir)
	keys, err := filepath.Glob(filepath.Join(vmDir, "keys", "*"))
	require.NoError(t, err)
	require.NotEmpty(t, keys)
	for _, k := range keys {
		st, err := os.Stat(k)
		require.NoError(t, err)
		assert.Equal(t, fs.FileMode(0o600), st.Mode().Perm(), "key file %s", k)
	}
}

// noLibvirt: the user gets no connection to this machine's libvirtd over
// any transport: TCP on loopback (libvirt's port), the unix sockets
// (read-write and read-only), and SSH through the suite's loopback sshd
// (the user has no key). qemu:///session is not tried: it would start the
// user's own unprivileged daemon, which sees nothing of the system's.
// domain, if set, must not show up in anything that did connect.
func (u *unprivileged) noLibvirt(t *testing.T, domain string) {
	t.Helper()
	_, port, _ := net.SplitHostPort(suiteSSHD(t).addr)
	uris := []string{
		"qemu+tcp://127.0.0.1/system",
		"qemu+tcp://localhost/system",
		"qemu:///system",
		"qemu+ssh://root@127.0.0.1:" + port + "/system?no_tty=1&no_verify=1",
	}
	for _, uri := range uris {
		for _, ro := range []bool{false, true} {
			args := []string{"-c", uri}
			if ro {
				args = append([]string{"-r"}, args...)
			}
			for _, verb := range []string{"list --all", "pool-list --all"} {
				out, code := u.runAs(t, nobodyUID, "virsh", append(args, strings.Fields(verb)...)...)
				if !assert.NotEqual(t, 0, code, "uid %d: virsh %s %s connected:\n%s", nobodyUID, strings.Join(args, " "), verb, out) {
					if domain != "" {
						assert.NotContains(t, out, domain)
					}
					assert.NotContains(t, out, lv.PoolName+" ")
				}
			}
		}
	}
}

// listeners lists the addresses pid listens on: TCP (v4 and v6) as
// host:port, unix sockets as their path (@name for abstract ones).
func listeners(t *testing.T, pid int) []string {
	t.Helper()
	inodes := map[string]bool{}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	require.NoError(t, err)
	for _, fd := range fds {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	var out []string
	for _, f := range []string{"tcp", "tcp6"} {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, f))
		for _, l := range strings.Split(string(b), "\n")[1:] {
			x := strings.Fields(l)
			// sl local rem st tx:rx tr:when retr uid timeout inode
			if len(x) < 10 || x[3] != "0A" || !inodes[x[9]] {
				continue
			}
			h, p, _ := strings.Cut(x[1], ":")
			ip, _ := hex.DecodeString(h)
			for i := 0; i+4 <= len(ip); i += 4 { // little-endian words
				ip[i], ip[i+1], ip[i+2], ip[i+3] = ip[i+3], ip[i+2], ip[i+1], ip[i]
			}
			port, _ := strconv.ParseUint(p, 16, 16)
			out = append(out, net.JoinHostPort(net.IP(ip).String(), fmt.Sprint(port)))
		}
	}
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/net/unix", pid))
	for _, l := range strings.Split(string(b), "\n")[1:] {
		// Num RefCount Protocol Flags Type St Inode Path
		x := strings.Fields(l)
		if len(x) < 8 || x[3] != "00010000" || !inodes[x[6]] {
			continue
		}
		out = append(out, x[7])
	}
	return out
}

// libvirtQEMU finds the QEMU process libvirtd runs for domain.
func libvirtQEMU(t *testing.T, domain string) int {
	t.Helper()
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if strings.Contains(filepath.Base(args[0]), "qemu-system") && strings.Contains(string(b), "guest="+domain+",") {
			return pid
		}
	}
	return 0
}

// qemuFiles lists the regular files and terminals pid has open, other
// than the system's own (/dev/null, /dev/urandom…), libraries and pid
// files.
func qemuFiles(pid int) []string {
	var out []string
	seen := map[string]bool{}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err != nil || seen[l] || !strings.HasPrefix(l, "/") {
			continue
		}
		seen[l] = true
		if strings.HasPrefix(l, "/dev/pts/") {
			out = append(out, l)
			continue
		}
		// Pid files (libvirt's /run/libvirt/qemu/NAME.pid) are public.
		if st, err := os.Stat(l); err == nil && st.Mode().IsRegular() && !strings.HasPrefix(l, "/usr/") && !strings.HasSuffix(l, ".pid") {
			out = append(out, l)
		}
	}
	return out
}

// liveXML is the running domain's definition as libvirtd shows it.
func liveXML(t *testing.T, domain string) string {
	t.Helper()
	out, err := exec.Command("virsh", "-c", localURI, "dumpxml", domain).CombinedOutput()
	require.NoError(t, err, "virsh dumpxml %s: %s", domain, out)
	return string(out)
}

// domainPaths lists the host paths a live definition names: the
// console's pty, the channel's socket, fw_cfg files, disk sources.
func domainPaths(t *testing.T, x string) []string {
	t.Helper()
	var d libvirtxml.Domain
	require.NoError(t, d.Unmarshal(x))
	var out []string
	src := func(s *libvirtxml.DomainChardevSource) {
		switch {
		case s == nil:
		case s.Pty != nil && s.Pty.Path != "":
			out = append(out, s.Pty.Path)
		case s.UNIX != nil && s.UNIX.Path != "":
			out = append(out, s.UNIX.Path)
		}
	}
	if d.Devices != nil {
		for _, s := range d.Devices.Serials {
			src(s.Source)
		}
		for _, c := range d.Devices.Channels {
			src(c.Source)
		}
		for _, disk := range d.Devices.Disks {
			if disk.Source != nil && disk.Source.File != nil {
				out = append(out, disk.Source.File.File)
			}
		}
	}
	for _, si := range d.SysInfo {
		if si.FWCfg != nil {
			for _, e := range si.FWCfg.Entry {
				if e.File != "" {
					out = append(out, e.File)
				}
			}
		}
	}
	return out
}
