package accel

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// HostRootEnv names the variable that points the probe at another root
// tree: the tests use it to run the lab as if this machine had no
// /dev/kvm, a PVM-only one, or a working one (see Simulate), whatever the
// machine really has. Unset, the probe reads "/".
const HostRootEnv = "LDTLAB_HOST_ROOT"

// HostRoot is the root tree the probe reads for this machine.
func HostRoot() string {
	if r := os.Getenv(HostRootEnv); r != "" {
		return r
	}
	return "/"
}

// DetectHost is Detect on this machine (or the tree HostRootEnv names).
func DetectHost() Choice { return Detect(HostRoot()) }

// ResolveHost is Resolve on this machine (or the tree HostRootEnv names).
func ResolveHost(want string) (Choice, error) { return Resolve(want, HostRoot()) }

// Host is a kind of machine Simulate can lay out.
type Host string

// The machines the lab must work on.
const (
	NoKVM      Host = "no-kvm" // no /dev/kvm at all (a cloud VM without nested virtualization)
	PVMOnly    Host = "pvm"    // /dev/kvm from kvm_pvm, no vmx/svm
	WorkingKVM Host = "kvm"    // /dev/kvm, vmx, kvm_intel loaded
)

// Hosts lists every Host, in the order tests run them.
var Hosts = []Host{NoKVM, PVMOnly, WorkingKVM}

// Simulate lays out under dir the /dev, /proc and /sys entries the probe
// reads, as the machine h has them, and returns dir for HostRootEnv. A
// regular file stands in for /dev/kvm: the probe only stats and opens it.
func Simulate(dir string, h Host) (string, error) {
	var files, mods []string
	flags := "fpu vme de pse tsc msr pae hypervisor"
	switch h {
	case NoKVM:
		flags += " vmx"
		mods = []string{"kvm", "kvm_intel"}
	case PVMOnly:
		files = []string{"dev/kvm"}
		mods = []string{"kvm", "kvm_pvm"}
	case WorkingKVM:
		flags += " vmx"
		files = []string{"dev/kvm"}
		mods = []string{"kvm", "kvm_intel"}
	default:
		return "", fmt.Errorf("simulate host %q: unknown (one of %s, %s, %s)", h, NoKVM, PVMOnly, WorkingKVM)
	}
	var ci strings.Builder
	for i := range 2 {
		fmt.Fprintf(&ci, "processor\t: %d\nflags\t\t: %s\n\n", i, flags)
	}
	write := func(rel, data string) error {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		return os.WriteFile(p, []byte(data), 0o644)
	}
	if err := write("proc/cpuinfo", ci.String()); err != nil {
		return "", fmt.Errorf("simulate host %s: %w", h, err)
	}
	for _, f := range files {
		if err := write(f, ""); err != nil {
			return "", fmt.Errorf("simulate host %s: %w", h, err)
		}
	}
	for _, m := range mods {
		if err := os.MkdirAll(filepath.Join(dir, "sys/module", m), 0o755); err != nil {
			return "", fmt.Errorf("simulate host %s: %w", h, err)
		}
	}
	return dir, nil
}
