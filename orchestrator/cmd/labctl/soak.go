package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"ldtlab/orchestrator/lab"
	"ldtlab/orchestrator/soak"
)

func init() {
	var g guestFlags
	var f struct {
		dur              time.Duration
		vms, round       int
		rounds           int
		out, resume      string
		inject, trackers string
		hosts            string
		perHost          int
		seed             uint64
		light            bool
	}
	register(&command{
		name: "soak",
		args: "| soak --resume DIR | soak report DIR | soak status DIR",
		summary: "the overnight job: random rounds of scenarios, stress, ldt-fuzz, checkpoint oracle, redis migration and selftests on N reused guests until --for; " +
			"crashes filed by title under DIR/crashes, a hung or timed-out step's console and sysrq-t/w dump under DIR/dumps, a journal that survives kill -9 (--resume), " +
			"and a report (what ran, per tracker, per agitator and fuzz operation, the guest's vmstat per round; with --config coverage, the series lines executed over time). " +
			"Guests have 768 MiB unless --mem says otherwise (as for check).",
		setup: func(fs *flag.FlagSet) {
			g.register(fs)
			fs.DurationVar(&f.dur, "for", 8*time.Hour, "how long to soak (on --resume: the whole soak's new length; 0 keeps the recorded one)")
			fs.IntVar(&f.vms, "vms", 0, "guests at once (default: what the machine's cores and memory allow)")
			fs.StringVar(&f.out, "out", "", "soak directory (default: soak-<date> in the state directory)")
			fs.StringVar(&f.resume, "resume", "", "continue the interrupted soak in this directory")
			fs.Uint64Var(&f.seed, "seed", uint64(time.Now().Unix()), "base seed: round N runs with a seed derived from it and N")
			fs.IntVar(&f.round, "round", 0, "replay only this round of the soak with --seed (a crash's reproduction)")
			fs.IntVar(&f.rounds, "rounds", 0, "stop after this many rounds (0: until --for)")
			fs.BoolVar(&f.light, "light", false, "short rounds (two small cells and a few seconds of stress; for tests)")
			fs.StringVar(&f.trackers, "tracker", "", "comma-separated trackers of the scenario cells (default: ldt, naive, softdirty, pagemap-scan); mutants are judged as labctl check judges them (CAUGHT/SURVIVED)")
			fs.StringVar(&f.hosts, "hosts", "", "comma-separated libvirt URIs to fan the guests out over (qemu:///system,qemu+ssh://USER@HOST/system); --vms-per-host guests on each (on --resume: the soak's hosts, given again)")
			fs.IntVar(&f.perHost, "vms-per-host", 1, "with --hosts: guests at once on each host")
			fs.StringVar(&f.inject, "inject", "", "testing aid: make round R also fire a labtest trigger, e.g. warn@2,panic@4 (the kernel really WARNs/panics), or stuck@R: a step that runs past its 20 s limit (the soak keeps its sysrq dump)")
		},
		run: func(ctx context.Context, fs *flag.FlagSet, args []string) error {
			if len(args) > 0 {
				if len(args) != 2 || (args[0] != "report" && args[0] != "status") {
					return usagef(fs, "want `labctl soak report DIR` or `labctl soak status DIR`")
				}
				if args[0] == "status" {
					return soak.Status(os.Stdout, args[1])
				}
				if repo, err := repoRoot(); err == nil {
					// The union's unexecuted lines, with today's reasons.
					if err := soak.ExplainCoverage(args[1], filepath.Join(repo, "docs", "coverage.reasons")); err != nil {
						return err
					}
				}
				md, html, err := soak.WriteReport(args[1])
				if err != nil {
					return err
				}
				fmt.Printf("report: %s\n        %s\n", md, html)
				return nil
			}
			repo, err := repoRoot()
			if err != nil {
				return err
			}
			o := g.options(repo, "soak")
			if f.resume != "" {
				// The journal's options are taken, except the libvirt hosts:
				// they must be named again (and match) to be connected to.
				ro := soak.Options{Hosts: splitList(f.hosts)}
				if flagSet(fs, "for") {
					ro.For = f.dur
				}
				return soak.Run(ctx, f.resume, ro, o, true, os.Stdout)
			}
			injs, err := soak.ParseInject(f.inject)
			if err != nil {
				return usageError{err}
			}
			mem := g.mem // 0: 768 (preset.Pressure)
			so := soak.Options{For: f.dur, VMs: f.vms, Config: g.config, Accel: g.accel, MemoryMiB: mem, Seed: f.seed,
				Patches: g.patches, Without: g.without, LDTOff: g.ldt == "n",
				Light: f.light, Inject: injs, Trackers: splitList(f.trackers), Rounds: f.rounds, Only: f.round,
				Hosts: splitList(f.hosts), VMsPerHost: f.perHost}
			if len(so.Hosts) > 0 && flagSet(fs, "vms") {
				return usageError{errors.New("--vms and --hosts exclude each other: with --hosts, --vms-per-host says how many guests each host runs")}
			}
			dir := f.out
			if dir == "" {
				state, err := lab.EnsureStateDir()
				if err != nil {
					return err
				}
				dir = filepath.Join(state, "soak-"+time.Now().Format("20060102-150405"))
			}
			return soak.Run(ctx, dir, so, o, false, os.Stdout)
		},
	})
}

func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}
