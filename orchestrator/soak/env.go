package soak

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"ldtlab/orchestrator/lab"
	"ldtlab/orchestrator/paper"
	"ldtlab/orchestrator/vm/qemu"
)

// Env is what a kernel engineer needs to know the soak's figures apply
// to: the lab's commit, exactly which patches the kernel was built from,
// the VMM, the accelerator and why, and the host. Recorded once per
// session (a resume may run on another commit or host).
type Env struct {
	Commit string `json:"ldtlab_commit"` // HEAD of the repository, "-dirty" when tracked files differ
	// SeriesSHA256 is the sha256 of the kernel's patches (kmod/patches)
	// concatenated in series order, as applied ("" on a vanilla kernel).
	SeriesSHA256 string   `json:"series_sha256"`
	Patches      int      `json:"patches"`           // applied
	Omitted      []string `json:"omitted,omitempty"` // series patches left out (--patches/--without)
	Config       string   `json:"config"`            // kernel config name
	BuildKey     string   `json:"build_key"`
	Source       string   `json:"source,omitempty"` // source package and version
	QEMU         string   `json:"qemu"`             // first line of --version ("" with another backend)
	Accel        string   `json:"accel"`
	AccelReason  string   `json:"accel_reason"` // the probe's reason
	HostCPU      string   `json:"host_cpu"`
	HostCores    int      `json:"host_cores"`
	HostMemory   string   `json:"host_memory"`
	LoadAtStart  string   `json:"load_at_start"` // 1/5/15-minute load average
}

// collectEnv describes the run: m is the soak's first guest.
func collectEnv(repo string, m *lab.Machine, backend string) *Env {
	e := &Env{Commit: paper.GitCommit(repo), HostCPU: paper.HostCPU(), HostCores: runtime.NumCPU(),
		HostMemory: paper.HostRAM(), LoadAtStart: paper.LoadAvg()}
	if m != nil {
		e.Accel, e.AccelReason = string(m.Accel.Kind), m.Accel.Reason
		if kb := m.Kernel; kb != nil {
			e.Config, e.BuildKey, e.Patches, e.Omitted = kb.Meta.Config, kb.Meta.Key, len(kb.Meta.Patches), kb.Meta.Omitted
			e.Source = strings.TrimSpace(kb.Meta.SourcePackage + " " + kb.Meta.SourceVersion)
			e.SeriesSHA256 = paper.SeriesSHA256(filepath.Join(repo, "kmod", "patches"), kb.Meta.Patches)
		}
	}
	if backend == "" || backend == "qemu" {
		if out, err := exec.Command(qemu.Binary(), "--version").Output(); err == nil {
			e.QEMU = strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
		}
	}
	return e
}
