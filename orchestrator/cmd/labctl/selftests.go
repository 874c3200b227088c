package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"ldtlab/images/kernel"
	"ldtlab/orchestrator/mmselftests"
)

func init() {
	var g guestFlags
	var only, jsonOut string
	var perTest time.Duration
	register(&command{
		name:    "selftests",
		summary: "run the kernel's mm selftests on the LDT and the vanilla kernel and compare them case by case",
		setup: func(fs *flag.FlagSet) {
			g.register(fs)
			fs.StringVar(&only, "tests", strings.Join(kernel.Selftests, ","), "comma-separated selftests to run")
			fs.DurationVar(&perTest, "timeout", 0, "limit per selftest (default: 180s × the accelerator's timeout scale)")
			fs.StringVar(&jsonOut, "json", "", "write both kernels' results to this file")
		},
		run: func(ctx context.Context, fs *flag.FlagSet, args []string) error {
			repo, err := repoRoot()
			if err != nil {
				return err
			}
			c, err := mmselftests.CompareKernels(ctx, g.options(repo, "selftests"), strings.Split(only, ","), perTest, os.Stdout)
			if err != nil {
				return err
			}
			if jsonOut != "" {
				b, _ := json.MarshalIndent(c, "", "  ")
				if err := os.WriteFile(jsonOut, b, 0o644); err != nil {
					return err
				}
			}
			for _, f := range c.Flaky {
				fmt.Printf("  flaky (not counted): %s\n", f)
			}
			for _, f := range c.Inconclusive {
				fmt.Printf("  inconclusive attempt: %s\n", f)
			}
			fmt.Printf("== %d difference(s) between ldt and vanilla, %d flaky, %d kernel report(s)\n", len(c.Differences), len(c.Flaky), len(c.Reports))
			for _, d := range append(c.Differences, c.Reports...) {
				fmt.Printf("  %s\n", d)
			}
			if n := len(c.Differences) + len(c.Reports); n > 0 {
				return fmt.Errorf("%d problem(s): the LDT kernel must pass the mm selftests exactly like vanilla, without kernel reports", n)
			}
			return nil
		},
	})
}
