package tests

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	gfuzz "ldtlab/guest/fuzz"
	"ldtlab/guest/result"
	"ldtlab/orchestrator/fuzz"
	"ldtlab/orchestrator/preset"
)

// TestFuzzShort is the short ldt-fuzz run of `make test` (`make
// fuzz-teeth` is the long proof): the first 4 sequences of a fixed seed
// (about a minute of TCG) under every tracker, on the guest `labctl fuzz`
// boots. The seed is the smallest whose 4 sequences each tracker can run
// at least twice, found here with the guest's own generator, so a change
// of the generator moves the seed instead of silently leaving a tracker
// out (CI once ran 4 sequences none of which pagemap-scan could run). The
// fuzzer must have run each tracker exactly where the generator says it
// can, the negative control must be CAUGHT, and no run may have errored
// (a lab or fuzzer bug). What it finds on the kernel under test is
// logged: issue 19's lost writes are fixed in today's series (`make
// fuzz-teeth` proves the fuzzer finds them on 0001-0010).
func TestFuzzShort(t *testing.T) {
	o := guestOptions(t, "fuzz")
	preset.Pressure(&o)
	m := boot(t, o)
	seed, runs := fuzzSeed(t, 4, 2)
	t.Logf("seed %d: runs expected per tracker %v", seed, runs)
	r, err := fuzz.RunOne(context.Background(), m, fuzz.Options{Duration: 4 * time.Minute, MaxSeqs: 4, Seed: seed, NoMinimize: true}, testWriter{t})
	require.NoError(t, err)
	require.NotNil(t, r.Summary, "no summary: %s", r.Error)
	s := r.Summary
	t.Logf("%d sequences, %d runs, %d pages checked in %.0f s", s.Sequences, s.Runs, s.Checked, s.TookS)
	assert.Equal(t, 4, s.Sequences, "the sequences asked for (4 minutes were not enough?)")
	assert.Greater(t, s.Checked, int64(1000), "too few pages checked")
	for _, name := range gfuzz.DefaultTrackers {
		ts := s.Trackers[name]
		if !assert.NotNil(t, ts, "no statistics for tracker %s", name) {
			continue
		}
		assert.Equal(t, runs[name], ts.Runs, "%s: runs (the generator says it can run %d of the 4 sequences; N/A reasons %v)", name, runs[name], ts.NA)
		assert.Zero(t, ts.Verdicts[string(result.VError)], "%s: runs that errored", name)
	}
	assert.Equal(t, result.VCaught, s.Trackers["naive"].Verdict, "the negative control must lose writes")
	for _, f := range s.Findings {
		t.Logf("finding (class %q): %s: %s", f.Class, f.Title, f.Example)
	}
	for k, n := range s.KnownGaps {
		t.Logf("known gap %s: %d pages", k, n)
	}
	assert.Empty(t, r.ReportTitles, "kernel reports during the fuzz run")

	// The findings committed under guest/fuzz/testdata/findings are
	// regressions the series must now hold: each replayed under ldt alone
	// in the same guest (each failed on the series before its fix:
	// docs/fuzz.md names the prefixes).
	files, err := filepath.Glob("../guest/fuzz/testdata/findings/*.json")
	require.NoError(t, err)
	require.NotEmpty(t, files, "no committed findings to replay")
	for _, file := range files {
		b, err := os.ReadFile(file)
		require.NoError(t, err)
		var seq gfuzz.Sequence
		require.NoError(t, json.Unmarshal(b, &seq), file)
		require.NoError(t, seq.Validate(), file)
		r, err := fuzz.RunOne(context.Background(), m, fuzz.Options{Duration: 2 * time.Minute, Seed: 1, Trackers: []string{"ldt"}, Replay: &seq, NoMinimize: true}, testWriter{t})
		require.NoError(t, err, file)
		require.NotNil(t, r.Summary, "%s: no summary: %s", file, r.Error)
		ts := r.Summary.Trackers["ldt"]
		require.NotNil(t, ts, "%s: ldt did not run", file)
		assert.Equal(t, 1, ts.Runs, "%s: ldt runs", file)
		assert.Equal(t, result.VPass, ts.Verdict, "%s: ldt must hold on the replay", file)
		for _, f := range r.Summary.Findings {
			t.Errorf("%s: finding (class %q): %s: %s", filepath.Base(file), f.Class, f.Title, f.Example)
		}
	}
}

// fuzzSeed is the smallest base seed whose first n sequences every
// default tracker can run at least min times, and how many each can run.
func fuzzSeed(t *testing.T, n, min int) (uint64, map[string]int) {
	for base := uint64(1); base < 10000; base++ {
		runs := map[string]int{}
		ok := true
		for _, tr := range gfuzz.DefaultTrackers {
			for i := 0; i < n; i++ {
				if gfuzz.NotFor(tr, gfuzz.Generate(gfuzz.SeqSeed(base, i))) == "" {
					runs[tr]++
				}
			}
			ok = ok && runs[tr] >= min
		}
		if ok {
			return base, runs
		}
	}
	t.Fatalf("no seed below 10000 gives every tracker %d of %d sequences: the generator leaves a tracker out", min, n)
	return 0, nil
}
