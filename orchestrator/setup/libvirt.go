package setup

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"ldtlab/internal/fileutil"
	"ldtlab/internal/lines"
	"ldtlab/internal/procutil"
)

// LibvirtPackages is what a local libvirt backend needs on top of Required.
var LibvirtPackages = []Package{
	{"libvirt-daemon-system", "libvirtd and its QEMU driver, for --backend libvirt"},
	// Never started by setup: the e2e suite runs its own sshd on loopback
	// as the far end of a qemu+ssh:// connection.
	{"openssh-server", "sshd, for the e2e test of qemu+ssh:// (run by the test on 127.0.0.1 only)"},
}

// LibvirtTCPAddr is where earlier versions of setup made the local
// libvirtd listen for qemu+tcp:// with auth_tcp "none". That listener gave
// every local user (loopback needs no privilege) full control of libvirtd,
// which runs QEMU with host disks: root. Setup now removes it wherever an
// earlier version left it, and opens no TCP port at all.
const LibvirtTCPAddr = "127.0.0.1:16509"

// Paths setup touches; variables so that tests can point them elsewhere.
var (
	libvirtdConf  = "/etc/libvirt/libvirtd.conf"
	libvirtSock   = "/run/libvirt/libvirt-sock"
	systemdRunDir = "/run/systemd/system"
	// Written by earlier versions (the TCP socket on loopback); removed.
	tcpSocketDrop = "/etc/systemd/system/libvirtd-tcp.socket.d/ldtlab.conf"
	// Under systemd the unix sockets are the socket units': the read-only
	// one is world-accessible by default.
	roSocketDrop = "/etc/systemd/system/libvirtd-ro.socket.d/ldtlab.conf"
)

// libvirtGroup may use libvirtd's unix sockets besides root.
const libvirtGroup = "libvirt"

// libvirtdSettings is the lab's part of libvirtd.conf: no TCP settings
// (the daemon is started without --listen and libvirtd-tcp.socket stays
// off), and both unix sockets reachable by root and the libvirt group
// only. libvirt's defaults leave the read-only socket open to everyone
// (0777, and polkit lets any user monitor), which shows every domain and
// pool; the read-write socket is protected by polkit alone.
var libvirtdSettings = []confSetting{
	{"unix_sock_group", `"` + libvirtGroup + `"`},
	{"unix_sock_ro_perms", `"0770"`},
	{"unix_sock_rw_perms", `"0770"`},
}

// tcpKeys are the settings earlier versions wrote to open the TCP listener.
var tcpKeys = []string{"listen_tls", "listen_tcp", "listen_addr", "auth_tcp"}

type confSetting struct{ key, value string }

const (
	confBegin = "# BEGIN ldtlab (labctl setup --backend libvirt; do not edit)"
	confEnd   = "# END ldtlab"
	// confDisabled marks a line of the administrator's that setup
	// commented out because the lab's block sets the same key.
	confDisabled = " # disabled by ldtlab, see below"
)

// applyConf returns conf with the lab's settings: any active assignment
// of those keys outside the lab's block is commented out (libvirt's
// parser would otherwise see a key twice) and the block is (re)written at
// the end. A line an earlier version disabled for a key the block no
// longer sets is given back. It also returns the keys the old block set
// that the new one does not. It is idempotent.
func applyConf(conf string, settings []confSetting) (string, []string) {
	isSet := func(key string) bool {
		for _, s := range settings {
			if s.key == key {
				return true
			}
		}
		return false
	}
	var out, dropped []string
	inBlock := false
	for _, line := range strings.Split(strings.TrimRight(conf, "\n"), "\n") {
		switch {
		case line == confBegin:
			inBlock = true
			continue
		case line == confEnd && inBlock:
			inBlock = false
			continue
		case inBlock:
			if k, _, ok := strings.Cut(line, "="); ok && !isSet(strings.TrimSpace(k)) {
				dropped = append(dropped, strings.TrimSpace(k))
			}
			continue
		}
		if orig, ok := strings.CutSuffix(line, confDisabled); ok && strings.HasPrefix(orig, "#") {
			if k, _, ok := strings.Cut(strings.TrimSpace(orig[1:]), "="); ok && !isSet(strings.TrimSpace(k)) {
				line = orig[1:]
			}
		}
		trimmed := strings.TrimSpace(line)
		if k, _, ok := strings.Cut(trimmed, "="); ok && isSet(strings.TrimSpace(k)) {
			line = "#" + line + confDisabled
		}
		out = append(out, line)
	}
	for len(out) > 0 && out[len(out)-1] == "" {
		out = out[:len(out)-1]
	}
	out = append(out, "", confBegin)
	for _, s := range settings {
		out = append(out, s.key+" = "+s.value)
	}
	out = append(out, confEnd)
	return strings.Join(out, "\n") + "\n", dropped
}

// Libvirt makes this host ready for --backend libvirt with a local
// daemon: the packages, the libvirt-qemu user QEMU runs as, libvirtd
// reachable through its unix sockets by root (and the libvirt group) only,
// no TCP listener, and libvirtd running (through systemd if this host
// boots with it, started directly otherwise). What earlier versions
// opened (the unauthenticated TCP listener on loopback: its libvirtd.conf
// settings, the systemd drop-in, a daemon started with --listen) is
// removed, and setup says so. It is idempotent; a running daemon is
// restarted only when its configuration changed or it still listens.
func Libvirt(log io.Writer) error {
	if err := ensurePackages(log, LibvirtPackages); err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		// Without root nothing below can be changed; a daemon that is
		// already running and reachable is all the lab needs.
		if reachable() == nil {
			return nil
		}
		return errors.New("libvirtd is not running and starting it needs root: run `labctl setup --backend libvirt` as root")
	}
	if err := ensureQEMUUser(log); err != nil {
		return err
	}
	if err := ensureGroup(log, libvirtGroup); err != nil {
		return err
	}
	old, err := os.ReadFile(libvirtdConf)
	if err != nil {
		return fmt.Errorf("reading libvirtd's configuration: %w", err)
	}
	changed := false
	if conf, dropped := applyConf(string(old), libvirtdSettings); conf != string(old) {
		if len(dropped) > 0 {
			fmt.Fprintf(log, "[setup] %s: removed the TCP listener an earlier ldtlab configured (%s; auth_tcp none let every local user control libvirtd)\n",
				libvirtdConf, strings.Join(dropped, ", "))
		}
		fmt.Fprintf(log, "[setup] %s: libvirtd's unix sockets for root and group %s only\n", libvirtdConf, libvirtGroup)
		if err := fileutil.WriteFileAtomic(libvirtdConf, []byte(conf), 0o644); err != nil {
			return fmt.Errorf("configuring libvirtd: %w", err)
		}
		changed = true
	}
	if isDir(systemdRunDir) {
		err = startSystemd(log, changed)
	} else {
		err = startDirect(log, changed)
	}
	if err != nil {
		return err
	}
	if err := waitReachable(30 * time.Second); err != nil {
		return err
	}
	if c, err := net.DialTimeout("tcp", LibvirtTCPAddr, time.Second); err == nil {
		c.Close()
		fmt.Fprintf(log, "[setup] WARNING: something still listens on %s, libvirtd's TCP port, and setup did not open it: "+
			"if it is libvirtd with auth_tcp \"none\", every local user controls it (and so is root)\n", LibvirtTCPAddr)
	}
	fmt.Fprintf(log, "[setup] libvirtd is running (unix socket %s only, no TCP listener)\n", libvirtSock)
	return nil
}

// ensureGroup creates a system group the package's postinst normally
// creates (stripped images sometimes lack it); libvirtd refuses to start
// with a unix_sock_group that does not exist.
func ensureGroup(log io.Writer, name string) error {
	if _, err := user.LookupGroup(name); err == nil {
		return nil
	}
	if err := runLogged(log, "groupadd", "--system", name); err != nil {
		return fmt.Errorf("creating group %s for libvirtd's sockets: %w", name, err)
	}
	return nil
}

// ensureQEMUUser creates the user libvirt's QEMU driver runs guests as
// (qemu.conf's default on Debian) when the image lacks it: the package's
// postinst creates it, but stripped images sometimes drop its passwd entry.
func ensureQEMUUser(log io.Writer) error {
	if _, err := user.Lookup("libvirt-qemu"); err == nil {
		return nil
	}
	if _, err := user.LookupGroup("kvm"); err != nil {
		if err := runLogged(log, "groupadd", "--system", "kvm"); err != nil {
			return fmt.Errorf("creating group kvm for libvirt-qemu: %w", err)
		}
	}
	if err := runLogged(log, "useradd", "--system", "--gid", "kvm", "--home-dir", "/var/lib/libvirt",
		"--no-create-home", "--shell", "/usr/sbin/nologin", "libvirt-qemu"); err != nil {
		return fmt.Errorf("creating user libvirt-qemu: %w", err)
	}
	return nil
}

// startSystemd: with socket activation the listeners are socket units'.
// An earlier version's libvirtd-tcp.socket (with its loopback drop-in) is
// disabled and the drop-in removed; the read-only socket, world-readable
// by default, gets the same mode and group as libvirtd.conf's.
func startSystemd(log io.Writer, changed bool) error {
	var steps [][]string
	if _, err := os.Stat(tcpSocketDrop); err == nil {
		fmt.Fprintf(log, "[setup] removing the TCP listener an earlier ldtlab set up: %s, libvirtd-tcp.socket (auth_tcp none on %s)\n", tcpSocketDrop, LibvirtTCPAddr)
		if err := os.Remove(tcpSocketDrop); err != nil {
			return fmt.Errorf("removing %s: %w", tcpSocketDrop, err)
		}
		os.Remove(filepath.Dir(tcpSocketDrop)) // only if empty
		steps = append(steps, []string{"systemctl", "disable", "--now", "libvirtd-tcp.socket"})
		changed = true
	}
	drop := "[Socket]\n# ldtlab: root and group " + libvirtGroup + " only\nSocketMode=0660\nSocketGroup=" + libvirtGroup + "\n"
	if old, _ := os.ReadFile(roSocketDrop); string(old) != drop {
		if err := os.MkdirAll(filepath.Dir(roSocketDrop), 0o755); err != nil {
			return fmt.Errorf("configuring libvirtd-ro.socket: %w", err)
		}
		if err := fileutil.WriteFileAtomic(roSocketDrop, []byte(drop), 0o644); err != nil {
			return fmt.Errorf("configuring libvirtd-ro.socket: %w", err)
		}
		changed = true
	}
	steps = append([][]string{{"systemctl", "daemon-reload"}}, steps...)
	if changed {
		// The sockets must be re-bound and the daemon must re-read its
		// configuration.
		steps = append(steps, []string{"systemctl", "stop", "libvirtd.service", "libvirtd-ro.socket"})
	}
	steps = append(steps, []string{"systemctl", "enable", "--now", "virtlogd.socket", "libvirtd.socket", "libvirtd-ro.socket"},
		[]string{"systemctl", "start", "libvirtd.service"})
	for _, s := range steps {
		if err := runLogged(log, s...); err != nil {
			return err
		}
	}
	return nil
}

// startDirect runs the daemons without an init system (containers, CI
// images): virtlogd, which libvirt's QEMU driver hands guest output to, and
// libvirtd without --listen, so that it opens no TCP port. A libvirtd an
// earlier version started with --listen is restarted without it.
func startDirect(log io.Writer, changed bool) error {
	if !daemonRunning("/run/virtlogd.pid") {
		if err := runLogged(log, "virtlogd", "--daemon"); err != nil {
			return err
		}
	}
	if daemonRunning("/run/libvirtd.pid") {
		listens := hasListenFlag(readPid("/run/libvirtd.pid"))
		if !changed && !listens {
			return nil
		}
		if listens {
			fmt.Fprintf(log, "[setup] restarting libvirtd without the TCP listener an earlier ldtlab started it with (--listen, auth_tcp none on %s)\n", LibvirtTCPAddr)
		} else {
			fmt.Fprintln(log, "[setup] restarting libvirtd for its new configuration")
		}
		if err := stopPidfile("/run/libvirtd.pid", 15*time.Second); err != nil {
			return err
		}
	}
	return runLogged(log, "libvirtd", "--daemon")
}

// hasListenFlag says whether the process was started with libvirtd's
// --listen (-l): TCP/TLS listeners.
func hasListenFlag(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	return listenFlag(strings.Split(strings.TrimRight(string(b), "\x00"), "\x00"))
}

func listenFlag(argv []string) bool {
	for _, a := range argv[min(1, len(argv)):] {
		if a == "--listen" || a == "-l" {
			return true
		}
		if len(a) < 2 || a[0] != '-' || a[1] == '-' {
			continue
		}
		// Bundled short options (-dl); -f, -p and -t take the rest.
		for _, c := range a[1:] {
			if c == 'l' {
				return true
			}
			if strings.ContainsRune("fpt", c) {
				break
			}
		}
	}
	return false
}

// daemonRunning reads a libvirt pid file and checks that the process lives.
func daemonRunning(pidfile string) bool {
	pid := readPid(pidfile)
	if pid <= 0 {
		return false
	}
	p, err := os.FindProcess(pid)
	return err == nil && p.Signal(syscall.Signal(0)) == nil
}

func readPid(pidfile string) int {
	b, err := os.ReadFile(pidfile)
	if err != nil {
		return 0
	}
	var pid int
	fmt.Sscan(strings.TrimSpace(string(b)), &pid)
	return pid
}

func stopPidfile(pidfile string, wait time.Duration) error {
	pid := readPid(pidfile)
	if pid <= 0 {
		return nil
	}
	// No SIGKILL: a libvirtd that does not stop is reported, not killed
	// in the middle of writing its state.
	if left := procutil.TermWait([]int{pid}, []int{pid}, wait); len(left) > 0 {
		return fmt.Errorf("libvirtd (pid %d) did not stop within %s", pid, wait)
	}
	return nil
}

// reachable checks that libvirtd answers on its unix socket.
func reachable() error {
	c, err := net.DialTimeout("unix", libvirtSock, time.Second)
	if err != nil {
		return fmt.Errorf("libvirtd not reachable on %s: %w", libvirtSock, err)
	}
	c.Close()
	return nil
}

func waitReachable(wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		err := reachable()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func runLogged(log io.Writer, args ...string) error {
	fmt.Fprintf(log, "[setup] %s\n", strings.Join(args, " "))
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v\n%s", strings.Join(args, " "), err, lines.Last(string(out), 20))
	}
	return nil
}

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}
