package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"ldtlab/images/kernel"
	"ldtlab/internal/fileutil"
	"ldtlab/internal/shquote"
	"ldtlab/orchestrator/bisect"
	"ldtlab/orchestrator/lab"
	"ldtlab/orchestrator/vm"
)

// The bisect verb finds the first patch of the series after which a
// command fails in a guest, as `git bisect run` finds a commit.
func init() {
	var g guestFlags
	var copies copyList
	var timeout time.Duration
	var good, bad, jsonOut string
	var failOnReport bool
	register(&command{
		name:    "bisect",
		args:    "[flags] [--copy HOST:GUEST]... -- CMD [ARGS...]",
		summary: "find the first patch of the series after which CMD fails: boots guests of prefixes of the series (binary search); CMD's exit status 0 = good, 125 = skip, 1-127 = bad, as git bisect run",
		setup: func(fs *flag.FlagSet) {
			g.register(fs)
			fs.Var(&copies, "copy", "copy the host file or directory HOST to GUEST in every guest before CMD (repeatable)")
			fs.DurationVar(&timeout, "timeout", 0, "kill CMD after this long, which counts as bad (0 = no limit)")
			fs.StringVar(&good, "good", "", "the last patch known good (its prefix is tested first): a number or file name; default none (the vanilla kernel)")
			fs.StringVar(&bad, "bad", "", "the last patch known bad: a number or file name; default the whole series")
			fs.BoolVar(&failOnReport, "fail-on-report", false, "a kernel report (WARNING, BUG, KASAN...) during boot or CMD makes the prefix bad, whatever CMD's status")
			fs.StringVar(&jsonOut, "json", "", "write the steps here (default: bisect-last.json in the state directory)")
		},
		run: func(ctx context.Context, fs *flag.FlagSet, args []string) error {
			if len(args) == 0 {
				fs.Usage()
				return usageError{errors.New("need -- CMD [ARGS...]")}
			}
			if g.patches != "" || g.without != "" || g.vanilla {
				return usageError{errors.New("bisect chooses the patches itself: no --patches, --without or --vanilla (use --good and --bad to narrow it)")}
			}
			repo, err := repoRoot()
			if err != nil {
				return err
			}
			series, err := kernel.ReadSeries(repo)
			if err != nil {
				return err
			}
			goodK, err := prefixOf(series, good, 0)
			if err != nil {
				return usageError{fmt.Errorf("--good: %w", err)}
			}
			badK, err := prefixOf(series, bad, len(series))
			if err != nil {
				return usageError{fmt.Errorf("--bad: %w", err)}
			}
			base := g.options(repo, "bisect")
			t := &labTester{base: base, series: series, copies: copies, cmd: remoteCommand(args), timeout: timeout, failOnReport: failOnReport}
			fmt.Printf("bisect: %d patches, %s (good) .. %s (bad); command: %s\n", len(series), prefixLabel(series, goodK), prefixLabel(series, badK), t.cmd)
			res, err := bisect.Run(ctx, bisect.Options{Series: series, Good: goodK, Bad: badK, Log: os.Stdout}, t)
			again := runCommand(fs, copies, args, series)
			if res != nil {
				out := jsonOut
				if out == "" {
					state, serr := lab.EnsureStateDir()
					if serr != nil {
						return &vm.InfraError{Op: "writing the bisect result", Err: serr}
					}
					out = filepath.Join(state, "bisect-last.json")
				}
				if werr := fileutil.WriteJSON(out, map[string]any{
					"command": t.cmd, "series": series, "kernel_flags": base.KernelOptions().Flags(),
					"result": res, "error": errString(err), "reproduce": again(res.Bad),
				}); werr != nil {
					return &vm.InfraError{Op: "writing the bisect result", Err: werr}
				}
				fmt.Printf("steps: %s\n", out)
			}
			if err != nil {
				return err
			}
			if res.FirstBad != "" {
				fmt.Printf("\nfirst bad patch: %s\n", res.FirstBad)
			} else {
				fmt.Printf("\nthe first bad patch is one of (prefixes in between could not be tested): %s\n", strings.Join(res.Candidates, " "))
			}
			fmt.Printf("  reproduce (bad):  %s\n", again(res.Bad))
			fmt.Printf("  and (good):       %s\n", again(res.Good))
			return nil
		},
	})
}

// prefixOf reads --good/--bad: "" is def, "0"/"none"/"vanilla" no patch,
// else one patch of the series (number or name), whose prefix ends there.
func prefixOf(series []string, s string, def int) (int, error) {
	switch strings.TrimSpace(s) {
	case "":
		return def, nil
	case "0", "none", "vanilla":
		return 0, nil
	}
	sel, err := kernel.Select(series, s, "")
	if err != nil {
		return 0, err
	}
	if len(sel.Applied) != 1 {
		return 0, fmt.Errorf("%q names %d patches: name one", s, len(sel.Applied))
	}
	for i, n := range series {
		if n == sel.Applied[0] {
			return i + 1, nil
		}
	}
	return 0, fmt.Errorf("%q: not in the series", s)
}

func prefixLabel(series []string, k int) string {
	if k == 0 {
		return "vanilla"
	}
	return bisect.PrefixSpec(series, k)
}

// prefixOptions is the guest of prefix k: no patch is the vanilla kernel,
// the whole series the default one (its cache key as always).
func prefixOptions(base lab.Options, series []string, k int) lab.Options {
	o := base
	o.Patches, o.Without = "", ""
	switch {
	case k == 0:
		o.Vanilla, o.LDTOff = true, false
	case k < len(series):
		o.Patches = bisect.PrefixSpec(series, k)
	}
	return o
}

// runCommand returns the `labctl run` line that boots prefix k with the
// same guest flags and copies and runs the same command.
func runCommand(fs *flag.FlagSet, copies copyList, cmd, series []string) func(k int) string {
	var flags []string
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "good", "bad", "json", "copy", "patches", "without", "vanilla":
			return
		}
		flags = append(flags, "--"+f.Name+"="+shquote.Word(f.Value.String()))
	})
	sort.Strings(flags)
	return func(k int) string {
		sel := ""
		switch {
		case k == 0:
			sel = " --vanilla"
		case k < len(series):
			sel = " --patches " + bisect.PrefixSpec(series, k)
		default:
			sel = "" // the whole series
		}
		f := ""
		if len(flags) > 0 {
			f = " " + strings.Join(flags, " ")
		}
		return "labctl run" + sel + f + copies.args() + " -- " + shquote.Join(cmd)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// labTester builds with the kernel cache and runs in throwaway guests.
type labTester struct {
	base    lab.Options
	series  []string
	copies  copyList
	cmd     string
	timeout time.Duration
	// failOnReport: a kernel report makes the prefix bad.
	failOnReport bool
}

func (t *labTester) Build(ctx context.Context, k int) error {
	o := prefixOptions(t.base, t.series, k)
	_, _, err := kernel.Ensure(ctx, o.KernelOptions())
	return err
}

func (t *labTester) Run(ctx context.Context, k int) (int, string, error) {
	o := prefixOptions(t.base, t.series, k)
	code, reports, err := throwawayRun(ctx, o, t.copies, t.cmd, t.timeout, runIO{stdout: os.Stdout, stderr: os.Stderr})
	if err != nil {
		return 0, firstLineOf(err.Error()), err
	}
	switch {
	case reports > 0 && t.failOnReport:
		return 1, fmt.Sprintf("%d kernel report(s) (--fail-on-report; the command exited %d)", reports, code), nil
	case reports > 0:
		return code, fmt.Sprintf("%d kernel report(s); the exit status decides (--fail-on-report: bad)", reports), nil
	}
	return code, "", nil
}

func (t *labTester) Abort(err error) bool {
	var ie *vm.InfraError
	return errors.As(err, &ie)
}

func firstLineOf(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}
