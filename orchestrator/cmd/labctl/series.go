package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"ldtlab/images/kernel"
	"ldtlab/internal/fileutil"
	"ldtlab/orchestrator/bisect"
	"ldtlab/orchestrator/lab"
	"ldtlab/orchestrator/vm"
)

// checkpatch and series-check prove the series is well-formed and
// bisectable: style, and every prefix builds (CONFIG_LDT=y and =n) and
// boots.
func init() {
	register(&command{
		name:    "checkpatch",
		summary: "run the kernel source's scripts/checkpatch.pl on every patch of the series (only the missing Signed-off-by is allowed)",
		run: func(ctx context.Context, fs *flag.FlagSet, args []string) error {
			repo, err := repoRoot()
			if err != nil {
				return err
			}
			bad, err := runCheckpatch(ctx, repo)
			if err != nil {
				return err
			}
			if bad > 0 {
				return fmt.Errorf("checkpatch: %d patch(es) with errors or warnings", bad)
			}
			return nil
		},
	})

	var f struct {
		config, ldt, accel, jsonOut string
		prefixes                    string
		mem                         int
		noBoot, noCheckpatch        bool
	}
	register(&command{
		name:    "series-check",
		summary: "prove the series bisectable: every prefix builds with CONFIG_LDT=y and =n (incrementally, one work directory each) and boots to its agent and runs `true`; checkpatch first",
		setup: func(fs *flag.FlagSet) {
			fs.StringVar(&f.config, "config", "debug", "kernel configuration: debug, perf or sanitize")
			fs.StringVar(&f.ldt, "ldt", "y,n", "CONFIG_LDT values to build every prefix with, in order")
			fs.StringVar(&f.prefixes, "prefixes", "", "prefixes (numbers of patches) in the order to build them: a comma list of N and N-M, M-N runs downwards (e.g. 6-9,5-1); default 1 to the whole series")
			fs.BoolVar(&f.noBoot, "no-boot", false, "build only")
			fs.BoolVar(&f.noCheckpatch, "no-checkpatch", false, "skip checkpatch")
			fs.StringVar(&f.accel, "accel", "auto", "accelerator for the boots: auto, kvm or tcg")
			fs.IntVar(&f.mem, "mem", 0, "guest memory in MiB (0 = 1024)")
			fs.StringVar(&f.jsonOut, "json", "", "write every step here (default: series-check-last.json in the state directory)")
		},
		run: func(ctx context.Context, fs *flag.FlagSet, args []string) error {
			repo, err := repoRoot()
			if err != nil {
				return err
			}
			series, err := kernel.ReadSeries(repo)
			if err != nil {
				return err
			}
			order, err := prefixOrder(f.prefixes, len(series))
			if err != nil {
				return usageError{err}
			}
			var ldts []string
			for _, v := range splitList(f.ldt) {
				if v != "y" && v != "n" {
					return usageError{fmt.Errorf("--ldt %s: a list of y and n", f.ldt)}
				}
				ldts = append(ldts, v)
			}
			failed := 0
			if !f.noCheckpatch {
				bad, err := runCheckpatch(ctx, repo)
				if err != nil {
					return err
				}
				failed += bad
			}
			out := f.jsonOut
			if out == "" {
				state, serr := lab.EnsureStateDir()
				if serr != nil {
					return &vm.InfraError{Op: "writing the series-check result", Err: serr}
				}
				out = filepath.Join(state, "series-check-last.json")
			}
			sc := seriesCheck{Machine: machineName(), CPUs: runtime.NumCPU(), Started: time.Now().UTC(), Config: f.config}
			save := func() error {
				if err := fileutil.WriteJSON(out, sc); err != nil {
					return &vm.InfraError{Op: "writing the series-check result", Err: err}
				}
				return nil
			}
			for _, ldt := range ldts {
				for _, k := range order {
					st := seriesStep(ctx, repo, series, k, f.config, ldt, !f.noBoot, lab.Options{Accel: f.accel, MemoryMiB: f.mem})
					if ctx.Err() != nil {
						return ctx.Err()
					}
					sc.Steps = append(sc.Steps, st)
					if !st.OK {
						failed++
					}
					fmt.Printf("[series-check] %s CONFIG_LDT=%s: %s\n", st.Prefix, ldt, st.line())
					if err := save(); err != nil {
						return err
					}
					if st.Infra != "" {
						return &vm.InfraError{Op: "series-check " + st.Prefix, Err: errors.New(st.Infra)}
					}
				}
			}
			sc.Seconds = time.Since(sc.Started).Seconds()
			if err := save(); err != nil {
				return err
			}
			sc.table(os.Stdout)
			fmt.Printf("steps: %s\n", out)
			if failed > 0 {
				return fmt.Errorf("series-check: %d failure(s)", failed)
			}
			return nil
		},
	})
}

// prefixOrder reads --prefixes: "" is 1..n; "6-9,5-1" is 6 7 8 9 5 4 3 2 1.
func prefixOrder(spec string, n int) ([]int, error) {
	if strings.TrimSpace(spec) == "" {
		var all []int
		for k := 1; k <= n; k++ {
			all = append(all, k)
		}
		return all, nil
	}
	var out []int
	seen := map[int]bool{}
	for _, item := range strings.Split(spec, ",") {
		a, b, isRange := strings.Cut(strings.TrimSpace(item), "-")
		lo, err1 := strconv.Atoi(strings.TrimSpace(a))
		hi, err2 := lo, error(nil)
		if isRange {
			hi, err2 = strconv.Atoi(strings.TrimSpace(b))
		}
		if err1 != nil || err2 != nil || lo < 1 || hi < 1 || lo > n || hi > n {
			return nil, fmt.Errorf("--prefixes %q: %q is not a prefix or a range of prefixes between 1 and %d", spec, item, n)
		}
		step := 1
		if hi < lo {
			step = -1
		}
		for k := lo; ; k += step {
			if !seen[k] {
				seen[k] = true
				out = append(out, k)
			}
			if k == hi {
				break
			}
		}
	}
	return out, nil
}

func runCheckpatch(ctx context.Context, repo string) (bad int, err error) {
	logf := func(format string, a ...any) { fmt.Fprintf(os.Stderr, "[checkpatch] "+format+"\n", a...) }
	res, err := kernel.Checkpatch(ctx, repo, "", logf)
	if err != nil {
		return 0, err
	}
	for _, r := range res {
		if r.OK() {
			fmt.Printf("[checkpatch] %-64s ok (%s)\n", r.Patch, allowedNote(r.Allowed))
			continue
		}
		bad++
		fmt.Printf("[checkpatch] %-64s %d problem(s):\n", r.Patch, len(r.Problems))
		for _, p := range r.Problems {
			fmt.Printf("    %s\n", p)
		}
		fmt.Printf("  checkpatch.pl output:\n%s\n", indent(r.Output, "    "))
	}
	return bad, nil
}

func allowedNote(allowed []string) string {
	if len(allowed) == 0 {
		return "clean"
	}
	var types []string
	for _, a := range allowed {
		f := strings.Fields(a)
		if len(f) >= 2 {
			types = append(types, strings.TrimSuffix(f[1], ":"))
		}
	}
	return "allowed: " + strings.Join(types, ", ")
}

func indent(s, pre string) string {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		b.WriteString(pre + l + "\n")
	}
	return b.String()
}

type seriesCheck struct {
	Machine string       `json:"machine"`
	CPUs    int          `json:"cpus"`
	Started time.Time    `json:"started"`
	Config  string       `json:"config"`
	Steps   []seriesStat `json:"steps"`
	Seconds float64      `json:"seconds,omitempty"`
}

type seriesStat struct {
	Prefix    string  `json:"prefix"` // --patches value
	LastPatch string  `json:"last_patch"`
	LDT       string  `json:"config_ldt"`
	Key       string  `json:"key,omitempty"`
	Cached    bool    `json:"cached"`
	BuildSecs float64 `json:"build_seconds"`
	// Cold: the work directory held no earlier build (a full compile).
	Cold      bool     `json:"cold,omitempty"`
	LoadStart string   `json:"load_start"` // /proc/loadavg before the build
	LoadEnd   string   `json:"load_end"`
	BuildErr  string   `json:"build_error,omitempty"`
	Booted    bool     `json:"booted"`
	BootSecs  float64  `json:"boot_seconds,omitempty"` // backend start → agent answered
	Accel     string   `json:"accel,omitempty"`
	BootErr   string   `json:"boot_error,omitempty"`
	Reports   []string `json:"kernel_reports,omitempty"`
	Infra     string   `json:"lab_failure,omitempty"`
	OK        bool     `json:"ok"`
}

func (s seriesStat) line() string {
	b := fmt.Sprintf("built in %.0fs", s.BuildSecs)
	if s.Cached {
		b = "cached"
	} else if s.Cold {
		b += " (cold)"
	}
	switch {
	case s.BuildErr != "":
		return "BUILD FAILED: " + s.BuildErr
	case s.Infra != "":
		return b + "; LAB FAILURE: " + s.Infra
	case s.BootErr != "":
		return b + "; BOOT FAILED: " + s.BootErr
	case len(s.Reports) > 0:
		return b + "; kernel reports: " + strings.Join(s.Reports, "; ")
	case s.Booted:
		return fmt.Sprintf("%s; booted in %.1fs (%s), `true` ok", b, s.BootSecs, s.Accel)
	}
	return b
}

// seriesStep builds prefix k with CONFIG_LDT=ldt and, with boot, boots it
// and runs `true`.
func seriesStep(ctx context.Context, repo string, series []string, k int, config, ldt string, boot bool, guest lab.Options) seriesStat {
	st := seriesStat{Prefix: bisect.PrefixSpec(series, k), LastPatch: series[k-1], LDT: ldt}
	ko := kernel.Options{Repo: repo, Config: config, LDTOff: ldt == "n"}
	if k < len(series) {
		ko.Patches = st.Prefix
	}
	st.LoadStart = loadAvg()
	t := time.Now()
	kb, hit, err := kernel.Ensure(ctx, ko)
	st.BuildSecs, st.LoadEnd = time.Since(t).Seconds(), loadAvg()
	if err != nil {
		st.BuildErr = firstLineOf(err.Error())
		fmt.Fprintf(os.Stderr, "%v\n", err)
		return st
	}
	st.Key, st.Cached, st.Cold = kb.Meta.Key, hit, !hit && kb.Meta.Cold
	if !boot {
		st.OK = true
		return st
	}
	o := guest
	o.Repo, o.Name, o.Config, o.Patches, o.LDTOff, o.NoBuild = repo, "series", config, ko.Patches, ko.LDTOff, true
	m, err := lab.Boot(ctx, o)
	if err != nil {
		var ie *vm.InfraError
		if errors.As(err, &ie) {
			st.Infra = firstLineOf(err.Error())
		} else {
			st.BootErr = firstLineOf(err.Error())
		}
		return st
	}
	defer m.Close()
	st.BootSecs, st.Accel = m.BootTime.Seconds(), string(m.Accel.Kind)
	r, err := m.Run(ctx, "true")
	switch {
	case err != nil && vm.IsGuestFault(err):
		st.BootErr = "`true`: " + firstLineOf(err.Error())
	case err != nil:
		st.Infra = firstLineOf(err.Error())
	case r.Code != 0:
		st.BootErr = fmt.Sprintf("`true` exited %d", r.Code)
	default:
		st.Booted = true
	}
	for _, rep := range m.Reports() {
		st.Reports = append(st.Reports, vm.Headline(string(rep.Type), rep.Title))
	}
	st.OK = st.Booted && len(st.Reports) == 0
	return st
}

func (sc seriesCheck) table(w *os.File) {
	fmt.Fprintf(w, "\nseries-check (%s config) on %s, %d CPUs, %.0fs\n", sc.Config, sc.Machine, sc.CPUs, sc.Seconds)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "PREFIX\tLDT\tBUILD\tLOAD (start → end)\tBOOT\tRESULT\n")
	for _, s := range sc.Steps {
		build := fmt.Sprintf("%.0fs", s.BuildSecs)
		if s.Cached {
			build = "cached"
		} else if s.Cold {
			build += " cold"
		}
		boot := "-"
		if s.Booted {
			boot = fmt.Sprintf("%.1fs %s", s.BootSecs, s.Accel)
		}
		res := "ok"
		if !s.OK {
			res = "FAIL: " + strings.TrimPrefix(s.line(), "cached; ")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s → %s\t%s\t%s\n", s.Prefix, s.LDT, build, s.LoadStart, s.LoadEnd, boot, res)
	}
	tw.Flush()
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func machineName() string {
	h, _ := os.Hostname()
	model := ""
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				_, model, _ = strings.Cut(l, ":")
				model = strings.TrimSpace(model)
				break
			}
		}
	}
	return fmt.Sprintf("%s (%s)", h, model)
}
