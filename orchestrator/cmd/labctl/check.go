package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"ldtlab/internal/fileutil"
	"ldtlab/orchestrator/check"
	"ldtlab/orchestrator/lab"
	"ldtlab/orchestrator/vm"
)

func init() {
	var g guestFlags
	var f struct {
		smoke, noCompare, noCheckpoint bool
		noMigrate                      bool
		scenarios, trackers, jsonOut   string
		seed                           uint64
		epochs                         int
		stress                         time.Duration
	}
	register(&command{
		name:    "check",
		summary: "the main job: every scenario under every tracker, the LDT/soft-dirty comparison, the checkpoint oracle and the migration of redis",
		setup: func(fs *flag.FlagSet) {
			g.register(fs)
			fs.BoolVar(&f.smoke, "smoke", false, "only boot and check the lab's plumbing")
			fs.StringVar(&f.scenarios, "scenario", "", "comma-separated scenarios (default all; `ldt-check -list` in a guest lists them)")
			fs.StringVar(&f.trackers, "tracker", "", "comma-separated trackers: ldt, naive, softdirty, pagemap-scan (default all); the mutants mutant-all, mutant-noswapin, mutant-pfn on request")
			fs.Uint64Var(&f.seed, "seed", 1, "seed of every scenario")
			fs.IntVar(&f.epochs, "epochs", 0, "epochs per scenario (0 = each scenario's default)")
			fs.BoolVar(&f.noCompare, "no-compare", false, "skip the LDT vs soft-dirty comparison")
			fs.BoolVar(&f.noCheckpoint, "no-checkpoint", false, "skip the incremental checkpoint oracle")
			fs.BoolVar(&f.noMigrate, "no-migrate", false, "skip the short migration of redis (labctl migrate --rounds 3 --keys 8000 --pressure per tracker)")
			fs.StringVar(&f.jsonOut, "json", "", "write the full result here (default: check-last.json in the state directory)")
			fs.DurationVar(&f.stress, "stress", 8*time.Second, "race hunt per tracker after the catalogue (labctl stress runs it longer); 0 skips it")
		},
		run: func(ctx context.Context, fs *flag.FlagSet, args []string) error {
			repo, err := repoRoot()
			if err != nil {
				return err
			}
			o := g.options(repo, "check")
			o.DataMiB = 256
			if f.smoke {
				return smoke(ctx, o)
			}
			co := check.Options{
				Guest: o, Seed: f.seed, Epochs: f.epochs,
				Scenarios: splitList(f.scenarios), Trackers: splitList(f.trackers),
				Compare: !f.noCompare, Checkpoint: !f.noCheckpoint, Migrate: !f.noMigrate, Stress: f.stress, Progress: os.Stdout,
			}
			res, err := check.Run(ctx, co)
			if err != nil {
				return err
			}
			check.Table(os.Stdout, res)
			out := f.jsonOut
			if out == "" {
				state, serr := lab.EnsureStateDir()
				if serr != nil {
					return &vm.InfraError{Op: "writing the check result", Err: serr}
				}
				out = filepath.Join(state, "check-last.json")
			}
			b, _ := json.MarshalIndent(res, "", "  ")
			if err := fileutil.WriteFileAtomic(out, b, 0o644); err != nil {
				return &vm.InfraError{Op: "writing the check result", Err: err}
			}
			fmt.Printf("full result: %s\n", out)
			if res.Failures > 0 {
				return fmt.Errorf("%d unexpected outcome(s)", res.Failures)
			}
			return nil
		},
	})
}

func splitList(s string) []string {
	var out []string
	for _, x := range strings.Split(s, ",") {
		if x = strings.TrimSpace(x); x != "" {
			out = append(out, x)
		}
	}
	return out
}

// smoke boots a guest and proves the lab's plumbing: the kernel it built,
// both swap devices, the control channel, exit statuses, /dev/ldt, and a
// clean kernel log. It prints every step with its result.
func smoke(ctx context.Context, o lab.Options) error {
	start := time.Now()
	m, err := lab.Boot(ctx, o)
	if err != nil {
		return err
	}
	defer m.Close()
	fmt.Printf("booted %s (%s kernel %s, %s) in %.2fs; %.2fs since `check` started\n",
		m.Name, o.KernelOptions().Variant(), m.Kernel.Meta.KernelRelease, m.Accel.Kind, m.BootTime.Seconds(), time.Since(start).Seconds())
	type step struct {
		name, cmd string
		check     func(out string, code int) error
	}
	want := func(substr string) func(string, int) error {
		return func(out string, code int) error {
			if code != 0 {
				return fmt.Errorf("exit status %d", code)
			}
			if !strings.Contains(out, substr) {
				return fmt.Errorf("output lacks %q", substr)
			}
			return nil
		}
	}
	steps := []step{
		{"kernel release", "uname -r", want(m.Kernel.Meta.KernelRelease)},
		{"zram swap active", "cat /proc/swaps", want("/dev/zram0")},
		{"disk swap active", "cat /proc/swaps", want("/dev/vd")},
		{"data disk mounted", "grep /mnt/data /proc/mounts", want("/mnt/data")},
		{"exit status propagates", "exit 7", func(_ string, code int) error {
			if code != 7 {
				return fmt.Errorf("got %d", code)
			}
			return nil
		}},
		{"soft-dirty available", "test -e /proc/self/clear_refs && echo ok", want("ok")},
	}
	if m.Kernel.Meta.HasDevice() {
		steps = append(steps, step{"/dev/ldt present", "ls -l /dev/ldt", want("/dev/ldt")})
	}
	failed := 0
	for _, s := range steps {
		t := time.Now()
		r, err := m.Run(ctx, s.cmd)
		if err != nil {
			return err
		}
		res := "ok"
		if cerr := s.check(string(r.Stdout), r.Code); cerr != nil {
			res = "FAIL: " + cerr.Error()
			failed++
		}
		fmt.Printf("  %-24s %-34q %6.0fms  %s\n", s.name, s.cmd, float64(time.Since(t).Microseconds())/1000, res)
	}
	reps := m.Reports()
	fmt.Printf("  %-24s %d\n", "kernel reports", len(reps))
	for _, r := range reps {
		fmt.Printf("    %s\n", r)
	}
	if err := m.Shutdown(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "warning: clean poweroff failed: %v\n", err)
	}
	fmt.Printf("smoke check finished in %.1fs\n", time.Since(start).Seconds())
	if failed > 0 || len(reps) > 0 {
		return errors.New("smoke check failed")
	}
	return nil
}
