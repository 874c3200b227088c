// Package paper is the host side of `labctl bench paper`: it boots a
// perf-config LDT guest, runs the four figures of the LDT paper's
// evaluation and a GUP figure of the lab's own with guest/cmd/ldt-bench (every tracker interleaved and
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
	"slices"
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
	// Kernels, when set, are the kernels of an A/B run, each in its own
	// guest (o.Guest with that kernel selected); Figures the figures to
	// measure (empty: all four).
	Kernels []KernelSpec
	Figures []string
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
	// Figures and Trackers measured (empty: all of them).
	Figures  []string `json:"figures,omitempty"`
	Trackers []string `json:"trackers,omitempty"`
	// KernelOrder is, in an A/B run, the order the kernels ran in each
	// repetition.
	KernelOrder [][]string `json:"kernel_order,omitempty"`
	// HostLoad is /proc/loadavg at the start and the end; LoadSamples
	// the 1-minute load average every 30 s in between. Other work on the
	// host is noise the random order spreads over the trackers but does
	// not cancel: the A/A (ldt÷naive) measures what is left.
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
	GUP       *bench.GUP       `json:"gup,omitempty"`
	// Kernels are, in an A/B run (`--kernels`), every kernel with its
	// samples; the figures above are the last one's.
	Kernels []*KernelRun `json:"kernels,omitempty"`
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
var figures = []string{"writeonly", "timeline", "collect", "gup", "redis"}

// Figures are the figures a run can measure, in the order they run.
func Figures() []string { return slices.Clone(figures) }

func (o Options) figures() ([]string, error) {
	if len(o.Figures) == 0 {
		return figures, nil
	}
	var out []string
	for _, f := range figures {
		if slices.Contains(o.Figures, f) {
			out = append(out, f)
		}
	}
	for _, f := range o.Figures {
		if !slices.Contains(figures, f) {
			return nil, fmt.Errorf("unknown figure %q (have %s)", f, strings.Join(figures, ", "))
		}
	}
	return out, nil
}

// guest is one booted kernel of a run.
type guest struct {
	m       *lab.Machine
	kr      *KernelRun
	scanned int // console bytes already searched for kernel reports
}

// Run boots the guest (one per kernel of an A/B run) and measures every
// figure. With one kernel every figure runs its repetitions in one call;
// with several, repetition by repetition, the kernels in a random order
// per repetition, every kernel's figures back to back, so slow drift of
// the host is not always borne by one kernel and each repetition pairs
// them.
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
		return nil, fmt.Errorf("unknown plan %q (want quick, short, reduced or full)", o.plan())
	}
	plan := mk()
	if o.Reps > 0 {
		plan.Reps, plan.RedisReps = o.Reps, o.Reps
	}
	if o.Seed == 0 {
		o.Seed = uint64(time.Now().UnixNano())
	}
	figs, err := o.figures()
	if err != nil {
		return nil, err
	}
	specs := o.Kernels
	if len(specs) == 0 {
		specs = []KernelSpec{{}} // the kernel o.Guest selects
	}
	commit := GitCommit(o.Guest.Repo)
	res := &Result{Meta: hostMeta()}
	var gs []*guest
	defer func() {
		for _, g := range gs {
			g.m.Close()
		}
	}()
	for i, k := range specs {
		gopt := o.Guest
		vanilla := gopt.Vanilla
		if k.Name != "" {
			gopt = k.apply(gopt)
			gopt.Name = fmt.Sprintf("%s-k%d", o.Guest.Name, i)
			vanilla = k.Vanilla
		}
		m, err := lab.Boot(ctx, gopt)
		if err != nil {
			return nil, fmt.Errorf("booting kernel %q: %w", k.Name, err)
		}
		kr := &KernelRun{Spec: k, Kernel: m.Kernel.Meta.KernelRelease, Variant: gopt.KernelOptions().Variant(),
			BuildKey: m.Kernel.Meta.Key, Patches: m.Kernel.Meta.Patches, Trackers: trackersFor(vanilla || gopt.LDTOff),
			SeriesSHA256:       SeriesSHA256(filepath.Join(o.Guest.Repo, "kmod", "patches"), m.Kernel.Meta.Patches),
			KernelConfigSHA256: fileSHA256(filepath.Join(m.Kernel.Dir, "config")), BootS: m.BootTime.Seconds()}
		if kr.Spec.Name == "" {
			kr.Spec.Name = kr.Variant
		}
		gs = append(gs, &guest{m: m, kr: kr})
		o.logf("guest %d: kernel %s (%s, build %s), %s, %d MiB, %d vCPUs, booted in %.1fs", i, kr.Kernel, kr.Variant, kr.BuildKey, m.Accel.Kind, gopt.MemoryMiB, gopt.CPUs, m.BootTime.Seconds())
		// The guest's THP mode decides what the THP series means: madvise
		// or always both honour MADV_HUGEPAGE; never would make it a 4 KiB
		// run.
		r, err := m.Run(ctx, "cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null || echo unavailable")
		if err != nil {
			return nil, err
		}
		if i == 0 {
			res.Meta.THP = strings.TrimSpace(string(r.Stdout))
		}
		if strings.Contains(string(r.Stdout), "[never]") {
			if _, err := m.Run(ctx, "echo madvise > /sys/kernel/mm/transparent_hugepage/enabled"); err != nil {
				return nil, err
			}
		}
	}
	// The load is sampled from the moment every guest is up.
	res.Meta.HostLoad = append(res.Meta.HostLoad, LoadAvg())
	stopLoad := sampleLoad(30*time.Second, &res.Meta.LoadSamples)
	defer stopLoad()
	res.Meta.Date = time.Now().UTC().Format("2006-01-02 15:04 UTC")
	res.Meta.Commit = commit
	res.Meta.Accel, res.Meta.AccelReason = string(gs[0].m.Accel.Kind), gs[0].m.Accel.Reason
	res.Meta.Source = gs[0].m.Kernel.Meta.SourcePackage + " " + gs[0].m.Kernel.Meta.SourceVersion
	res.Meta.KernelConfig = gs[0].m.Kernel.Meta.Config
	res.Meta.GuestMiB, res.Meta.GuestCPUs = o.Guest.MemoryMiB, o.Guest.CPUs
	res.Meta.Plan, res.Meta.Quick, res.Meta.Reps, res.Meta.Seed = plan.Name, plan.Name == "quick", plan.Reps, o.Seed
	if len(figs) < len(figures) {
		res.Meta.Figures = figs
	}
	measure := func(g *guest, fig, reps string) error {
		cmd := fmt.Sprintf("ldt-bench -figure %s -plan %s %s -seed %d -trackers %s", fig, plan.Name, reps, o.Seed, strings.Join(g.kr.Trackers, ","))
		var stderr io.Writer = io.Discard
		if o.Progress != nil {
			stderr = o.Progress
		}
		// Under TCG on a shared host one full figure runs for an hour.
		limit := 3 * time.Hour
		if plan.Name == "quick" {
			limit = 10 * time.Minute
		}
		fctx, cancel := context.WithTimeout(ctx, limit)
		out, err := g.m.RunWith(fctx, cmd, channel.RunOptions{Stderr: stderr})
		cancel()
		log := g.m.ConsoleLog()
		for _, rep := range report.Parse(log[g.scanned:]) {
			res.Reports = append(res.Reports, g.kr.Spec.Name+": "+fig+": "+rep.String())
		}
		g.scanned = len(log)
		if err != nil {
			return fmt.Errorf("kernel %s: figure %s: %w", g.kr.Spec.Name, fig, err)
		}
		if out.Code != 0 {
			return fmt.Errorf("kernel %s: figure %s: ldt-bench exited %d: %s", g.kr.Spec.Name, fig, out.Code, strings.ReplaceAll(lines.Last(strings.TrimSpace(string(out.Stderr)), 5), "\n", " | "))
		}
		if err := g.kr.merge(fig, lastJSON(out.Stdout)); err != nil {
			return fmt.Errorf("kernel %s: figure %s: %w", g.kr.Spec.Name, fig, err)
		}
		return nil
	}
	if len(gs) == 1 {
		for _, fig := range figs {
			t := time.Now()
			if err := measure(gs[0], fig, fmt.Sprintf("-reps %d", plan.Reps)); err != nil {
				return res.finish(gs, start, err)
			}
			o.logf("figure %s measured in %.0fs", fig, time.Since(t).Seconds())
		}
	} else {
		for rep := 0; rep < plan.Reps; rep++ {
			var names []string
			for _, i := range kernelOrder(o.Seed, rep, len(gs)) {
				g := gs[i]
				names = append(names, g.kr.Spec.Name)
				t := time.Now()
				for _, fig := range figs {
					if err := measure(g, fig, fmt.Sprintf("-rep %d", rep)); err != nil {
						return res.finish(gs, start, err)
					}
				}
				o.logf("repetition %d of %d: kernel %s measured in %.0fs", rep+1, plan.Reps, g.kr.Spec.Name, time.Since(t).Seconds())
			}
			res.Meta.KernelOrder = append(res.Meta.KernelOrder, names)
		}
	}
	for _, g := range gs {
		if err := g.m.Shutdown(ctx); err != nil {
			o.logf("warning: clean poweroff of kernel %s failed: %v", g.kr.Spec.Name, err)
		}
	}
	stopLoad()
	return res.finish(gs, start, nil)
}

// finish puts the kernels' samples into r: the figures, claims and plots
// are the last kernel's (in an A/B, the one the others are compared to
// last: list it last), every kernel's samples are in Kernels; then the
// sanity checks, per kernel.
func (r *Result) finish(gs []*guest, start time.Time, err error) (*Result, error) {
	r.Meta.Seconds = time.Since(start).Seconds()
	r.Meta.HostLoad = append(r.Meta.HostLoad, LoadAvg())
	last := gs[len(gs)-1].kr
	one := last.result(r.Meta)
	r.Meta, r.WriteOnly, r.Timeline, r.Redis, r.Collect, r.GUP = one.Meta, one.WriteOnly, one.Timeline, one.Redis, one.Collect, one.GUP
	if len(gs) > 1 {
		r.Kernels = nil
		for _, g := range gs {
			r.Kernels = append(r.Kernels, g.kr)
		}
	}
	if err != nil {
		return r, err
	}
	for _, g := range gs {
		for _, p := range Sanity(g.kr.result(r.Meta)) {
			if len(gs) > 1 {
				p = g.kr.Spec.Name + ": " + p
			}
			r.Problems = append(r.Problems, p)
		}
	}
	return r, nil
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
	if r.WriteOnly == nil && r.Timeline == nil && r.Redis == nil && r.Collect == nil && r.GUP == nil {
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
