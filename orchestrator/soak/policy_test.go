package soak

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	gfuzz "ldtlab/guest/fuzz"
	"ldtlab/orchestrator/fuzz"
	"ldtlab/orchestrator/vm"
)

// fakeSoak is a Soak whose steps are answered by outs in turn (the
// executor faked at its interface: no guest).
func fakeSoak(t *testing.T, outs ...func() (Outcome, error)) *Soak {
	dir := t.TempDir()
	s := &Soak{Dir: dir, done: map[int]bool{}, inflight: map[int]bool{}}
	var err error
	s.j, err = OpenJournal(dir)
	require.NoError(t, err)
	t.Cleanup(func() { s.j.Close() })
	s.store, err = OpenStore(dir)
	require.NoError(t, err)
	s.logFile, _ = os.Open(os.DevNull)
	t.Cleanup(func() { s.logFile.Close() })
	s.progress = newProgress(s, io.Discard)
	i := 0
	s.exec = func(context.Context, *guest, Step, []Scenario) (Outcome, error) {
		require.Less(t, i, len(outs), "more steps run than expected")
		i++
		return outs[i-1]()
	}
	t.Cleanup(func() { assert.Equal(t, len(outs), i, "steps run") })
	return s
}

func lost(n int) func() (Outcome, error) {
	return func() (Outcome, error) { return Outcome{Verdict: "FAIL", Missed: n, Reason: "pages missed"}, nil }
}

func pass() (Outcome, error) { return Outcome{Verdict: "PASS", Pages: 10}, nil }

var ldtKsm = Step{Kind: "scenario", Scenario: "ksm", Tracker: "ldt", Seed: 4}

// What the policy does with each kind of outcome: file it (or not),
// count it as a failure (or not), keep or replace the guest, re-run a
// correctness failure once from its seed.
func TestStepPolicy(t *testing.T) {
	cases := []struct {
		name       string
		outs       []func() (Outcome, error)
		verdict    string
		failed     bool
		replaced   bool
		title      string // filed crash ("" = none)
		kind       string
		reproduced string
		labFail    bool
	}{
		{"pass", []func() (Outcome, error){pass}, "PASS", false, false, "", "", "", false},
		{"lost pages that reproduce", []func() (Outcome, error){lost(3), lost(3)}, "FAIL", true, false, "lost pages: ksm × ldt", "correctness", "yes", false},
		{"lost pages that do not", []func() (Outcome, error){lost(3), pass}, "FAIL", true, false, "lost pages: ksm × ldt", "correctness", "no", false},
		{"kernel warning", []func() (Outcome, error){func() (Outcome, error) {
			return Outcome{Verdict: "FAIL", Reports: []Seen{{Type: "warning", Title: "WARNING in f", Text: "WARNING: at f"}}}, nil
		}}, "FAIL", true, true, "warning: WARNING in f", "kernel", "", false},
		{"known report", []func() (Outcome, error){func() (Outcome, error) {
			return Outcome{Verdict: "KNOWN-GAP", Reports: []Seen{{Type: "page-table-check", Title: "WARNING in g", Known: "vanilla bug"}}}, nil
		}}, "KNOWN-GAP", false, true, "page-table-check: WARNING in g", "known", "", false},
		{"panic", []func() (Outcome, error){func() (Outcome, error) {
			return Outcome{}, &vm.CrashError{Type: "panic", Title: "Kernel panic: x", Text: "Kernel panic - not syncing: x"}
		}}, "FAIL", true, true, "panic: Kernel panic: x", "kernel", "", false},
		{"hang", []func() (Outcome, error){func() (Outcome, error) { return Outcome{}, &vm.HangError{Phase: "command"} }},
			"FAIL", true, true, "hang: no progress during scenario ksm", "hang", "", false},
		{"QEMU died without a report", []func() (Outcome, error){func() (Outcome, error) { return Outcome{}, &vm.DiedError{Reason: "QEMU was killed"} }},
			"LAB", false, true, "", "", "", true},
		{"lab failure", []func() (Outcome, error){func() (Outcome, error) {
			return Outcome{}, &vm.InfraError{Op: "opening a channel", Err: errors.New("EOF")}
		}}, "LAB", false, true, "", "", "", true},
		{"a command that timed out in a live guest", []func() (Outcome, error){func() (Outcome, error) {
			return Outcome{Verdict: "ERROR"}, errors.New("guest command: context deadline exceeded")
		}}, "ERROR", true, false, "", "", "", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := fakeSoak(t, tc.outs...)
			g := &guest{}
			gp := &g
			c := s.step(context.Background(), 1, 5, 77, ldtKsm, gp)
			assert.Equal(t, tc.verdict, c.Verdict)
			assert.Equal(t, tc.failed, c.Failed)
			assert.Equal(t, tc.replaced, *gp == nil, "guest replaced")
			assert.Equal(t, tc.reproduced, c.Reproduced)
			cs, err := Crashes(s.Dir)
			require.NoError(t, err)
			if tc.title == "" {
				assert.Empty(t, cs)
			} else {
				require.Len(t, cs, 1)
				assert.Equal(t, tc.title, cs[0].Title)
				assert.Equal(t, tc.kind, cs[0].Kind)
				assert.Equal(t, uint64(77), cs[0].Seed, "the round's seed")
				assert.Contains(t, cs[0].Repro, "labctl check --scenario ksm --tracker ldt --seed 4")
				if tc.reproduced != "" {
					assert.Equal(t, map[string]int{tc.reproduced: 1}, cs[0].Reproduced)
				}
			}
			assert.Equal(t, tc.labFail, s.stats.LabFailures == 1)
			if tc.labFail {
				ents, _ := os.ReadDir(s.Dir + "/lab-failures")
				assert.Len(t, ents, 1)
			}
		})
	}
}

// An injected trigger's reports are filed but the step is not a failure.
func TestStepInject(t *testing.T) {
	s := fakeSoak(t, func() (Outcome, error) {
		return Outcome{Verdict: "INJECTED", Reports: []Seen{{Type: "warning", Title: "WARNING in labtest_warn"}}}, nil
	})
	g := &guest{}
	c := s.step(context.Background(), 1, 2, 9, Step{Kind: "inject", Word: "warn"}, &g)
	assert.Equal(t, "INJECTED", c.Verdict)
	assert.False(t, c.Failed)
	assert.Equal(t, []string{"warning: WARNING in labtest_warn"}, c.Crashes)
	assert.Equal(t, 1, s.stats.CrashUnique)
}

// TestReproRound: a round's replay command carries what shaped the round,
// its injections included, so a crash an injection caused reproduces.
func TestReproRound(t *testing.T) {
	s := &Soak{Dir: "/soaks/night", O: Options{Seed: 5, Light: true, MemoryMiB: 768, Config: "sanitize", Trackers: []string{"ldt", "naive"},
		Inject: []Injection{{Word: "warn", Round: 2}, {Word: "panic", Round: 3}, {Word: "bug", Round: 2}}}}
	assert.Equal(t, "labctl soak --round 2 --seed 5 --out /soaks/night/replay-r2 --light --tracker ldt,naive --mem 768 --inject warn@2,bug@2 --config sanitize",
		s.repro(2, Step{Kind: "selftest"}))
	assert.Equal(t, "labctl soak --round 4 --seed 5 --out /soaks/night/replay-r4 --light --tracker ldt,naive --mem 768 --config sanitize",
		s.repro(4, Step{Kind: "selftest"}))
}

// A fuzz step's findings are filed each under its own title, with the
// replay file beside crash.json and a reproduction command naming it.
func TestStepFuzzFindings(t *testing.T) {
	seq := &gfuzz.Sequence{Regions: []gfuzz.RegionSpec{{Kind: gfuzz.KUringRing}}, Ops: []gfuzz.Op{{Op: gfuzz.OpUNop, R: -1, N: 3}}}
	s := fakeSoak(t, func() (Outcome, error) {
		return Outcome{Verdict: "FAIL", Pages: 100, Findings: []fuzz.Finding{
			{Title: "fuzz: ldt lost ring writes to uring-ring (uring-nop)", Type: "lost-pages", Kind: "correctness", Span: "x", Replay: []byte(`{"ops":[]}`), Fuzz: &gfuzz.Finding{Tracker: "ldt", Replay: seq}},
		}}, nil
	})
	g := &guest{}
	c := s.step(context.Background(), 1, 3, 11, Step{Kind: "fuzz", Seed: 8, Duration: 60 * time.Second}, &g)
	assert.Equal(t, "FAIL", c.Verdict)
	assert.True(t, c.Failed)
	assert.Empty(t, c.Reproduced, "no generic re-run: the finding carries its own reproducer")
	cs, err := Crashes(s.Dir)
	require.NoError(t, err)
	require.Len(t, cs, 1)
	assert.Equal(t, "fuzz: ldt lost ring writes to uring-ring (uring-nop)", cs[0].Title)
	assert.Contains(t, cs[0].Repro, "labctl fuzz --replay "+filepath.Join(cs[0].Dir, "replay.json")+" --trackers ldt")
	b, err := os.ReadFile(filepath.Join(cs[0].Dir, "replay.json"))
	require.NoError(t, err)
	assert.Equal(t, `{"ops":[]}`, string(b))
}

func TestPlanDrawsFuzz(t *testing.T) {
	n := 0
	for seed := uint64(0); seed < 200; seed++ {
		for _, st := range PlanRound(RoundSeed(3, int(seed)), testCat, Mix{GuestMiB: 768}) {
			if st.Kind == "fuzz" {
				n++
				assert.GreaterOrEqual(t, st.Duration, 30*time.Second)
			}
		}
		for _, st := range PlanRound(RoundSeed(3, int(seed)), testCat, Mix{Light: true}) {
			assert.NotEqual(t, "fuzz", st.Kind, "light rounds stay short")
		}
	}
	assert.Greater(t, n, 30)
	assert.Less(t, n, 100)
}

// A step that hangs or runs out of time keeps the guest's console and a
// sysrq-t/w dump, taken before the guest is killed or reused, in
// DIR/dumps (and a hang's crash occurrence has it as sysrq.txt); other
// failures take none.
func TestStuckStepKeepsADump(t *testing.T) {
	cases := []struct {
		name      string
		err       error
		dumped    bool
		crashDump bool // in the crash store too (a hang)
	}{
		{"hang", &vm.HangError{Phase: "command"}, true, true},
		{"time limit in a live guest", fmt.Errorf("stress ldt: guest command: %w (the remote process was killed)", context.DeadlineExceeded), true, false},
		{"another error", errors.New("ldt-check exited 2"), false, false},
		{"pass", nil, false, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := fakeSoak(t, func() (Outcome, error) {
				if tc.err == nil {
					return Outcome{Verdict: "PASS"}, nil
				}
				return Outcome{Verdict: "ERROR"}, tc.err
			})
			calls := 0
			s.dump = func(context.Context, *guest) (string, error) {
				calls++
				return "sysrq: Show State\ntask:ldt-stress state:D\n", nil
			}
			g := &guest{}
			c := s.step(context.Background(), 2, 7, 1, Step{Kind: "stress", Tracker: "ldt", Seed: 3}, &g)
			if !tc.dumped {
				assert.Zero(t, calls)
				assert.Empty(t, c.Dump)
				assert.NoDirExists(t, filepath.Join(s.Dir, "dumps"))
				return
			}
			assert.Equal(t, 1, calls)
			require.NotEmpty(t, c.Dump)
			b, err := os.ReadFile(filepath.Join(s.Dir, c.Dump, "sysrq.txt"))
			require.NoError(t, err)
			assert.Contains(t, string(b), "task:ldt-stress state:D")
			assert.FileExists(t, filepath.Join(s.Dir, c.Dump, "console.log"))
			assert.FileExists(t, filepath.Join(s.Dir, c.Dump, "step.json"))
			// The report lists it whatever the verdict.
			md := buildReport(s.Dir, summarize([]Record{{Type: "cell", Cell: &c}, {Type: "round", Round: &RoundRecord{Round: c.Round}}}, nil), nil).markdown(nil)
			assert.Contains(t, md, "| 7 | 2 | stress ldt 0 pages 0s thp=false seed 3 | "+c.Verdict+" | "+mdEsc(c.Dump)+" |")
			cs, _ := Crashes(s.Dir)
			if tc.crashDump {
				require.Len(t, cs, 1)
				assert.FileExists(t, filepath.Join(cs[0].Dir, "1", "sysrq.txt"))
			} else {
				assert.Empty(t, cs)
			}
		})
	}
}

// Each step's vmstat delta is the sample after it minus the one after
// the step before on the same guest (the guest's first sample is taken
// before its first step); a guest that cannot be sampled after a step
// gives that step no delta and the next step samples afresh.
func TestStepVMStatDeltas(t *testing.T) {
	samples := []VMStat{
		{"pswpout": 10, "thp_split_pmd": 1},
		{"pswpout": 25, "thp_split_pmd": 1},
		{"pswpout": 40, "thp_split_pmd": 4},
		nil, // the guest did not answer
		{"pswpout": 100, "thp_split_pmd": 9},
		{"pswpout": 101, "thp_split_pmd": 9},
	}
	s := fakeSoak(t, pass, pass, pass, pass)
	i := 0
	s.sample = func(context.Context, *guest) (VMStat, error) {
		i++
		if samples[i-1] == nil {
			return nil, errors.New("no answer")
		}
		return samples[i-1], nil
	}
	g := &guest{}
	var got []VMStat
	for range 4 {
		got = append(got, s.step(context.Background(), 1, 1, 1, ldtKsm, &g).VMStat)
	}
	assert.Equal(t, []VMStat{{"pswpout": 15}, {"pswpout": 15, "thp_split_pmd": 3}, nil, {"pswpout": 1}}, got)
	assert.Equal(t, len(samples), i)
}
