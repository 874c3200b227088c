package soak

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"ldtlab/internal/secfs"
	"ldtlab/orchestrator/coverage"
)

// With --config coverage the soak records which of the series' lines its
// guests have executed: a snapshot of a guest's gcov counters after a
// step, at most every coverageEvery per guest (a snapshot copies every
// .gcda out of the guest and runs gcov on the host: tens of seconds, so
// 5 minutes keeps it to a few percent of the guest's time while the
// curve still has a dozen points an hour), and one last snapshot when a
// guest is shut down at the end of the soak. Snapshots are taken at step
// boundaries rather than at the end of rounds: a round can outlast the
// interval, and a guest that crashes later in its round takes its
// counters with it.
const coverageEvery = 5 * time.Minute

// CoverageUnionName keeps the union of executed series lines in the soak
// directory, so a resumed soak continues it rather than starting over.
const CoverageUnionName = "coverage-union.json"

// CoveragePoint is the series' line coverage the soak has reached: a
// "coverage" record of the journal, appended after each snapshot.
type CoveragePoint struct {
	// Elapsed is the soak's active time (over all sessions) at the
	// snapshot, in seconds.
	Elapsed float64 `json:"elapsed_s,omitempty"`
	Worker  int     `json:"worker,omitempty"`
	Round   int     `json:"round,omitempty"`
	// SeriesLines are the executable lines the series adds or changes;
	// Executed those in the union: run at least once on any guest, in
	// any boot, since the soak started.
	SeriesLines int              `json:"series_lines"`
	Executed    int              `json:"executed"`
	PerPatch    []coverage.Group `json:"per_patch,omitempty"`
}

// Percent is Executed of SeriesLines.
func (p CoveragePoint) Percent() float64 {
	if p.SeriesLines == 0 {
		return 0
	}
	return 100 * float64(p.Executed) / float64(p.SeriesLines)
}

// coverageUnion is the executed series lines over the whole soak. A
// union, not a sum or the last snapshot: a guest's counters start at
// zero when it is (re)booted, and a line counts once whichever guest ran
// it.
type coverageUnion struct {
	SeriesLines int `json:"series_lines"`
	// PatchLines: series lines per patch, from the last snapshot (the
	// kernel is the same for the whole soak).
	PatchLines map[string]int `json:"patch_lines"`
	// Lines: "file:line" → the patch that added it, for every series line
	// executed at least once.
	Lines map[string]string `json:"lines"`
}

func newCoverageUnion() *coverageUnion {
	return &coverageUnion{PatchLines: map[string]int{}, Lines: map[string]string{}}
}

// add merges a snapshot's executed lines; it returns how many are new.
func (u *coverageUnion) add(r *coverage.Report) int {
	u.SeriesLines = r.SeriesLines
	if len(r.PerPatch) > 0 {
		u.PatchLines = map[string]int{}
		for _, g := range r.PerPatch {
			u.PatchLines[g.Name] = g.SeriesLines
		}
	}
	n := 0
	for _, l := range r.Ran {
		k := coverage.Key(l)
		if _, ok := u.Lines[k]; !ok {
			u.Lines[k] = l.Patch
			n++
		}
	}
	return n
}

// point is the union as a journal point (Elapsed, Worker, Round unset).
func (u *coverageUnion) point() CoveragePoint {
	p := CoveragePoint{SeriesLines: u.SeriesLines, Executed: len(u.Lines)}
	ran := map[string]int{}
	for _, patch := range u.Lines {
		ran[patch]++
	}
	var names []string
	for name := range u.PatchLines {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		g := coverage.Group{Name: name, SeriesLines: u.PatchLines[name], Executed: ran[name]}
		if g.SeriesLines > 0 {
			g.Percent = float64(int(1000*float64(g.Executed)/float64(g.SeriesLines)+0.5)) / 10
		}
		p.PerPatch = append(p.PerPatch, g)
	}
	return p
}

// loadCoverageUnion reads the union a earlier session kept (an empty one
// when there is none).
func loadCoverageUnion(dir string) (*coverageUnion, error) {
	b, err := secfs.ReadFileIn(dir, CoverageUnionName, 64<<20)
	if os.IsNotExist(err) {
		return newCoverageUnion(), nil
	}
	if err != nil {
		return newCoverageUnion(), err
	}
	u := newCoverageUnion()
	if err := json.Unmarshal(b, u); err != nil {
		return newCoverageUnion(), fmt.Errorf("%s: %w", filepath.Join(dir, CoverageUnionName), err)
	}
	if u.Lines == nil {
		u.Lines = map[string]string{}
	}
	if u.PatchLines == nil {
		u.PatchLines = map[string]int{}
	}
	return u, nil
}

func (u *coverageUnion) save(dir string) error {
	b, err := json.Marshal(u)
	if err != nil {
		return err
	}
	return writeAtomic(filepath.Join(dir, CoverageUnionName), b)
}

// snapshotGuest is the real snapshot: the guest's counters as they are,
// mapped onto the series' lines.
func snapshotGuest(ctx context.Context, g *guest, dir string) (*coverage.Report, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	return coverage.Snapshot(ctx, g.m, dir)
}

// coverageSnapshot takes a snapshot of g when one is due (final: the
// guest is about to be shut down), adds it to the union, keeps the union
// and appends the point to the journal. A failed snapshot is the lab's
// problem, not the kernel's: the soak goes on.
func (s *Soak) coverageSnapshot(ctx context.Context, w, n int, g *guest, final bool) {
	if s.snap == nil || g == nil || !g.covDirty || ctx.Err() != nil {
		return
	}
	if !final && time.Since(g.covAt) < coverageEvery {
		return
	}
	g.covAt, g.covDirty = time.Now(), false
	// One scratch directory per worker: the next snapshot replaces it.
	scratch := filepath.Join(s.Dir, "coverage-scratch", fmt.Sprintf("w%d", w))
	t := time.Now()
	r, err := s.snap(ctx, g, scratch)
	if err != nil {
		if ctx.Err() == nil {
			s.labFailure(n, w, nil, "coverage", fmt.Errorf("coverage snapshot: %w", err), nil)
		}
		return
	}
	s.mu.Lock()
	if s.cov == nil {
		s.cov = newCoverageUnion()
	}
	added := s.cov.add(r)
	p := s.cov.point()
	// Saved under the lock: two workers' saves never interleave.
	saveErr := s.cov.save(s.Dir)
	if saveErr == nil {
		r.Host, r.Seconds = s.host, (s.prev + time.Since(s.start)).Seconds()
		if s.env != nil {
			r.Commit = s.env.Commit
		}
		saveErr = writeUnionReport(s.Dir, r, s.cov, s.reasonsFile())
	}
	s.mu.Unlock()
	if saveErr != nil {
		s.progress.event("coverage: %v", saveErr)
	}
	p.Elapsed, p.Worker, p.Round = (s.prev + time.Since(s.start)).Seconds(), w, n
	if err := s.j.Append(Record{Type: "coverage", Session: s.session, Coverage: &p}); err != nil {
		s.progress.event("journal: %v", err)
	}
	s.logf("worker %d: coverage snapshot in %s: this guest ran %d of %d series lines, %d new; union %d (%.1f%%)",
		w, time.Since(t).Round(time.Millisecond), r.Executed, r.SeriesLines, added, p.Executed, p.Percent())
}

// journalHasCoverage: an earlier session recorded coverage points.
func journalHasCoverage(recs []Record) bool {
	for _, r := range recs {
		if r.Type == "coverage" && r.Coverage != nil {
			return true
		}
	}
	return false
}

// CoverageReportName is the union's coverage report in the soak directory
// (as labctl coverage writes its own: coverage.json, coverage.md), so the
// lines no guest ever ran are listed with their text and reasons.
const CoverageReportName = "coverage.json"

// writeUnionReport turns a snapshot's report into the union's (the lines
// any guest ran count as executed) and writes DIR/coverage.json and
// DIR/coverage.md, explained by reasonsFile ("" or missing: none).
func writeUnionReport(dir string, r *coverage.Report, u *coverageUnion, reasonsFile string) error {
	ran := make(map[string]bool, len(u.Lines))
	for k := range u.Lines {
		ran[k] = true
	}
	ur := *r
	ur.Ran = append([]coverage.Line(nil), r.Ran...)
	ur.Unexecuted = append([]coverage.Line(nil), r.Unexecuted...)
	ur.PerPatch = append([]coverage.Group(nil), r.PerPatch...)
	ur.PerFile = append([]coverage.Group(nil), r.PerFile...)
	ur.PerFunction = append([]coverage.Group(nil), r.PerFunction...)
	ur.Union(ran)
	ur.Jobs = []coverage.Job{{Name: "soak", Detail: "the union of every guest's counters since the soak began", Verdict: "ran"}}
	return explainCoverage(dir, &ur, reasonsFile)
}

// ExplainCoverage re-reads DIR/coverage.json and rewrites it and
// DIR/coverage.md with the reasons of reasonsFile: after the reasons
// change, without another soak. No coverage.json: nothing to do.
func ExplainCoverage(dir, reasonsFile string) error {
	b, err := secfs.ReadFileIn(dir, CoverageReportName, 64<<20)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	var r coverage.Report
	if err := json.Unmarshal(b, &r); err != nil {
		return fmt.Errorf("%s: %w", filepath.Join(dir, CoverageReportName), err)
	}
	return explainCoverage(dir, &r, reasonsFile)
}

func explainCoverage(dir string, r *coverage.Report, reasonsFile string) error {
	var reasons []coverage.Reason
	if reasonsFile != "" {
		var err error
		if reasons, err = coverage.LoadReasons(reasonsFile, false); err != nil {
			return err
		}
	}
	return coverage.WriteReport(dir, r, reasons)
}

// reasonsFile is the repository's docs/coverage.reasons ("" without a
// repository, as in unit tests).
func (s *Soak) reasonsFile() string {
	if s.Guest.Repo == "" {
		return ""
	}
	return filepath.Join(s.Guest.Repo, "docs", "coverage.reasons")
}
