package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"ldtlab/guest/tracker"
	"ldtlab/internal/fileutil"
	"ldtlab/orchestrator/cell"
	"ldtlab/orchestrator/lab"
	"ldtlab/orchestrator/migrate"
	"ldtlab/orchestrator/vm"
)

func init() {
	var g guestFlags
	var f struct {
		trackers, jsonOut string
		rounds, keys      int
		interval          time.Duration
		pressure, toGuest bool
	}
	register(&command{
		name:    "migrate",
		summary: "iterative migration of redis per tracker: pre-copy rounds, CRIU dump and restore from the tracker-built image, digest and serving oracles",
		setup: func(fs *flag.FlagSet) {
			g.register(fs)
			fs.StringVar(&f.trackers, "tracker", strings.Join(migrate.Trackers, ","), "comma-separated trackers (pagemap-scan is N/A: it tracks only its own process)")
			fs.IntVar(&f.rounds, "rounds", 5, "pre-copy rounds before the freeze (the frozen final round comes on top)")
			fs.DurationVar(&f.interval, "interval", time.Second, "time redis runs under load between rounds")
			fs.BoolVar(&f.pressure, "pressure", false, "run redis in a memory cgroup far below its data set, so it swaps while it is migrated (naive must then be CAUGHT)")
			fs.BoolVar(&f.toGuest, "to-guest", false, "restore on a second guest: the image crosses the host (a real migration)")
			fs.IntVar(&f.keys, "keys", 16000, "data set: redis-benchmark's key range, 4 KiB values")
			fs.StringVar(&f.jsonOut, "json", "", "write the full result here (default: migrate-last.json in the state directory)")
		},
		run: func(ctx context.Context, fs *flag.FlagSet, args []string) error {
			if len(args) > 0 {
				return usagef(fs, "unexpected arguments %q", args)
			}
			trackers := splitList(f.trackers)
			for _, t := range trackers {
				if !slices.Contains(tracker.Names(), t) {
					return usagef(fs, "--tracker %q: have %s", t, strings.Join(tracker.Names(), ", "))
				}
			}
			if f.rounds < 0 || f.keys < 1 || f.interval <= 0 {
				return usagef(fs, "--rounds must be ≥ 0, --keys ≥ 1 and --interval > 0")
			}
			repo, err := repoRoot()
			if err != nil {
				return err
			}
			o := g.options(repo, "migrate")
			mo := cell.MigrateOptions{Rounds: f.rounds, Interval: f.interval, Pressure: f.pressure, Keys: f.keys}
			if f.rounds == 0 {
				mo.Rounds = -1 // no pre-copy round: the initial copy, then the frozen one
			}
			res, err := migrate.Run(ctx, migrate.Options{Guest: o, Trackers: trackers, Migrate: mo, ToGuest: f.toGuest, Progress: os.Stdout})
			if res != nil {
				migrate.Summary(os.Stdout, res)
				out := f.jsonOut
				if out == "" {
					state, serr := lab.StateDir()
					if serr == nil {
						serr = lab.MkdirState(state, 0o700)
					}
					if serr != nil {
						return serr
					}
					out = filepath.Join(state, "migrate-last.json")
				}
				b, _ := json.MarshalIndent(res, "", "  ")
				if werr := fileutil.WriteFileAtomic(out, b, 0o644); werr != nil {
					return &vm.InfraError{Op: "writing the migrate result", Err: werr}
				}
				fmt.Printf("full result: %s\n", out)
			}
			if err != nil {
				return err
			}
			if res.Failures > 0 {
				return fmt.Errorf("%d unexpected outcome(s)", res.Failures)
			}
			return nil
		},
	})
}
