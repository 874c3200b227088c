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

	"ldtlab/internal/lines"
)

// LibvirtPackages is what a local libvirt backend needs on top of Required.
var LibvirtPackages = []Package{
	{"libvirt-daemon-system", "libvirtd and its QEMU driver, for --backend libvirt"},
	// Never started by setup: the e2e suite runs its own sshd on loopback
	// as the far end of a qemu+ssh:// connection.
	{"openssh-server", "sshd, for the e2e test of qemu+ssh:// (run by the test on 127.0.0.1 only)"},
}

// LibvirtTCPAddr is where the local libvirtd listens for qemu+tcp:// (the
// remote-style connection the e2e suite fans out over). Loopback only.
const LibvirtTCPAddr = "127.0.0.1:16509"

// Paths setup touches; variables so that tests can point them elsewhere.
var (
	libvirtdConf  = "/etc/libvirt/libvirtd.conf"
	libvirtSock   = "/run/libvirt/libvirt-sock"
	systemdRunDir = "/run/systemd/system"
	tcpSocketDrop = "/etc/systemd/system/libvirtd-tcp.socket.d/ldtlab.conf"
)

// libvirtdSettings is the lab's part of libvirtd.conf.
//
// The TCP listener exists only so that tests can use a remote-style
// connection (qemu+tcp://127.0.0.1/system) to this machine's daemon.
// auth_tcp = "none" gives whoever reaches the port full control of libvirt,
// i.e. root: acceptable only because listen_addr is 127.0.0.1, which only
// local processes reach — and those could use the root-only unix socket
// anyway if they were root. Never widen listen_addr with auth_tcp none.
// TLS stays off (it needs certificates and nothing here uses it).
// qemu:///system itself goes through the unix socket.
var libvirtdSettings = []confSetting{
	{"listen_tls", "0"},
	{"listen_tcp", "1"},
	{"listen_addr", `"127.0.0.1"`},
	{"auth_tcp", `"none"`},
}

type confSetting struct{ key, value string }

const (
	confBegin = "# BEGIN ldtlab (labctl setup --backend libvirt; do not edit)"
	confEnd   = "# END ldtlab"
)

// applyConf returns conf with the lab's settings: any active assignment
// of those keys outside the lab's block is commented out (libvirt's
// parser would otherwise see a key twice) and the block is (re)written at
// the end. It is idempotent.
func applyConf(conf string, settings []confSetting) string {
	var out []string
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
			continue
		}
		trimmed := strings.TrimSpace(line)
		for _, s := range settings {
			if k, _, ok := strings.Cut(trimmed, "="); ok && strings.TrimSpace(k) == s.key {
				line = "#" + line + " # disabled by ldtlab, see below"
				break
			}
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
	return strings.Join(out, "\n") + "\n"
}

// Libvirt makes this host ready for --backend libvirt with a local
// daemon: the packages, the libvirt-qemu user QEMU runs as, libvirtd
// configured to listen on loopback only, and libvirtd running (through
// systemd if this host boots with it, started directly otherwise).
// It is idempotent; a running daemon is restarted only when the
// configuration changed.
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
	old, err := os.ReadFile(libvirtdConf)
	if err != nil {
		return fmt.Errorf("reading libvirtd's configuration: %w", err)
	}
	changed := false
	if conf := applyConf(string(old), libvirtdSettings); conf != string(old) {
		fmt.Fprintf(log, "[setup] %s: libvirtd listens on %s only (auth_tcp none, loopback)\n", libvirtdConf, LibvirtTCPAddr)
		if err := writeFileAtomic(libvirtdConf, []byte(conf), 0o644); err != nil {
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
	fmt.Fprintf(log, "[setup] libvirtd is running (unix %s, tcp %s)\n", libvirtSock, LibvirtTCPAddr)
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

// startSystemd: with socket activation the TCP port comes from
// libvirtd-tcp.socket, not from listen_addr, and its default listens on
// every address; the drop-in pins it to loopback.
func startSystemd(log io.Writer, changed bool) error {
	drop := "[Socket]\n# ldtlab: loopback only (auth_tcp is none)\nListenStream=\nListenStream=" + LibvirtTCPAddr + "\n"
	if old, _ := os.ReadFile(tcpSocketDrop); string(old) != drop {
		if err := os.MkdirAll(filepath.Dir(tcpSocketDrop), 0o755); err != nil {
			return fmt.Errorf("configuring libvirtd-tcp.socket: %w", err)
		}
		if err := writeFileAtomic(tcpSocketDrop, []byte(drop), 0o644); err != nil {
			return fmt.Errorf("configuring libvirtd-tcp.socket: %w", err)
		}
		changed = true
	}
	steps := [][]string{{"systemctl", "daemon-reload"}}
	if changed {
		// The sockets must be re-bound and the daemon must re-read its
		// configuration.
		steps = append(steps, []string{"systemctl", "stop", "libvirtd.service", "libvirtd-tcp.socket"})
	}
	steps = append(steps, []string{"systemctl", "enable", "--now", "virtlogd.socket", "libvirtd.socket", "libvirtd-tcp.socket"},
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
// libvirtd with --listen so that it opens the TCP port itself.
func startDirect(log io.Writer, changed bool) error {
	if !daemonRunning("/run/virtlogd.pid") {
		if err := runLogged(log, "virtlogd", "--daemon"); err != nil {
			return err
		}
	}
	if daemonRunning("/run/libvirtd.pid") {
		if !changed {
			return nil
		}
		fmt.Fprintln(log, "[setup] restarting libvirtd for its new configuration")
		if err := stopPidfile("/run/libvirtd.pid", 15*time.Second); err != nil {
			return err
		}
	}
	return runLogged(log, "libvirtd", "--daemon", "--listen")
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
	p, err := os.FindProcess(pid)
	if err != nil || pid <= 0 {
		return nil
	}
	p.Signal(syscall.SIGTERM)
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		if p.Signal(syscall.Signal(0)) != nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("libvirtd (pid %d) did not stop within %s", pid, wait)
}

// reachable checks both ways in: the unix socket and the loopback port.
func reachable() error {
	for _, a := range [][2]string{{"unix", libvirtSock}, {"tcp", LibvirtTCPAddr}} {
		c, err := net.DialTimeout(a[0], a[1], time.Second)
		if err != nil {
			return fmt.Errorf("libvirtd not reachable on %s %s: %w", a[0], a[1], err)
		}
		c.Close()
	}
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

func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp := path + ".ldtlab-tmp"
	if err := os.WriteFile(tmp, data, perm); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}
