// Package accel chooses the QEMU accelerator for a guest: KVM when the host
// can really run an ordinary kernel under it, TCG otherwise.
//
// /dev/kvm existing is not enough. Some hosts (this lab's included) expose a
// PVM-only /dev/kvm (kvm_pvm, no vmx/svm): QEMU starts with -enable-kvm but an
// ordinary guest kernel hangs early in boot. So every requirement is checked
// and the first failing one becomes the reason for falling back to TCG.
package accel

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Kind is a QEMU accelerator name as accepted by -accel.
type Kind string

// The accelerators the lab knows how to use.
const (
	KVM Kind = "kvm"
	TCG Kind = "tcg"
)

// Choice is the accelerator picked for a guest and a one-line reason, shown
// to the user so that a slow TCG boot is never a mystery.
type Choice struct {
	Kind   Kind
	Reason string
}

// QEMUArgs returns the accelerator and CPU model arguments for qemu-system-x86_64.
//
// TCG uses -cpu max: QEMU 7.2 accepts it under TCG and it is everything TCG
// can emulate (checked with query-cpu-model-expansion: smep, smap, pku,
// fsgsbase, avx2, rdrand, la57, svm; no x2apic), closer to the hardware
// kernel features are tested on than qemu64. la57 makes a 5-level-paging
// kernel use 5 levels, which it supports; "no5lvl" on the guest command line
// turns that off if the extra page-walk level ever matters.
// thread=multi gives one host thread per vCPU.
// An unknown Kind yields nil so that callers notice instead of guessing.
func (c Choice) QEMUArgs() []string {
	switch c.Kind {
	case KVM:
		return []string{"-accel", "kvm", "-cpu", "host"}
	case TCG:
		return []string{"-accel", "tcg,thread=multi", "-cpu", "max"}
	}
	return nil
}

// problem is one reason KVM cannot be used, with what the user can do about it.
type problem struct {
	cause string // why KVM is unusable, for Choice.Reason and errors
	fix   string // the remedy, for Resolve("kvm") errors
}

// prober checks a root tree. open is swappable because tests run as root,
// where a permission-denied /dev/kvm cannot be produced with chmod.
type prober struct {
	root string
	open func(path string) error
}

func openRW(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	return f.Close()
}

func (p prober) path(rel string) string { return filepath.Join(p.root, rel) }

func (p prober) exists(rel string) bool {
	_, err := os.Stat(p.path(rel))
	return err == nil
}

// check returns nil when KVM is usable, else the first blocking problem. The
// order puts structural problems (no device, PVM-only, no CPU support) before
// permissions, because fixing permissions would not help with those.
func (p prober) check() *problem {
	if _, err := os.Stat(p.path("dev/kvm")); err != nil {
		return &problem{
			cause: "/dev/kvm does not exist",
			fix:   "enable virtualization in firmware or the hypervisor and load kvm_intel/kvm_amd",
		}
	}
	hwModule := p.exists("sys/module/kvm_intel") || p.exists("sys/module/kvm_amd")
	flag, err := cpuVirtFlag(p.path("proc/cpuinfo"))
	if err != nil {
		return &problem{
			cause: fmt.Sprintf("cannot read CPU flags: %v", err),
			fix:   "make /proc/cpuinfo readable",
		}
	}
	if p.exists("sys/module/kvm_pvm") && !hwModule {
		flags := "CPU has no vmx/svm flag"
		if flag != "" {
			flags = "CPU has " + flag + " but kvm_intel/kvm_amd is not loaded"
		}
		return &problem{
			cause: fmt.Sprintf("/dev/kvm is PVM-only (kvm_pvm loaded, %s); ordinary kernels hang under it", flags),
			fix:   "run on a host with hardware virtualization (vmx/svm) and kvm_intel/kvm_amd loaded",
		}
	}
	if flag == "" {
		return &problem{
			cause: "CPU has no vmx/svm flag (nested virtualization is off, or virtualization is disabled in firmware)",
			fix:   "enable nested virtualization on the host hypervisor, or VT-x/AMD-V in firmware",
		}
	}
	if !hwModule {
		return &problem{
			cause: fmt.Sprintf("CPU has %s but neither kvm_intel nor kvm_amd is loaded", flag),
			fix:   "load kvm_intel/kvm_amd (modprobe kvm_intel or modprobe kvm_amd)",
		}
	}
	if err := p.open(p.path("dev/kvm")); err != nil {
		if errors.Is(err, fs.ErrPermission) {
			return &problem{
				cause: "/dev/kvm is not accessible (permission denied)",
				fix:   "add yourself to group kvm (usermod -aG kvm $USER, then log in again)",
			}
		}
		return &problem{
			cause: fmt.Sprintf("cannot open /dev/kvm read-write: %v", err),
			fix:   "check that /dev/kvm is a working KVM device",
		}
	}
	return nil
}

// cpuVirtFlag returns "vmx" or "svm" when any CPU's flags line has it, "" when none does.
func cpuVirtFlag(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	// Flags lines on big CPUs exceed bufio's 64 KiB default only in theory,
	// but a too-long line must not silently read as "no flag".
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(key) != "flags" {
			continue
		}
		for _, fl := range strings.Fields(val) {
			if fl == "vmx" || fl == "svm" {
				return fl, nil
			}
		}
	}
	return "", sc.Err()
}

func detect(p prober) Choice {
	if pr := p.check(); pr != nil {
		return Choice{Kind: TCG, Reason: "tcg: " + pr.cause}
	}
	return Choice{Kind: KVM, Reason: "kvm: /dev/kvm usable with hardware virtualization"}
}

// Detect picks KVM when it is usable under root ("/" normally), TCG otherwise.
func Detect(root string) Choice {
	return detect(prober{root: root, open: openRW})
}

// Resolve turns the user's --accel value into a Choice. "auto" (or "")
// detects; "tcg" is always honoured; "kvm" fails with the cause and a fix
// when KVM is unusable, rather than booting a guest that would hang.
func Resolve(want, root string) (Choice, error) {
	return resolve(want, prober{root: root, open: openRW})
}

func resolve(want string, p prober) (Choice, error) {
	switch strings.ToLower(strings.TrimSpace(want)) {
	case "", "auto":
		return detect(p), nil
	case string(TCG):
		return Choice{Kind: TCG, Reason: "tcg: requested"}, nil
	case string(KVM):
		if pr := p.check(); pr != nil {
			return Choice{}, fmt.Errorf("accel kvm requested but unusable: %s; fix: %s, or use --accel tcg", pr.cause, pr.fix)
		}
		return Choice{Kind: KVM, Reason: "kvm: requested; /dev/kvm usable with hardware virtualization"}, nil
	}
	return Choice{}, fmt.Errorf("unknown accelerator %q: valid values are auto, kvm, tcg", want)
}
