// Package migrate is the host side of `labctl migrate` (issue 21): the
// paper's iterative migration of redis, once per tracker. In a guest
// sized for pressure, redis-server runs under redis-benchmark load; the
// in-guest migrator (guest/migrate, ldt-migrate) copies its memory in
// pre-copy rounds driven by the tracker, freezes it, dumps it with CRIU
// and replaces CRIU's pages with its own copy; the server is restored
// from that image on the same guest or, with ToGuest, on a second guest
// (the image crosses the host). The restored server must hold the data
// set redis digested before the freeze, answer SET/GET and survive a
// redis-benchmark run, and the image must equal the frozen process page
// for page (cell.RunMigrate judges).
package migrate

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"ldtlab/guest/result"
	"ldtlab/images/rootfs"
	"ldtlab/orchestrator/cell"
	"ldtlab/orchestrator/lab"
	"ldtlab/orchestrator/preset"
	"ldtlab/orchestrator/vm"
)

// Trackers are the default trackers, in display order: pagemap-scan
// tracks only its own process, so it is N/A here (with the reason).
var Trackers = []string{"ldt", "softdirty", "naive", "pagemap-scan"}

// Options select the runs.
type Options struct {
	Guest    lab.Options
	Trackers []string
	Migrate  cell.MigrateOptions
	// ToGuest restores on a second guest: a real migration.
	ToGuest  bool
	Progress io.Writer
}

// Result is the whole run, written as JSON.
type Result struct {
	Started  time.Time           `json:"started"`
	Kernel   string              `json:"kernel"`
	Variant  string              `json:"variant"`
	Accel    string              `json:"accel"`
	Options  cell.MigrateOptions `json:"options"`
	ToGuest  bool                `json:"to_guest"`
	Runs     []*cell.Migrate     `json:"runs"`
	Problems []string            `json:"problems,omitempty"`
	Failures int                 `json:"failures"`
	Seconds  float64             `json:"seconds"`
}

type runner struct {
	o        Options
	src, dst *lab.Machine
}

func (r *runner) logf(format string, args ...any) {
	if r.o.Progress != nil {
		fmt.Fprintf(r.o.Progress, format, args...)
	}
}

func (r *runner) close() {
	for _, m := range []*lab.Machine{r.src, r.dst} {
		if m != nil {
			m.Close()
		}
	}
	r.src, r.dst = nil, nil
}

// boot (re)starts the guests, the two of a to-guest run at once.
func (r *runner) boot(ctx context.Context) error {
	r.close()
	names := []string{r.o.Guest.Name}
	if r.o.ToGuest {
		names = append(names, r.o.Guest.Name+"-dst")
	}
	ms := make([]*lab.Machine, len(names))
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			o := r.o.Guest
			o.Name = n
			ms[i], errs[i] = lab.Boot(ctx, o)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			for _, m := range ms {
				if m != nil {
					m.Close()
				}
			}
			return fmt.Errorf("booting %s: %w", names[i], err)
		}
	}
	r.src = ms[0]
	r.dst = ms[0]
	if r.o.ToGuest {
		r.dst = ms[1]
	}
	for _, m := range ms {
		r.logf("guest %s: kernel %s (%s), %s, %d MiB, %d vCPUs, booted in %.1fs\n", m.Name, m.Kernel.Meta.KernelRelease,
			r.o.Guest.KernelOptions().Variant(), m.Accel.Kind, r.o.Guest.MemoryMiB, r.o.Guest.CPUs, m.BootTime.Seconds())
	}
	return nil
}

// Run migrates redis once per tracker. The error is for failures of the
// lab itself; unexpected outcomes are counted in Result.Failures.
func Run(ctx context.Context, o Options) (*Result, error) {
	preset.Pressure(&o.Guest)
	if o.Guest.Name == "check" {
		o.Guest.Name = "migrate"
	}
	files, err := preset.RedisFiles()
	if err != nil {
		return nil, err
	}
	o.Guest.Extra = rootfs.AddFiles(o.Guest.Extra, files...)
	trackers := o.Trackers
	if len(trackers) == 0 {
		trackers = Trackers
	}
	start := time.Now()
	res := &Result{Started: start.UTC(), Options: o.Migrate, ToGuest: o.ToGuest}
	r := &runner{o: o}
	defer r.close()
	if err := r.boot(ctx); err != nil {
		return nil, err
	}
	res.Kernel = r.src.Kernel.Meta.KernelRelease
	res.Variant = o.Guest.KernelOptions().Variant()
	res.Accel = string(r.src.Accel.Kind)
	for _, t := range trackers {
		c := &cell.Cell{Name: "migrate/" + t, Kind: cell.KindMigrate}
		t0 := time.Now()
		err := cell.RunMigrate(ctx, r.src, r.dst, cell.Spec{Kind: cell.KindMigrate, Tracker: t, Migrate: o.Migrate}, c)
		mg := c.Migrate
		if err != nil && mg.Error == "" {
			mg.Error = err.Error()
		}
		mg.Took = time.Since(t0).Seconds()
		res.Runs = append(res.Runs, mg)
		r.logf("%s  (%.0fs)\n", mg.Line(), mg.Took)
		if ctx.Err() != nil {
			return res, ctx.Err()
		}
		if err != nil && !vm.IsGuestFault(err) {
			return res, err
		}
		if err != nil {
			// The next tracker gets fresh guests.
			if berr := r.boot(ctx); berr != nil {
				return res, fmt.Errorf("booting fresh guests after migrate/%s failed (%v): %w", t, cell.FirstLine(err.Error()), berr)
			}
		}
	}
	// Whatever the kernels printed after the last run fails it too.
	seen := map[*lab.Machine]bool{}
	for _, m := range []*lab.Machine{r.src, r.dst} {
		if m == nil || seen[m] {
			continue
		}
		seen[m] = true
		for _, rep := range m.Reports() {
			title := rep.String()
			known := false
			for _, mg := range res.Runs {
				known = known || slices.Contains(mg.Reports, title)
			}
			if !known {
				res.Problems = append(res.Problems, fmt.Sprintf("kernel report on %s outside the runs: %s", m.Name, title))
			}
		}
	}
	res.Failures = len(res.Problems)
	for _, mg := range res.Runs {
		if mg.Failed() {
			res.Failures++
		}
	}
	res.Seconds = time.Since(start).Seconds()
	return res, nil
}

// Summary prints the per-tracker lines and the verdict counts.
func Summary(w io.Writer, res *Result) {
	where := "restored on the same guest"
	if res.ToGuest {
		where = "restored on a second guest (the image crosses the host)"
	}
	pressure := "no memory pressure"
	if res.Options.Pressure {
		pressure = "under memory pressure (redis's memory.high at half its data set, swapping)"
	}
	fmt.Fprintf(w, "\nldtlab migrate: kernel %s (%s), %s, %s, %s, %.0fs\n\n", res.Kernel, res.Variant, res.Accel, where, pressure, res.Seconds)
	for _, mg := range res.Runs {
		fmt.Fprintln(w, mg.Line())
	}
	for _, p := range res.Problems {
		fmt.Fprintf(w, "problem: %s\n", p)
	}
	n := map[result.Verdict]int{}
	var keys []result.Verdict
	for _, mg := range res.Runs {
		if n[mg.Verdict] == 0 {
			keys = append(keys, mg.Verdict)
		}
		n[mg.Verdict]++
	}
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%d %s", n[k], k))
	}
	fmt.Fprintf(w, "\n%d runs: %s; %d failure(s)\n", len(res.Runs), strings.Join(parts, ", "), res.Failures)
}
