package coverage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"ldtlab/images/kernel"
	"ldtlab/orchestrator/cell"
	"ldtlab/orchestrator/check"
	"ldtlab/orchestrator/fuzz"
	"ldtlab/orchestrator/lab"
	"ldtlab/orchestrator/stress"
	"ldtlab/orchestrator/vm"
)

// Jobs are the jobs a run knows, in the default order. "sh:CMD" runs CMD
// in the guest as a job of its own (a scenario being written).
var Jobs = []string{"check", "selftest", "stress", "fuzz"}

// Options select what a run does.
type Options struct {
	Quick bool
	Jobs  []string // nil = Jobs
	Seed  uint64
	Log   io.Writer
}

// gcovRoot is where the guest's kernel exposes the counters.
const gcovRoot = "/sys/kernel/debug/gcov"

// ValidJob says whether name is a job Run knows.
func ValidJob(name string) error {
	if strings.HasPrefix(name, "sh:") && len(name) > 3 {
		return nil
	}
	for _, j := range Jobs {
		if j == name {
			return nil
		}
	}
	return fmt.Errorf("unknown job %q: use %s, or sh:COMMAND", name, strings.Join(Jobs, ", "))
}

func (o Options) logf(format string, args ...any) {
	if o.Log != nil {
		fmt.Fprintf(o.Log, "[coverage] "+format+"\n", args...)
	}
}

// Collect resets the counters of the coverage kernel booted in m, runs
// the jobs, and copies the counters (.gcda files) into dir/gcda. A job
// that fails is recorded and the next one runs: what it executed still
// counts. The error is a guest fault or the lab's.
func Collect(ctx context.Context, m *lab.Machine, o Options, dir string) ([]Job, []string, error) {
	var problems []string
	if _, err := m.Kernel.LoadGcovManifest(); err != nil {
		return nil, nil, err
	}
	res, err := m.Run(ctx, "test -w "+gcovRoot+"/reset && echo 0 > "+gcovRoot+"/reset")
	if err != nil {
		return nil, nil, fmt.Errorf("resetting the gcov counters: %w", err)
	}
	if res.Code != 0 {
		return nil, nil, fmt.Errorf("resetting the gcov counters: %s is not writable (a kernel without CONFIG_GCOV_KERNEL?): %s", gcovRoot+"/reset", strings.TrimSpace(string(res.Stderr)))
	}
	o.logf("counters reset; jobs: %s", strings.Join(o.jobs(), " "))
	var jobs []Job
	for i, name := range o.jobs() {
		o.logf("job %d/%d: %s", i+1, len(o.jobs()), name)
		start := time.Now()
		j, err := o.runJob(ctx, m, name)
		j.Name, j.Seconds = name, time.Since(start).Seconds()
		jobs = append(jobs, j)
		o.logf("job %s: %s in %.0f s (%s) %s", name, j.Verdict, j.Seconds, m.Accel.Kind, j.Detail)
		if j.Verdict != "PASS" {
			problems = append(problems, fmt.Sprintf("job %s: %s %s", name, j.Verdict, j.Detail))
		}
		if err != nil {
			if vm.IsGuestFault(err) {
				// The guest is gone: its counters with it.
				return jobs, problems, fmt.Errorf("job %s: %w", name, err)
			}
			return jobs, problems, err
		}
	}
	o.logf("copying the counters out of the guest")
	n, err := fetchGcda(ctx, m, filepath.Join(dir, "gcda"))
	if err != nil {
		return jobs, problems, err
	}
	o.logf("%d .gcda files copied", n)
	return jobs, problems, nil
}

func (o Options) jobs() []string {
	if len(o.Jobs) > 0 {
		return o.Jobs
	}
	return Jobs
}

func (o Options) runJob(ctx context.Context, m *lab.Machine, name string) (Job, error) {
	var j Job
	switch {
	case name == "check":
		trackers := check.Trackers
		if o.Quick {
			trackers = []string{"ldt"}
		}
		all, err := cell.List(ctx, m)
		if err != nil {
			return Job{Verdict: "ERROR", Detail: err.Error()}, err
		}
		failed, n := []string{}, 0
		for _, s := range all {
			for _, t := range trackers {
				s := s
				c, err := cell.RunCell(ctx, m, cell.Spec{Kind: cell.KindScenario, Scenario: &s, Tracker: t, Seed: o.Seed, Vanilla: !m.Kernel.Meta.HasDevice()})
				n++
				if c != nil && c.Failed() {
					failed = append(failed, fmt.Sprintf("%s/%s %s", s.Name, t, c.Verdict))
				}
				if err != nil {
					return Job{Verdict: "ERROR", Detail: fmt.Sprintf("%d cells, then %s/%s: %v", n, s.Name, t, err)}, err
				}
				if n%10 == 0 {
					o.logf("check: %d of %d cells", n, len(all)*len(trackers))
				}
			}
		}
		j.Command = fmt.Sprintf("%d scenarios × %s", len(all), strings.Join(trackers, ","))
		j.Verdict, j.Detail = verdict(len(failed) == 0), fmt.Sprintf("%d cells, %d failed %s", n, len(failed), strings.Join(failed, ", "))
	case name == "selftest":
		j.Command = "ldt-selftest -v"
		res, err := m.Run(ctx, j.Command)
		if err != nil {
			return Job{Command: j.Command, Verdict: "ERROR", Detail: err.Error()}, err
		}
		j.Verdict, j.Detail = verdict(res.Code == 0), fmt.Sprintf("exit %d", res.Code)
	case name == "stress":
		so := stress.Options{Duration: 30 * time.Second, Pages: 16384, Seed: o.Seed, THP: true, Trackers: []string{"ldt", "pagemap-scan", "naive"}}
		if o.Quick {
			so.Duration, so.Trackers = 10*time.Second, []string{"ldt"}
		}
		runs, err := stress.Job(ctx, m, so, o.Log)
		var bad []string
		for _, r := range runs {
			if r.Failed() {
				bad = append(bad, fmt.Sprintf("%s thp=%v %s", r.Tracker, r.THP, r.Verdict))
			}
		}
		j.Command = fmt.Sprintf("ldt-stress %s per run, trackers %s, thp", so.Duration, strings.Join(so.Trackers, ","))
		j.Verdict, j.Detail = verdict(err == nil && len(bad) == 0), fmt.Sprintf("%d runs %s", len(runs), strings.Join(bad, ", "))
		if err != nil {
			j.Detail += ": " + err.Error()
			return j, err
		}
	case name == "fuzz":
		fo := fuzz.Options{Duration: 5 * time.Minute, Seed: o.Seed, NoMinimize: true}
		if o.Quick {
			fo.Duration, fo.Trackers = 90*time.Second, []string{"ldt"}
		}
		r, err := fuzz.RunOne(ctx, m, fo, o.Log)
		j.Command = r.Command
		j.Verdict = string(r.Verdict)
		if r.Summary != nil {
			j.Detail = fmt.Sprintf("%d sequences, %d runs, %d pages checked", r.Summary.Sequences, r.Summary.Runs, r.Summary.Checked)
		}
		if r.Error != "" {
			j.Detail += " " + r.Error
		}
		if err != nil {
			return j, err
		}
	case strings.HasPrefix(name, "sh:"):
		j.Command = strings.TrimPrefix(name, "sh:")
		res, err := m.Run(ctx, j.Command)
		if err != nil {
			return Job{Command: j.Command, Verdict: "ERROR", Detail: err.Error()}, err
		}
		j.Verdict, j.Detail = verdict(res.Code == 0), fmt.Sprintf("exit %d", res.Code)
	default:
		return j, ValidJob(name)
	}
	return j, nil
}

func verdict(ok bool) string {
	if ok {
		return "PASS"
	}
	return "FAIL"
}

// fetchGcda copies every .gcda of the guest's debugfs into local. debugfs
// reports these files with size 0 (they are generated on read), so they
// are first read into a plain directory with cat.
func fetchGcda(ctx context.Context, m *lab.Machine, local string) (int, error) {
	const tmp = "/tmp/ldtlab-gcda"
	script := "set -e; rm -rf " + tmp + "; mkdir -p " + tmp + "; cd " + gcovRoot + "; " +
		"find . -name '*.gcda' | while read -r f; do mkdir -p " + tmp + "/$(dirname \"$f\"); cat \"$f\" > " + tmp + "/\"$f\"; done"
	res, err := m.Run(ctx, script)
	if err != nil {
		return 0, fmt.Errorf("reading the counters in the guest: %w", err)
	}
	if res.Code != 0 {
		return 0, fmt.Errorf("reading the counters in the guest: exit %d: %s", res.Code, strings.TrimSpace(string(res.Stderr)))
	}
	if err := os.RemoveAll(local); err != nil {
		return 0, err
	}
	if err := m.Download(ctx, tmp, local); err != nil {
		return 0, fmt.Errorf("copying the counters to the host: %w", err)
	}
	n := 0
	filepath.Walk(local, func(p string, info os.FileInfo, err error) error {
		if err == nil && strings.HasSuffix(p, ".gcda") {
			n++
		}
		return nil
	})
	if n == 0 {
		return 0, errors.New("the guest's " + gcovRoot + " holds no .gcda file: no object of this kernel has gcov counters")
	}
	return n, nil
}

// Analyze maps the counters in gcdaDir (as Collect left them) onto the
// series lines of kb and fills r.
func Analyze(ctx context.Context, kb *kernel.Build, gcdaDir string, r *Report) error {
	man, err := kb.LoadGcovManifest()
	if err != nil {
		return err
	}
	g := filepath.Join(kb.Dir, kernel.GcovDir)
	origins, err := SeriesLines(ctx, filepath.Join(g, "pristine"), filepath.Join(g, "patches"), man.Patches)
	if err != nil {
		return fmt.Errorf("finding the series' lines: %w", err)
	}
	// The lines found must be the tree that was compiled.
	for f, o := range origins {
		if strings.HasSuffix(f, "Makefile") || strings.HasSuffix(f, "Kbuild") {
			continue // the coverage build edits these
		}
		b, err := os.ReadFile(filepath.Join(g, "src", f))
		if err != nil {
			return fmt.Errorf("the kernel entry lacks its copy of %s: %w", f, err)
		}
		if strings.Join(splitLines(b), "\n") != strings.Join(o.Lines, "\n") {
			return fmt.Errorf("applying the saved patches to the pristine %s does not give the file the kernel was built from", f)
		}
	}
	counts := Counts{}
	built := map[string]bool{}
	for _, obj := range man.Objects {
		stem := strings.TrimSuffix(obj, ".o")
		data := filepath.Join(gcdaDir, strings.TrimPrefix(man.ObjDir, "/"), stem+".gcda")
		if _, err := os.Stat(data); err != nil {
			r.Problems = append(r.Problems, fmt.Sprintf("no counters for %s in the guest (not linked into the kernel?)", obj))
			continue
		}
		doc, err := RunGcov(ctx, filepath.Join(g, "notes", stem+".gcno"), data)
		if err != nil {
			return err
		}
		counts.Add(doc, man.SrcDir)
		built[stem+".c"] = true
	}
	Map(r, origins, counts, built)
	r.SeriesSHA256 = seriesSHA256(filepath.Join(g, "patches"), man.Patches)
	return nil
}

// seriesSHA256 is `cat $(cat series) | sha256sum` of the built patches.
func seriesSHA256(dir string, names []string) string {
	h := sha256.New()
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			return "unreadable"
		}
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Snapshot maps the counters of the coverage kernel booted in m as they
// are now, without resetting them, into a report (the gcda files under
// dir/gcda): what a long run (the soak) records as it goes, to plot
// executed series lines over time.
func Snapshot(ctx context.Context, m *lab.Machine, dir string) (*Report, error) {
	if _, err := fetchGcda(ctx, m, filepath.Join(dir, "gcda")); err != nil {
		return nil, err
	}
	r := &Report{Started: time.Now().UTC(), KernelKey: m.Kernel.Meta.Key, KernelRelease: m.Kernel.Meta.KernelRelease,
		KernelConfig: m.Kernel.Meta.Config, Accel: string(m.Accel.Kind)}
	if err := Analyze(ctx, m.Kernel, filepath.Join(dir, "gcda"), r); err != nil {
		return nil, err
	}
	return r, nil
}
