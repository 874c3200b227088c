package accel

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// host describes a fake /dev, /proc and /sys tree.
type host struct {
	devKVM   bool
	flags    string   // flags line of every CPU in /proc/cpuinfo
	modules  []string // directories under /sys/module
	openErr  error    // what opening /dev/kvm returns (nil: success)
	noCPUInf bool     // /proc/cpuinfo missing
}

func (h host) prober(t *testing.T) prober {
	t.Helper()
	root := t.TempDir()
	mk := func(rel string, dir bool, data string) {
		p := filepath.Join(root, rel)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		if dir {
			require.NoError(t, os.Mkdir(p, 0o755))
			return
		}
		require.NoError(t, os.WriteFile(p, []byte(data), 0o644))
	}
	if h.devKVM {
		// A regular file stands in for the character device: only presence
		// and openability matter.
		mk("dev/kvm", false, "")
	}
	if !h.noCPUInf {
		var ci string
		for i := range 2 {
			ci += fmt.Sprintf("processor\t: %d\nvendor_id\t: GenuineIntel\nflags\t\t: %s\n\n", i, h.flags)
		}
		mk("proc/cpuinfo", false, ci)
	}
	for _, m := range h.modules {
		mk("sys/module/"+m, true, "")
	}
	return prober{root: root, open: func(string) error { return h.openErr }}
}

const (
	intelFlags = "fpu vme de pse tsc msr pae vmx ept"
	amdFlags   = "fpu vme de pse tsc msr pae svm npt"
	noVirt     = "fpu vme de pse tsc msr pae hypervisor"
)

func TestDetect(t *testing.T) {
	tests := []struct {
		name   string
		host   host
		kind   Kind
		reason string // substring of Choice.Reason
	}{
		{"intel ok", host{devKVM: true, flags: intelFlags, modules: []string{"kvm", "kvm_intel"}}, KVM, "kvm:"},
		{"amd ok", host{devKVM: true, flags: amdFlags, modules: []string{"kvm", "kvm_amd"}}, KVM, "kvm:"},
		{"no /dev/kvm", host{flags: intelFlags, modules: []string{"kvm", "kvm_intel"}}, TCG, "/dev/kvm does not exist"},
		{"no permission", host{devKVM: true, flags: intelFlags, modules: []string{"kvm", "kvm_intel"}, openErr: fs.ErrPermission}, TCG, "permission denied"},
		{"open fails otherwise", host{devKVM: true, flags: intelFlags, modules: []string{"kvm", "kvm_intel"}, openErr: fmt.Errorf("no such device")}, TCG, "cannot open /dev/kvm"},
		{"pvm only (this machine)", host{devKVM: true, flags: noVirt, modules: []string{"kvm", "kvm_pvm"}}, TCG, "tcg: /dev/kvm is PVM-only (kvm_pvm loaded, CPU has no vmx/svm flag); ordinary kernels hang under it"},
		{"pvm with flag but no hw module", host{devKVM: true, flags: intelFlags, modules: []string{"kvm", "kvm_pvm"}}, TCG, "PVM-only (kvm_pvm loaded, CPU has vmx but"},
		{"nested virt off", host{devKVM: true, flags: noVirt, modules: []string{"kvm", "kvm_intel"}}, TCG, "no vmx/svm flag (nested virtualization is off"},
		{"module missing", host{devKVM: true, flags: amdFlags, modules: []string{"kvm"}}, TCG, "CPU has svm but neither kvm_intel nor kvm_amd is loaded"},
		{"no cpuinfo", host{devKVM: true, noCPUInf: true, modules: []string{"kvm", "kvm_intel"}}, TCG, "cannot read CPU flags"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := detect(tt.host.prober(t))
			assert.Equal(t, tt.kind, c.Kind)
			assert.Contains(t, c.Reason, tt.reason)
			assert.Contains(t, c.Reason, string(tt.kind)+":", "reason starts with the kind")
		})
	}
}

// TestDetectRealOpen exercises the real open path on a fake tree: a readable
// regular file opens read-write, a missing one is reported as missing.
func TestDetectRealOpen(t *testing.T) {
	p := host{devKVM: true, flags: intelFlags, modules: []string{"kvm_intel"}}.prober(t)
	assert.Equal(t, KVM, Detect(p.root).Kind)

	if os.Geteuid() == 0 {
		return // root opens a 0000 file anyway; the fake open covers permissions
	}
	require.NoError(t, os.Chmod(filepath.Join(p.root, "dev/kvm"), 0))
	c := Detect(p.root)
	assert.Equal(t, TCG, c.Kind)
	assert.Contains(t, c.Reason, "permission denied")
}

func TestResolve(t *testing.T) {
	good := host{devKVM: true, flags: intelFlags, modules: []string{"kvm_intel"}}
	pvm := host{devKVM: true, flags: noVirt, modules: []string{"kvm_pvm"}}
	tests := []struct {
		name    string
		want    string
		host    host
		kind    Kind
		errPart []string // substrings of the error; nil means no error
	}{
		{"auto good", "auto", good, KVM, nil},
		{"empty is auto", "", pvm, TCG, nil},
		{"auto pvm", "auto", pvm, TCG, nil},
		{"tcg always", "tcg", good, TCG, nil},
		{"case and space", " KVM ", good, KVM, nil},
		{"kvm good", "kvm", good, KVM, nil},
		{"kvm pvm", "kvm", pvm, "", []string{"PVM-only", "vmx/svm", "--accel tcg"}},
		{"kvm no device", "kvm", host{flags: intelFlags}, "", []string{"/dev/kvm does not exist", "--accel tcg"}},
		{"kvm no permission", "kvm", host{devKVM: true, flags: intelFlags, modules: []string{"kvm_amd"}, openErr: fs.ErrPermission}, "", []string{"permission denied", "add yourself to group kvm"}},
		{"kvm nested off", "kvm", host{devKVM: true, flags: noVirt, modules: []string{"kvm_intel"}}, "", []string{"nested virtualization"}},
		{"kvm module missing", "kvm", host{devKVM: true, flags: intelFlags}, "", []string{"load kvm_intel/kvm_amd"}},
		{"unknown", "hvf", good, "", []string{`"hvf"`, "auto, kvm, tcg"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := resolve(tt.want, tt.host.prober(t))
			if tt.errPart != nil {
				require.Error(t, err)
				for _, s := range tt.errPart {
					assert.Contains(t, err.Error(), s)
				}
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.kind, c.Kind)
			assert.NotEmpty(t, c.Reason)
		})
	}
}

func TestQEMUArgs(t *testing.T) {
	tests := []struct {
		kind Kind
		want []string
	}{
		{KVM, []string{"-accel", "kvm", "-cpu", "host"}},
		{TCG, []string{"-accel", "tcg,thread=multi", "-cpu", "max"}},
		{"", nil},
	}
	for _, tt := range tests {
		t.Run(string(tt.kind), func(t *testing.T) {
			assert.Equal(t, tt.want, Choice{Kind: tt.kind}.QEMUArgs())
		})
	}
}

// TestDetectThisHost only logs: the result depends on the machine.
func TestDetectThisHost(t *testing.T) {
	c := Detect("/")
	t.Logf("this host: %s (%s)", c.Kind, c.Reason)
	assert.Contains(t, []Kind{KVM, TCG}, c.Kind)
}

// TestSimulate: each simulated machine reads as that machine, through the
// variable the e2e suite sets.
func TestSimulate(t *testing.T) {
	want := map[Host]struct {
		kind   Kind
		reason string
	}{
		NoKVM:      {TCG, "tcg: /dev/kvm does not exist"},
		PVMOnly:    {TCG, "tcg: /dev/kvm is PVM-only"},
		WorkingKVM: {KVM, "kvm: /dev/kvm usable"},
	}
	for _, h := range Hosts {
		t.Run(string(h), func(t *testing.T) {
			root, err := Simulate(t.TempDir(), h)
			require.NoError(t, err)
			t.Setenv(HostRootEnv, root)
			c := DetectHost()
			assert.Equal(t, want[h].kind, c.Kind)
			assert.Contains(t, c.Reason, want[h].reason)
			r, err := ResolveHost("auto")
			require.NoError(t, err)
			assert.Equal(t, c, r)
		})
	}
	_, err := Simulate(t.TempDir(), "vmx")
	assert.ErrorContains(t, err, `unknown`)
	t.Setenv(HostRootEnv, "")
	assert.Equal(t, "/", HostRoot())
}
