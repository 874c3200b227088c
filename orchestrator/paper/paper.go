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
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"ldtlab/guest/bench"
	"ldtlab/internal/lines"
	"ldtlab/orchestrator/cell"
	"ldtlab/orchestrator/channel"
	"ldtlab/orchestrator/lab"
	"ldtlab/orchestrator/preset"
	"ldtlab/orchestrator/report"
)

// Options select the run.
type Options struct {
	Guest lab.Options
	// Plan is quick, reduced or full (bench.Plans); Quick is plan quick.
	Plan  string
	Quick bool
	// Reps overrides the plan's repetitions; Seed its order seed.
	Reps     int
	Seed     uint64
	Progress io.Writer
}

func (o Options) plan() string {
	switch {
	case o.Quick:
		return "quick"
	case o.Plan == "":
		return "full"
	}
	return o.Plan
}

// Meta labels every figure: where, how and with what it was measured.
type Meta struct {
	Date      string `json:"date"`
	Machine   string `json:"machine"`
	HostCores int    `json:"host_cores"`
	HostRAM   string `json:"host_ram"`
	// Commit is the ldtlab commit the run was made from ("-dirty" when
	// tracked files differed from it).
	Commit      string `json:"commit"`
	Accel       string `json:"accel"`
	AccelReason string `json:"accel_reason"`
	QEMU        string `json:"qemu"`
	Kernel      string `json:"kernel"`
	Variant     string `json:"variant"`
	Source      string `json:"source"`
	// BuildKey is the kernel cache key (source, config fragments, patches,
	// compiler, lab modules); Patches the series applied, in order, and
	// SeriesSHA256 the sha256 of their contents concatenated in that
	// order (`cat $(cat series) | sha256sum` in kmod/patches).
	BuildKey     string   `json:"build_key"`
	Patches      []string `json:"patches"`
	SeriesSHA256 string   `json:"series_sha256"`
	// KernelConfig is the lab configuration (debug, perf, sanitize);
	// KernelConfigSHA256 the sha256 of the kernel's final .config.
	KernelConfig       string `json:"kernel_config"`
	KernelConfigSHA256 string `json:"kernel_config_sha256"`
	GuestMiB           int    `json:"guest_mib"`
	GuestCPUs          int    `json:"guest_cpus"`
	THP                string `json:"thp_setting"`
	Plan               string `json:"plan"`
	Quick              bool   `json:"quick"`
	Reps               int    `json:"reps"`
	Seed               uint64 `json:"seed"`
	// HostLoad is /proc/loadavg at the start and the end; LoadSamples
	// the 1-minute load average every 30 s in between. Other work on the
	// host is noise every tracker shares (cells run in random order).
	HostLoad    []string  `json:"host_load"`
	LoadSamples []float64 `json:"load_samples"`
	Seconds     float64   `json:"seconds"`
}

// Result is everything one run measured.
type Result struct {
	Meta      Meta             `json:"meta"`
	WriteOnly *bench.WriteOnly `json:"write_only"`
	Timeline  *bench.Timeline  `json:"timeline"`
	Redis     *bench.Redis     `json:"redis"`
	Collect   *bench.Collect   `json:"collect"`
	// Analysis is computed from the samples by Write (never read back:
	// rendering a paper.json again recomputes it).
	Analysis *Analysis `json:"analysis,omitempty"`
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
	files, err := preset.RedisFiles()
	if err != nil {
		return nil, err
	}
	o.Guest.Extra = append(o.Guest.Extra, files...)
	mk, ok := bench.Plans[o.plan()]
	if !ok {
		return nil, fmt.Errorf("unknown plan %q (want quick, reduced or full)", o.plan())
	}
	plan := mk()
	if o.Reps > 0 {
		plan.Reps, plan.RedisReps = o.Reps, o.Reps
	}
	if o.Seed == 0 {
		o.Seed = uint64(time.Now().UnixNano())
	}
	commit := GitCommit(o.Guest.Repo)
	m, err := lab.Boot(ctx, o.Guest)
	if err != nil {
		return nil, err
	}
	defer m.Close()
	res := &Result{Meta: hostMeta()}
	res.Meta.HostLoad = append(res.Meta.HostLoad, LoadAvg())
	stopLoad := sampleLoad(30*time.Second, &res.Meta.LoadSamples)
	defer stopLoad()
	res.Meta.Date = time.Now().UTC().Format("2006-01-02 15:04 UTC")
	res.Meta.Commit = commit
	res.Meta.Accel, res.Meta.AccelReason = string(m.Accel.Kind), m.Accel.Reason
	res.Meta.Kernel = m.Kernel.Meta.KernelRelease
	res.Meta.Variant = o.Guest.KernelOptions().Variant()
	res.Meta.Source = m.Kernel.Meta.SourcePackage + " " + m.Kernel.Meta.SourceVersion
	res.Meta.BuildKey, res.Meta.Patches, res.Meta.KernelConfig = m.Kernel.Meta.Key, m.Kernel.Meta.Patches, m.Kernel.Meta.Config
	res.Meta.SeriesSHA256 = SeriesSHA256(filepath.Join(o.Guest.Repo, "kmod", "patches"), m.Kernel.Meta.Patches)
	res.Meta.KernelConfigSHA256 = fileSHA256(filepath.Join(m.Kernel.Dir, "config"))
	res.Meta.GuestMiB, res.Meta.GuestCPUs = o.Guest.MemoryMiB, o.Guest.CPUs
	res.Meta.Plan, res.Meta.Quick, res.Meta.Reps, res.Meta.Seed = plan.Name, plan.Name == "quick", plan.Reps, o.Seed
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
		cmd := fmt.Sprintf("ldt-bench -figure %s -plan %s -reps %d -seed %d", fig, plan.Name, plan.Reps, o.Seed)
		t := time.Now()
		var stderr io.Writer = io.Discard
		if o.Progress != nil {
			stderr = o.Progress
		}
		// Under TCG on a shared host one full figure runs for an hour.
		fctx, cancel := context.WithTimeout(ctx, map[bool]time.Duration{true: 10 * time.Minute, false: 3 * time.Hour}[plan.Name == "quick"])
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
	stopLoad()
	res.Meta.Seconds = time.Since(start).Seconds()
	res.Meta.HostLoad = append(res.Meta.HostLoad, LoadAvg())
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

// LoadAvg is the host's 1/5/15-minute load average.
func LoadAvg() string {
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
	r.Analysis = nil // recomputed from the samples
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
	r.Analysis = Analyze(r)
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
