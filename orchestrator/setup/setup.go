// Package setup makes sure the host has what the lab needs, from Debian's
// packages only. It is idempotent and costs one dpkg-query when nothing is
// missing.
package setup

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"

	"ldtlab/internal/lines"
)

// Package is one Debian package and why the lab needs it.
type Package struct {
	Name string
	Why  string
}

// Required lists every package the lab uses.
var Required = []Package{
	{"qemu-system-x86", "runs the guests (qemu-system-x86_64)"},
	{"busybox-static", "the guest's userland"},
	{"linux-source-6.12", "the kernel source tarball"},
	{"build-essential", "gcc and make for the kernel; its gcov maps the coverage kernel's counters (labctl coverage)"},
	{"bc", "kernel build"},
	{"bison", "kernel build (kconfig)"},
	{"flex", "kernel build (kconfig)"},
	{"libelf-dev", "kernel build (objtool)"},
	{"libssl-dev", "kernel build (certificates, sign-file)"},
	{"kmod", "depmod for modules_install"},
	{"xz-utils", "unpacking the source tarball"},
	{"patch", "applying kmod/patches"},
	{"rsync", "kernel header installation for the mm selftests"},
	{"libnuma-dev", "the mm selftest migration (static libnuma)"},
	{"redis-server", "the checkpoint oracle's real-world target"},
	{"redis-tools", "redis-benchmark, the checkpoint oracle's load"},
	{"criu", "dump and restore of redis in the migration oracle (labctl migrate)"},
	{"openssh-client", "ssh(1) through `labctl ssh-config`"},
	{"tmux", "the e2e test that drives `labctl shell` through a real terminal"},
	{"gdb", "labctl up --gdb and vmcores from labctl dump (the kernel's lx- scripts need its Python)"},
}

// Missing returns the required packages that are not installed.
func Missing(pkgs []Package) ([]Package, error) {
	names := make([]string, len(pkgs))
	for i, p := range pkgs {
		names[i] = p.Name
	}
	args := append([]string{"-W", "-f=${Package} ${db:Status-Abbrev}\n"}, names...)
	// dpkg-query exits 1 when some package is unknown; its output still
	// lists the known ones.
	out, _ := exec.Command("dpkg-query", args...).Output()
	installed := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && strings.HasPrefix(f[1], "ii") {
			installed[strings.SplitN(f[0], ":", 2)[0]] = true
		}
	}
	var missing []Package
	for _, p := range pkgs {
		if !installed[p.Name] {
			missing = append(missing, p)
		}
	}
	return missing, nil
}

// Ensure installs missing packages with apt-get (as root, non-interactive).
// Without root it fails naming the packages and the command to run.
func Ensure(log io.Writer) error { return ensurePackages(log, Required) }

func ensurePackages(log io.Writer, pkgs []Package) error {
	if _, err := exec.LookPath("dpkg-query"); err != nil {
		return fmt.Errorf("this lab needs a Debian-based host (dpkg-query not found); install by hand: %s", names(pkgs))
	}
	missing, err := Missing(pkgs)
	if err != nil {
		return err
	}
	if len(missing) == 0 {
		fmt.Fprintf(log, "[setup] all required Debian packages are installed (%d checked)\n", len(pkgs))
		return nil
	}
	for _, p := range missing {
		fmt.Fprintf(log, "[setup] missing %s (%s)\n", p.Name, p.Why)
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("missing Debian packages: %s; run as root: apt-get install %s", names(missing), names(missing))
	}
	run := func(args ...string) error {
		fmt.Fprintf(log, "[setup] %s\n", strings.Join(args, " "))
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		cmd.Stdin = nil
		var buf bytes.Buffer
		cmd.Stdout, cmd.Stderr = &buf, &buf
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("%s: %v\n%s", strings.Join(args, " "), err, lines.Last(buf.String(), 20))
		}
		return nil
	}
	if err := run("apt-get", "update"); err != nil {
		return err
	}
	args := []string{"apt-get", "install", "-y", "--no-install-recommends"}
	for _, p := range missing {
		args = append(args, p.Name)
	}
	done, err := noServiceStarts(log)
	if err != nil {
		return err
	}
	err = run(args...)
	done()
	if err != nil {
		return err
	}
	still, _ := Missing(missing)
	if len(still) > 0 {
		return fmt.Errorf("apt-get finished but these packages are still not installed: %s", names(still))
	}
	fmt.Fprintf(log, "[setup] installed %s\n", names(missing))
	return nil
}

func names(ps []Package) string {
	var n []string
	for _, p := range ps {
		n = append(n, p.Name)
	}
	return strings.Join(n, " ")
}

// policyRCD is Debian's hook that decides whether a package's install may
// start its service; a variable so that tests can point it elsewhere.
var policyRCD = "/usr/sbin/policy-rc.d"

// noServiceStarts keeps the packages being installed from starting their
// daemons (sshd on 0.0.0.0:22, libvirtd with the distribution's settings):
// the lab starts what it needs itself, bound to loopback. An existing
// policy-rc.d is the administrator's and is left as it is; the one written
// here is removed by the returned func.
func noServiceStarts(log io.Writer) (func(), error) {
	if _, err := os.Stat(policyRCD); err == nil {
		return func() {}, nil
	}
	if err := os.WriteFile(policyRCD, []byte("#!/bin/sh\n# ldtlab setup: install packages without starting their services\nexit 101\n"), 0o755); err != nil {
		return nil, fmt.Errorf("writing %s (keeps installed daemons from starting): %w", policyRCD, err)
	}
	fmt.Fprintf(log, "[setup] %s: no service starts while installing\n", policyRCD)
	return func() { os.Remove(policyRCD) }, nil
}
