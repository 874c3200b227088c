// Package paper is the host side of `labctl bench paper`: it boots a
// perf-config LDT guest, runs the four figures of the LDT paper's
// evaluation with guest/cmd/ldt-bench (every tracker interleaved and
// repeated), checks that the samples are sane, and writes every sample as
// JSON, Markdown tables with ratios to the baseline and to soft-dirty, and
// plots. It reports figures; it never asserts times.
package paper

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"ldtlab/guest/bench"
	"ldtlab/internal/lines"
	"ldtlab/orchestrator/cell"
	"ldtlab/orchestrator/channel"
	"ldtlab/orchestrator/check"
	"ldtlab/orchestrator/lab"
	"ldtlab/orchestrator/report"
)

// Options select the run.
type Options struct {
	Guest    lab.Options
	Quick    bool
	Progress io.Writer
}

// Meta labels every figure: where and how it was measured.
type Meta struct {
	Date        string `json:"date"`
	Machine     string `json:"machine"`
	HostCores   int    `json:"host_cores"`
	HostRAM     string `json:"host_ram"`
	Accel       string `json:"accel"`
	AccelReason string `json:"accel_reason"`
	QEMU        string `json:"qemu"`
	Kernel      string `json:"kernel"`
	Variant     string `json:"variant"`
	Source      string `json:"source"`
	GuestMiB    int    `json:"guest_mib"`
	GuestCPUs   int    `json:"guest_cpus"`
	THP         string `json:"thp_setting"`
	Quick       bool   `json:"quick"`
	// HostLoad is /proc/loadavg at the start and the end: other work on
	// the host is noise every tracker shares (they run interleaved).
	HostLoad []string `json:"host_load,omitempty"`
	Seconds  float64  `json:"seconds"`
}

// Result is everything one run measured.
type Result struct {
	Meta      Meta             `json:"meta"`
	WriteOnly *bench.WriteOnly `json:"write_only"`
	Timeline  *bench.Timeline  `json:"timeline"`
	Redis     *bench.Redis     `json:"redis"`
	Collect   *bench.Collect   `json:"collect"`
	// Problems are failed sanity checks; Reports are kernel reports seen
	// on the console. Either makes the run fail.
	Problems []string `json:"problems,omitempty"`
	Reports  []string `json:"kernel_reports,omitempty"`
}

// GuestDefaults: the perf kernel (no debug options), 2 GiB so the largest
// working set fits with room to spare, no disk swap (nothing may swap
// during a benchmark).
func GuestDefaults(o *lab.Options) {
	if o.Config == "" {
		o.Config = "perf"
	}
	if o.MemoryMiB == 0 {
		o.MemoryMiB = 2048
	}
	if o.CPUs == 0 {
		o.CPUs = 2
	}
	o.SwapMiB = -1
	if o.Name == "" {
		o.Name = "paper"
	}
}

func (o Options) logf(format string, a ...any) {
	if o.Progress != nil {
		fmt.Fprintf(o.Progress, format+"\n", a...)
	}
}

// figures in the order they run; each is one ldt-bench invocation.
var figures = []string{"writeonly", "timeline", "collect", "redis"}

// Run boots the guest and measures every figure.
func Run(ctx context.Context, o Options) (*Result, error) {
	start := time.Now()
	GuestDefaults(&o.Guest)
	files, err := check.RedisFiles()
	if err != nil {
		return nil, err
	}
	o.Guest.Extra = append(o.Guest.Extra, files...)
	m, err := lab.Boot(ctx, o.Guest)
	if err != nil {
		return nil, err
	}
	defer m.Close()
	res := &Result{Meta: hostMeta()}
	res.Meta.HostLoad = append(res.Meta.HostLoad, loadAvg())
	res.Meta.Date = time.Now().UTC().Format("2006-01-02 15:04 UTC")
	res.Meta.Accel, res.Meta.AccelReason = string(m.Accel.Kind), m.Accel.Reason
	res.Meta.Kernel = m.Kernel.Meta.KernelRelease
	res.Meta.Variant = o.Guest.KernelOptions().Variant()
	res.Meta.Source = m.Kernel.Meta.SourcePackage + " " + m.Kernel.Meta.SourceVersion
	res.Meta.GuestMiB, res.Meta.GuestCPUs, res.Meta.Quick = o.Guest.MemoryMiB, o.Guest.CPUs, o.Quick
	o.logf("guest: kernel %s (%s), %s, %d MiB, %d vCPUs, booted in %.1fs", res.Meta.Kernel, res.Meta.Variant, res.Meta.Accel, o.Guest.MemoryMiB, o.Guest.CPUs, m.BootTime.Seconds())
	// The guest's THP mode decides what the THP series means: madvise or
	// always both honour MADV_HUGEPAGE; never would make it a 4 KiB run.
	r, err := m.Run(ctx, "cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null || echo unavailable")
	if err != nil {
		return nil, err
	}
	res.Meta.THP = strings.TrimSpace(string(r.Stdout))
	if strings.Contains(res.Meta.THP, "[never]") {
		if _, err := m.Run(ctx, "echo madvise > /sys/kernel/mm/transparent_hugepage/enabled"); err != nil {
			return nil, err
		}
	}
	scanned := 0
	for _, fig := range figures {
		cmd := "ldt-bench -figure " + fig
		if o.Quick {
			cmd += " -quick"
		}
		t := time.Now()
		var stderr io.Writer = io.Discard
		if o.Progress != nil {
			stderr = o.Progress
		}
		// The full redis figure alone runs ~6 minutes of TCG.
		fctx, cancel := context.WithTimeout(ctx, map[bool]time.Duration{true: 10 * time.Minute, false: 40 * time.Minute}[o.Quick])
		out, err := m.RunWith(fctx, cmd, channel.RunOptions{Stderr: stderr})
		cancel()
		log := m.ConsoleLog()
		for _, rep := range report.Parse(log[scanned:]) {
			res.Reports = append(res.Reports, fig+": "+rep.String())
		}
		scanned = len(log)
		if err != nil {
			return res, fmt.Errorf("figure %s: %w", fig, err)
		}
		if out.Code != 0 {
			return res, fmt.Errorf("figure %s: ldt-bench exited %d: %s", fig, out.Code, strings.ReplaceAll(lines.Last(strings.TrimSpace(string(out.Stderr)), 5), "\n", " | "))
		}
		var dst any
		switch fig {
		case "writeonly":
			res.WriteOnly = &bench.WriteOnly{}
			dst = res.WriteOnly
		case "timeline":
			res.Timeline = &bench.Timeline{}
			dst = res.Timeline
		case "collect":
			res.Collect = &bench.Collect{}
			dst = res.Collect
		case "redis":
			res.Redis = &bench.Redis{}
			dst = res.Redis
		}
		if err := json.Unmarshal(lastJSON(out.Stdout), dst); err != nil {
			return res, fmt.Errorf("figure %s: reading ldt-bench's result: %w", fig, err)
		}
		o.logf("figure %s measured in %.0fs", fig, time.Since(t).Seconds())
	}
	if err := m.Shutdown(ctx); err != nil {
		o.logf("warning: clean poweroff failed: %v", err)
	}
	res.Meta.Seconds = time.Since(start).Seconds()
	res.Meta.HostLoad = append(res.Meta.HostLoad, loadAvg())
	res.Problems = Sanity(res)
	return res, nil
}

func lastJSON(b []byte) []byte { return cell.LastJSON(b) }

// HostCPU is the host's CPU model name.
func HostCPU() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "model name") {
			return strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
		}
	}
	return "unknown"
}

// HostRAM is the host's MemTotal, rounded to GiB.
func HostRAM() string {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return "?"
	}
	var kb int64
	fmt.Sscanf(strings.SplitN(string(b), "\n", 2)[0], "MemTotal: %d kB", &kb)
	return fmt.Sprintf("%.0f GiB RAM", float64(kb)/(1<<20))
}

func loadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func hostMeta() Meta {
	bin := os.Getenv("LDTLAB_QEMU")
	if bin == "" {
		bin = "qemu-system-x86_64"
	}
	qv, _ := exec.Command(bin, "--version").Output()
	return Meta{Machine: HostCPU(), HostCores: runtime.NumCPU(), HostRAM: HostRAM(), QEMU: strings.SplitN(string(qv), "\n", 2)[0]}
}

// Load reads a paper.json written by Write, to render it again.
func Load(path string) (*Result, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	r := &Result{}
	if err := json.Unmarshal(b, r); err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if r.WriteOnly == nil && r.Timeline == nil && r.Redis == nil && r.Collect == nil {
		return nil, fmt.Errorf("%s holds no figure of `labctl bench paper`", path)
	}
	return r, nil
}

// Write puts paper.json (every sample), README.md (tables) and the four
// plots into dir.
func Write(r *Result, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	b, err := json.MarshalIndent(r, "", " ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(dir+"/paper.json", append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("writing paper.json: %w", err)
	}
	var md bytes.Buffer
	Markdown(&md, r)
	if err := os.WriteFile(dir+"/README.md", md.Bytes(), 0o644); err != nil {
		return fmt.Errorf("writing README.md: %w", err)
	}
	if err := Plots(r, dir); err != nil {
		return fmt.Errorf("plotting: %w", err)
	}
	return nil
}
