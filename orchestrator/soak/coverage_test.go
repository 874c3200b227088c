package soak

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ldtlab/orchestrator/coverage"
)

// snapReport is what coverage.Snapshot would give for a kernel whose
// series has 10 executable lines (6 in 0001-a, 4 in 0002-b) when the
// guest's counters say lines ran ("file:line").
func snapReport(ran ...string) *coverage.Report {
	r := &coverage.Report{SeriesLines: 10, Executed: len(ran),
		PerPatch: []coverage.Group{{Name: "0001-a", SeriesLines: 6}, {Name: "0002-b", SeriesLines: 4}}}
	for _, k := range ran {
		f, l, _ := strings.Cut(k, ":")
		n, _ := strconv.Atoi(l)
		patch := "0001-a"
		if f == "mm/ldt.c" {
			patch = "0002-b"
		}
		r.Ran = append(r.Ran, coverage.Line{File: f, Line: n, Patch: patch, Count: 1})
	}
	return r
}

// covSoak is a fake soak whose coverage snapshots answer from snaps in
// turn.
func covSoak(t *testing.T, snaps ...func() (*coverage.Report, error)) *Soak {
	s := fakeSoak(t)
	s.start = time.Now()
	i := 0
	s.snap = func(_ context.Context, _ *guest, dir string) (*coverage.Report, error) {
		require.Less(t, i, len(snaps), "more snapshots than expected")
		assert.True(t, strings.HasPrefix(dir, filepath.Join(s.Dir, "coverage-scratch")+"/"), "scratch under the soak dir: %s", dir)
		i++
		return snaps[i-1]()
	}
	t.Cleanup(func() { assert.Equal(t, len(snaps), i, "snapshots taken") })
	return s
}

func snapOf(r *coverage.Report) func() (*coverage.Report, error) {
	return func() (*coverage.Report, error) { return r, nil }
}

func coveragePoints(t *testing.T, dir string) []CoveragePoint {
	recs, err := Replay(dir)
	require.NoError(t, err)
	return Summarize(recs).Coverage
}

// The union over snapshots: a later snapshot of the same guest repeats
// what it already counted; a rebooted guest starts at zero but loses
// nothing from the union; a second guest adds only what is new.
func TestCoverageUnion(t *testing.T) {
	steps := []struct {
		name     string
		worker   int
		ran      []string
		executed int
		perPatch []int // executed in 0001-a, 0002-b
	}{
		{"first snapshot", 1, []string{"mm/memory.c:3", "mm/ldt.c:10"}, 2, []int{1, 1}},
		{"same guest later: counters only grow", 1, []string{"mm/memory.c:3", "mm/ldt.c:10", "mm/ldt.c:11"}, 3, []int{1, 2}},
		{"after a reboot: counters from zero", 1, []string{"mm/memory.c:4"}, 4, []int{2, 2}},
		{"another guest overlapping", 2, []string{"mm/memory.c:3", "mm/memory.c:4", "mm/gup.c:7"}, 5, []int{3, 2}},
	}
	var snaps []func() (*coverage.Report, error)
	for _, st := range steps {
		snaps = append(snaps, snapOf(snapReport(st.ran...)))
	}
	s := covSoak(t, snaps...)
	for i, st := range steps {
		g := &guest{covDirty: true}
		s.coverageSnapshot(context.Background(), st.worker, i+1, g, false)
		pts := coveragePoints(t, s.Dir)
		require.Len(t, pts, i+1, st.name)
		p := pts[i]
		assert.Equal(t, st.executed, p.Executed, st.name)
		assert.Equal(t, 10, p.SeriesLines, st.name)
		assert.Equal(t, st.worker, p.Worker, st.name)
		require.Len(t, p.PerPatch, 2, st.name)
		assert.Equal(t, st.perPatch, []int{p.PerPatch[0].Executed, p.PerPatch[1].Executed}, st.name)
		assert.False(t, g.covDirty, "a snapshot cleans the guest")
	}
	assert.Equal(t, 50.0, coveragePoints(t, s.Dir)[3].Percent())

	// A resumed soak continues the union it kept.
	u, err := loadCoverageUnion(s.Dir)
	require.NoError(t, err)
	assert.Len(t, u.Lines, 5)
	s2 := covSoak(t, snapOf(snapReport("mm/ldt.c:12")))
	require.NoError(t, u.save(s2.Dir))
	s2.cov, err = loadCoverageUnion(s2.Dir)
	require.NoError(t, err)
	s2.coverageSnapshot(context.Background(), 1, 9, &guest{covDirty: true}, false)
	pts := coveragePoints(t, s2.Dir)
	require.Len(t, pts, 1)
	assert.Equal(t, 6, pts[0].Executed, "5 kept + 1 new")
}

// When a snapshot is due: every coverageEvery per guest after a step,
// and once more when the guest is shut down at the end; never for a
// guest that ran nothing since its last one.
func TestCoverageSnapshotDue(t *testing.T) {
	cases := []struct {
		name  string
		g     guest
		final bool
		taken bool
	}{
		{"due", guest{covDirty: true, covAt: time.Now().Add(-coverageEvery)}, false, true},
		{"too soon", guest{covDirty: true, covAt: time.Now().Add(-time.Minute)}, false, false},
		{"too soon but the guest is shut down", guest{covDirty: true, covAt: time.Now()}, true, true},
		{"nothing ran since", guest{covAt: time.Now().Add(-time.Hour)}, true, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var snaps []func() (*coverage.Report, error)
			if tc.taken {
				snaps = append(snaps, snapOf(snapReport("mm/memory.c:3")))
			}
			s := covSoak(t, snaps...)
			g := tc.g
			s.coverageSnapshot(context.Background(), 1, 1, &g, tc.final)
			assert.Len(t, coveragePoints(t, s.Dir), len(snaps))
		})
	}
	// Without the coverage kernel there is no snapshot function at all.
	s := fakeSoak(t)
	s.coverageSnapshot(context.Background(), 1, 1, &guest{covDirty: true}, true)
	assert.Empty(t, coveragePoints(t, s.Dir))
}

// A snapshot that fails is a lab failure: recorded and counted as one,
// never filed as a crash, and the next snapshot still counts.
func TestCoverageSnapshotFailure(t *testing.T) {
	s := covSoak(t,
		func() (*coverage.Report, error) { return nil, errors.New("copying the counters to the host: EOF") },
		snapOf(snapReport("mm/memory.c:3")))
	s.coverageSnapshot(context.Background(), 2, 4, &guest{covDirty: true}, false)
	assert.Equal(t, 1, s.stats.LabFailures)
	assert.Zero(t, s.stats.CrashTotal)
	cs, err := Crashes(s.Dir)
	require.NoError(t, err)
	assert.Empty(t, cs)
	recs, err := Replay(s.Dir)
	require.NoError(t, err)
	sum := Summarize(recs)
	require.Len(t, sum.LabFail, 1)
	assert.Equal(t, "coverage", sum.LabFail[0].Phase)
	assert.Contains(t, sum.LabFail[0].Error, "coverage snapshot: copying the counters")
	assert.Empty(t, sum.Coverage)

	s.coverageSnapshot(context.Background(), 2, 5, &guest{covDirty: true}, false)
	assert.Len(t, coveragePoints(t, s.Dir), 1)
}

// Coverage points survive the journal; a journal written before they
// existed loads, without points.
func TestCoverageJournalRoundTrip(t *testing.T) {
	cases := []struct {
		name   string
		dir    func(t *testing.T) string
		points int
	}{
		{"old journal without coverage", smokeDir, 0},
		{"journal with coverage points", func(t *testing.T) string {
			dir := smokeDir(t)
			appendCoverage(t, dir, CoveragePoint{Elapsed: 300, Worker: 1, Round: 2, SeriesLines: 10, Executed: 4},
				CoveragePoint{Elapsed: 600, Worker: 2, Round: 3, SeriesLines: 10, Executed: 7,
					PerPatch: []coverage.Group{{Name: "0001-a", SeriesLines: 6, Executed: 5, Percent: 83.3}}})
			return dir
		}, 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := tc.dir(t)
			recs, err := Replay(dir)
			require.NoError(t, err)
			sum := Summarize(recs)
			assert.Len(t, sum.Coverage, tc.points)
			assert.Equal(t, 3, sum.Rounds, "the rest of the journal reads as before")
			if tc.points > 0 {
				assert.Equal(t, CoveragePoint{Elapsed: 600, Worker: 2, Round: 3, SeriesLines: 10, Executed: 7,
					PerPatch: []coverage.Group{{Name: "0001-a", SeriesLines: 6, Executed: 5, Percent: 83.3}}}, sum.Coverage[1])
			}
			assert.Equal(t, tc.points > 0, journalHasCoverage(recs))
		})
	}
}

func appendCoverage(t *testing.T, dir string, pts ...CoveragePoint) {
	t.Helper()
	j, err := OpenJournal(dir)
	require.NoError(t, err)
	defer j.Close()
	for i := range pts {
		require.NoError(t, j.Append(Record{Type: "coverage", Session: 0, Coverage: &pts[i]}))
	}
}

// The report has a coverage figure and section only when the journal has
// coverage points.
func TestReportCoverage(t *testing.T) {
	cases := []struct {
		name string
		pts  []CoveragePoint
		md   []string
	}{
		{"no coverage", nil, nil},
		{"coverage", []CoveragePoint{
			{Elapsed: 7200, Worker: 2, SeriesLines: 200, Executed: 150, PerPatch: []coverage.Group{
				{Name: "0001-ldt-core", SeriesLines: 120, Executed: 100, Percent: 83.3}, {Name: "0002-ldt-thp", SeriesLines: 80, Executed: 50, Percent: 62.5}}},
			{Elapsed: 1800, Worker: 1, SeriesLines: 200, Executed: 90},
		}, []string{
			"## Coverage of the series' lines",
			"150 of 200 executable series lines executed (75.0%) after 2h0m0s of soak: the union over 2 snapshot(s)",
			"| patch | series lines | executed | % |",
			"| 0001-ldt-core | 120 | 100 | 83.3 |",
			"| 0002-ldt-thp | 80 | 50 | 62.5 |",
			"![Executed series lines over the soak's active time",
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := smokeDir(t)
			appendCoverage(t, dir, tc.pts...)
			md, html, err := WriteReport(dir)
			require.NoError(t, err)
			mb, err := os.ReadFile(md)
			require.NoError(t, err)
			hb, err := os.ReadFile(html)
			require.NoError(t, err)
			_, statErr := os.Stat(filepath.Join(dir, "report-coverage.png"))
			var st bytes.Buffer
			require.NoError(t, Status(&st, dir))
			if len(tc.pts) == 0 {
				assert.NotContains(t, st.String(), "series lines")
				// (The test's directory name holds "Coverage": look for
				// the section and the figure.)
				for _, no := range []string{"Coverage of the series", "Executed series lines", "report-coverage.png"} {
					assert.NotContains(t, string(mb), no)
				}
				assert.NotContains(t, string(hb), "Coverage of the series")
				assert.True(t, os.IsNotExist(statErr), "no coverage figure")
				return
			}
			for _, w := range tc.md {
				assert.Contains(t, string(mb), w)
			}
			assert.Contains(t, string(hb), "<h2>Coverage of the series&#39; lines</h2>")
			assert.Contains(t, string(hb), "<td>0001-ldt-core</td><td>120</td><td>100</td><td>83.3</td>")
			assert.Contains(t, string(hb), "Executed series lines over the soak&#39;s active time")
			assert.NoError(t, statErr, "the coverage figure")
			assert.Contains(t, st.String(), "  coverage: 150 of 200 series lines executed (75.0%) after 2h0m0s\n")
		})
	}
}

// The curve is drawn in order of active time whatever the journal order.
func TestCoverageSorted(t *testing.T) {
	got := sortedCoverage([]CoveragePoint{{Elapsed: 600, Executed: 7}, {Elapsed: 300, Executed: 4}})
	assert.Equal(t, []int{4, 7}, []int{got[0].Executed, got[1].Executed})
}

// The wiring: a worker's round snapshots its guest after the first step
// (due: the guest ran for longer than coverageEvery), not after the next
// ones (too soon), and once more when the soak ends with the guest up.
func TestCoverageInRounds(t *testing.T) {
	cat := testCat
	o := Options{Seed: 11, Light: true, Rounds: 1, MemoryMiB: 768}
	steps := PlanRound(RoundSeed(o.Seed, 1), cat, Mix{Light: true, GuestMiB: 768})
	require.GreaterOrEqual(t, len(steps), 2)
	var outs []func() (Outcome, error)
	for range steps {
		outs = append(outs, pass)
	}
	s := fakeSoak(t, outs...)
	s.O, s.cat, s.start, s.deadline = o, cat, time.Now(), time.Now().Add(time.Hour)
	calls := 0
	s.snap = func(context.Context, *guest, string) (*coverage.Report, error) {
		calls++
		if calls == 1 {
			return snapReport("mm/memory.c:3"), nil
		}
		return snapReport("mm/memory.c:3", "mm/ldt.c:10"), nil
	}
	s.worker(context.Background(), 1, &guest{covAt: time.Now().Add(-2 * coverageEvery)})
	assert.Equal(t, 2, calls, "after the first step, and at the end")
	recs, err := Replay(s.Dir)
	require.NoError(t, err)
	var types []string
	for _, r := range recs {
		if len(types) == 0 || types[len(types)-1] != r.Type {
			types = append(types, r.Type)
		}
	}
	assert.Equal(t, []string{"cell", "coverage", "cell", "round", "coverage"}, types)
	pts := Summarize(recs).Coverage
	require.Len(t, pts, 2)
	assert.Equal(t, []int{1, 2}, []int{pts[0].Executed, pts[1].Executed})
	assert.Equal(t, []int{1, 1}, []int{pts[0].Round, pts[1].Round})
	u, err := loadCoverageUnion(s.Dir)
	require.NoError(t, err)
	assert.Equal(t, map[string]string{"mm/memory.c:3": "0001-a", "mm/ldt.c:10": "0002-b"}, u.Lines)
}

// The soak keeps the union's coverage.md: a line another guest ran is not
// listed as unexecuted, reasons from the file explain the rest, and
// ExplainCoverage applies changed reasons without a soak.
func TestCoverageUnionReport(t *testing.T) {
	withUnexec := func(ran []string, unexec ...string) *coverage.Report {
		r := snapReport(ran...)
		for _, k := range unexec {
			f, l, _ := strings.Cut(k, ":")
			n, _ := strconv.Atoi(l)
			r.Unexecuted = append(r.Unexecuted, coverage.Line{File: f, Line: n, Patch: "0002-b", Function: "ldt_collect", Text: "line " + k})
		}
		return r
	}
	s := covSoak(t,
		snapOf(withUnexec([]string{"mm/ldt.c:10"}, "mm/ldt.c:11", "mm/ldt.c:12")),
		snapOf(withUnexec([]string{"mm/ldt.c:11"}, "mm/ldt.c:10", "mm/ldt.c:12")), // rebooted: 10 ran before
	)
	s.coverageSnapshot(context.Background(), 1, 1, &guest{covDirty: true}, false)
	s.coverageSnapshot(context.Background(), 1, 2, &guest{covDirty: true}, false)
	md, err := os.ReadFile(filepath.Join(s.Dir, "coverage.md"))
	require.NoError(t, err)
	assert.Contains(t, string(md), "mm/ldt.c:12")
	assert.NotContains(t, string(md), "line mm/ldt.c:10", "ran on the guest before the reboot")
	assert.NotContains(t, string(md), "line mm/ldt.c:11")

	reasons := filepath.Join(t.TempDir(), "reasons")
	require.NoError(t, os.WriteFile(reasons, []byte("mm/ldt.c:ldt_collect:line mm/ldt.c:12\tscenario to write: the test's\n"), 0o644))
	require.NoError(t, ExplainCoverage(s.Dir, reasons))
	md, err = os.ReadFile(filepath.Join(s.Dir, "coverage.md"))
	require.NoError(t, err)
	assert.Contains(t, string(md), "scenario to write: the test's")
	require.NoError(t, ExplainCoverage(t.TempDir(), reasons), "no coverage.json: nothing to do")
}
