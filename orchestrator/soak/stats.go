package soak

import (
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"golang.org/x/term"

	"ldtlab/internal/secfs"
	"ldtlab/internal/termsafe"
)

// Stats are the running totals of a soak.
type Stats struct {
	Rounds      int   `json:"rounds"`
	Cells       int   `json:"cells"`
	Pages       int64 `json:"pages_verified"`
	Failures    int   `json:"failures"`
	CrashUnique int   `json:"crashes_unique"`
	CrashTotal  int   `json:"crashes_total"`
	LabFailures int   `json:"lab_failures"`
}

func (st *Stats) addCell(c CellRecord) {
	st.Cells++
	st.Pages += c.Pages
	if c.Failed {
		st.Failures++
	}
}

// Line is the progress line's body.
func (st Stats) Line() string {
	return fmt.Sprintf("%d rounds, %d cells, %s pages verified, %d failures, crashes %d unique / %d total, %d lab failures",
		st.Rounds, st.Cells, human(st.Pages), st.Failures, st.CrashUnique, st.CrashTotal, st.LabFailures)
}

func human(n int64) string {
	switch {
	case n >= 1_000_000:
		return fmt.Sprintf("%.1fM", float64(n)/1e6)
	case n >= 10_000:
		return fmt.Sprintf("%.1fk", float64(n)/1e3)
	}
	return fmt.Sprint(n)
}

// Point is the state of the soak at one moment of its active time.
type Point struct {
	Elapsed  time.Duration
	Rounds   int
	Pages    int64
	Failures int
	Crashes  int
}

// Cellstat counts one scenario × tracker pair.
type Cellstat struct {
	Verdicts map[string]int
	Pages    int64
	Took     float64
}

// Summary is what the journal says, for status, the report and resume.
type Summary struct {
	Stats
	First, Last *Start
	Sessions    int
	Elapsed     time.Duration // active time over all sessions
	Ended       string        // the last session's end reason ("" if killed or running)
	EndLoad     string        // the host's load average at the last end record
	StartedAt   time.Time
	LastAt      time.Time
	Timeline    []Point
	Table       map[string]map[string]*Cellstat // step name → tracker
	Failed      []CellRecord
	LabFail     []LabFailure
	roundsDone  map[int]bool

	// What the report breaks the totals down by (finished rounds only).
	Trackers  map[string]*TrackerTotals  // tracker → its cells, runs, sequences, pages
	Agitators map[string]*AgitatorTotals // stress agitator → runs, actions, effects
	FuzzOps   map[string]*OpTotals       // fuzz operation (or effect) → done, refused
	// FuzzSteps counts fuzz steps; FuzzNoSummary those that gave no
	// summary (an error, a hang): nothing of theirs is in the tables.
	FuzzSteps, FuzzNoSummary int
	// StressNoDetail counts stress runs whose agitators are not known
	// (journals before they were recorded, runs that failed to start).
	StressSteps, StressNoDetail int
	RoundRecs                   []RoundRecord // finished rounds, in journal order
	// Dumps are the finished cells that kept a console and sysrq dump.
	Dumps []CellRecord
	// RoundKinds counts a finished round's steps by kind (round → kind → n).
	RoundKinds map[int]map[string]int
	VMStat     VMStat // summed over the finished rounds
	// Coverage: the coverage curve's points, in journal order (none
	// unless the soak ran the coverage kernel).
	Coverage []CoveragePoint
}

// TrackerTotals is one tracker's share of the soak.
type TrackerTotals struct {
	Scenarios   int   `json:"scenario_cells"`
	Stress      int   `json:"stress_runs"`
	FuzzSeqs    int   `json:"fuzz_sequences"`
	Checkpoints int   `json:"checkpoint_runs"`
	Migrations  int   `json:"migrations"`
	Pages       int64 `json:"pages_verified"`
	Failures    int   `json:"failures"`
}

// AgitatorTotals is one stress agitator over the soak.
type AgitatorTotals struct {
	Runs    int            `json:"runs"`    // stress runs it took part in
	Actions int            `json:"actions"` // what it did, as often
	Effects map[string]int `json:"effects"` // what it achieved
}

// OpTotals is one fuzz operation over the soak.
type OpTotals struct{ Done, Failed int }

func (s *Summary) tracker(t string) *TrackerTotals {
	tt := s.Trackers[t]
	if tt == nil {
		tt = &TrackerTotals{}
		s.Trackers[t] = tt
	}
	return tt
}

// addBreakdown counts a finished cell per tracker, agitator and fuzz
// operation.
func (s *Summary) addBreakdown(c *CellRecord) {
	d := c.Detail
	switch c.Step.Kind {
	case "fuzz":
		s.FuzzSteps++
		if d == nil || d.FuzzTrackers == nil {
			s.FuzzNoSummary++
			return
		}
		for t, ft := range d.FuzzTrackers {
			tt := s.tracker(t)
			tt.FuzzSeqs += ft.Sequences
			tt.Pages += ft.Checked
			for v, n := range ft.Verdicts {
				if failedVerdict(v) {
					tt.Failures += n
				}
			}
		}
		for op, n := range d.OpsDone {
			s.op(op).Done += n
		}
		for op, n := range d.OpsFailed {
			s.op(op).Failed += n
		}
		return
	case "stress":
		s.StressSteps++
		if d == nil || d.Agitators == nil {
			s.StressNoDetail++
		} else {
			for a, n := range d.Agitators {
				at := s.Agitators[a]
				if at == nil {
					at = &AgitatorTotals{Effects: map[string]int{}}
					s.Agitators[a] = at
				}
				at.Runs++
				at.Actions += n
				for what, k := range d.Effects[a] {
					at.Effects[what] += k
				}
			}
		}
	}
	if c.Step.Tracker == "" {
		return // selftests, injections: no tracker
	}
	tt := s.tracker(c.Step.Tracker)
	switch c.Step.Kind {
	case "scenario":
		tt.Scenarios++
	case "stress":
		tt.Stress++
	case "checkpoint":
		tt.Checkpoints++
	case "migrate":
		tt.Migrations++
	}
	tt.Pages += c.Pages
	if c.Failed {
		tt.Failures++
	}
}

// FuzzRow is the verdict table's row of fuzz sequences per tracker.
const FuzzRow = "fuzz sequences"

func (s *Summary) addFuzzVerdicts(d *Detail) {
	row := s.Table[FuzzRow]
	if row == nil {
		row = map[string]*Cellstat{}
		s.Table[FuzzRow] = row
	}
	for t, ft := range d.FuzzTrackers {
		cs := row[t]
		if cs == nil {
			cs = &Cellstat{Verdicts: map[string]int{}}
			row[t] = cs
		}
		for v, n := range ft.Verdicts {
			cs.Verdicts[v] += n
		}
		cs.Pages += ft.Checked
	}
}

func (s *Summary) op(name string) *OpTotals {
	o := s.FuzzOps[name]
	if o == nil {
		o = &OpTotals{}
		s.FuzzOps[name] = o
	}
	return o
}

// Summarize replays records: only cells of finished rounds count (a round
// a kill cut short is redone by --resume).
func Summarize(recs []Record) Summary { return summarize(recs, nil) }

// summarizeDir is Summarize with the crash store's verdicts: titles the
// store files as known kernel bugs outside LDT are not counted.
func summarizeDir(dir string, recs []Record) Summary {
	known := map[string]bool{}
	cs, _ := Crashes(dir)
	for _, c := range cs {
		known[c.Title] = c.Kind == "known"
	}
	s := summarize(recs, known)
	s.CrashUnique, s.CrashTotal = crashTotals(dir)
	return s
}

func summarize(recs []Record, known map[string]bool) Summary {
	s := Summary{Table: map[string]map[string]*Cellstat{}, roundsDone: map[int]bool{},
		Trackers: map[string]*TrackerTotals{}, Agitators: map[string]*AgitatorTotals{}, FuzzOps: map[string]*OpTotals{}, VMStat: VMStat{},
		RoundKinds: map[int]map[string]int{}}
	type key struct{ session, round int }
	finished := map[key]bool{}
	for _, r := range recs {
		if r.Type == "round" && r.Round != nil {
			finished[key{r.Session, r.Round.Round}] = true
		}
	}
	var offset, sessStart time.Time
	var base time.Duration
	curSession := -1
	crashes := 0
	for _, r := range recs {
		if r.Session != curSession {
			if curSession >= 0 {
				base += s.LastAt.Sub(sessStart)
			}
			curSession, sessStart = r.Session, r.At
			s.Sessions++
			s.Ended = ""
		}
		if s.StartedAt.IsZero() {
			s.StartedAt, offset = r.At, r.At
		}
		_ = offset
		s.LastAt = r.At
		el := base + r.At.Sub(sessStart)
		switch r.Type {
		case "start":
			if s.First == nil {
				s.First = r.Start
			}
			s.Last = r.Start
		case "end":
			if r.End != nil {
				s.Ended, s.EndLoad = r.End.Reason, r.End.Load
			}
		case "coverage":
			if r.Coverage != nil {
				s.Coverage = append(s.Coverage, *r.Coverage)
			}
		case "lab-failure":
			if r.LabFailure != nil {
				s.LabFailures++
				s.LabFail = append(s.LabFail, *r.LabFailure)
			}
		case "cell":
			c := r.Cell
			if c == nil || !finished[key{r.Session, c.Round}] {
				continue
			}
			s.addCell(*c)
			s.addBreakdown(c)
			if s.RoundKinds[c.Round] == nil {
				s.RoundKinds[c.Round] = map[string]int{}
			}
			s.RoundKinds[c.Round][c.Step.Kind]++
			for _, t := range c.Crashes {
				if !known[t] {
					crashes++
				}
			}
			if c.Failed {
				s.Failed = append(s.Failed, *c)
			}
			if c.Dump != "" {
				s.Dumps = append(s.Dumps, *c)
			}
			tr := c.Step.Tracker
			if tr == "" {
				tr = "-"
			}
			row := s.Table[c.Step.Name()]
			if row == nil {
				row = map[string]*Cellstat{}
				s.Table[c.Step.Name()] = row
			}
			cs := row[tr]
			if cs == nil {
				cs = &Cellstat{Verdicts: map[string]int{}}
				row[tr] = cs
			}
			cs.Verdicts[c.Verdict]++
			cs.Pages += c.Pages
			cs.Took += c.Took
			if c.Step.Kind == "fuzz" && c.Detail != nil {
				// The fuzz step's sequences as each tracker was judged on
				// them (the step's own row is the run as a whole).
				s.addFuzzVerdicts(c.Detail)
			}
		case "round":
			s.Rounds++
			s.roundsDone[r.Round.Round] = true
			s.RoundRecs = append(s.RoundRecs, *r.Round)
			s.VMStat.Add(r.Round.VMStat)
			s.Timeline = append(s.Timeline, Point{Elapsed: el, Rounds: s.Rounds, Pages: s.Pages, Failures: s.Failures, Crashes: crashes})
		}
	}
	if curSession >= 0 {
		s.Elapsed = base + s.LastAt.Sub(sessStart)
	}
	s.CrashTotal = crashes
	return s
}

// snapshot copies the live totals.
func (s *Soak) snapshot() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// progress is the one-line display: rewritten in place on a terminal,
// a line every 30 s otherwise (logs, tests).
type progress struct {
	s   *Soak
	w   io.Writer
	tty bool
	mu  sync.Mutex
}

func newProgress(s *Soak, w io.Writer) *progress {
	p := &progress{s: s, w: w}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.tty = true
	}
	return p
}

func (p *progress) line() string {
	el := p.s.prev + time.Since(p.s.start)
	left := time.Until(p.s.deadline)
	return fmt.Sprintf("[soak %s, %s left] %s", el.Round(time.Second), max(left, 0).Round(time.Second), p.s.snapshot().Line())
}

// event prints a line above the progress line.
func (p *progress) event(format string, args ...any) {
	if p == nil {
		return
	}
	// Titles and errors come from the guest: escaped for the terminal.
	msg := termsafe.String(fmt.Sprintf(format, args...))
	p.s.logf("%s", msg)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tty {
		fmt.Fprintf(p.w, "\r\033[K%s\n%s", msg, p.line())
		return
	}
	fmt.Fprintf(p.w, "%s %s\n", time.Now().UTC().Format("15:04:05"), msg)
}

// run starts the ticker; the returned func stops it.
func (p *progress) run() func() {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		every := 30 * time.Second
		if p.tty {
			every = time.Second
		}
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				p.mu.Lock()
				if p.tty {
					fmt.Fprintf(p.w, "\r\033[K%s", p.line())
				} else {
					fmt.Fprintf(p.w, "%s %s\n", time.Now().UTC().Format("15:04:05"), p.line())
				}
				p.mu.Unlock()
			}
		}
	}()
	return func() {
		close(done)
		wg.Wait()
		if p.tty {
			fmt.Fprintf(p.w, "\r\033[K")
		}
	}
}

// Status is `labctl soak status DIR`: what the journal and crash store
// say, and whether a soak still holds the directory.
func Status(w io.Writer, dir string) error {
	recs, err := Replay(dir)
	if err != nil {
		return err
	}
	s := summarizeDir(dir, recs)
	crashes, _ := Crashes(dir)
	running := "not running"
	if pid := strings.TrimSpace(readSmall(dir + "/soak.lock")); pid != "" && lockHeld(dir) {
		running = "running (pid " + pid + ")"
	} else if s.Ended != "" {
		running = "finished (" + s.Ended + ")"
	} else if s.Sessions > 0 {
		running = "stopped without an end record (killed?): continue with labctl soak --resume " + dir
	}
	fmt.Fprintf(w, "soak %s: %s\n", dir, running)
	if s.First != nil {
		o := s.First.Options
		fmt.Fprintf(w, "  kernel %s (%s), %s, %d guest(s) of %d MiB, for %s, seed %d, %d session(s)\n",
			s.First.Kernel, o.Config, s.First.Accel, o.VMs, o.MemoryMiB, o.For, o.Seed, s.Sessions)
	}
	fmt.Fprintf(w, "  active %s, last record %s\n", s.Elapsed.Round(time.Second), s.LastAt.Format(time.RFC3339))
	fmt.Fprintf(w, "  %s\n", s.Stats.Line())
	if pts := sortedCoverage(s.Coverage); len(pts) > 0 {
		p := pts[len(pts)-1]
		fmt.Fprintf(w, "  coverage: %d of %d series lines executed (%.1f%%) after %s\n", p.Executed, p.SeriesLines, p.Percent(), (time.Duration(p.Elapsed) * time.Second).Round(time.Minute))
	}
	if len(crashes) > 0 {
		fmt.Fprintf(w, "  crashes:\n")
		for _, c := range crashes {
			k := ""
			if c.Kind == "known" {
				k = ", known kernel bug outside LDT: not counted"
			}
			fmt.Fprintf(w, "    %4d× %s (last %s%s)\n", c.Count, termsafe.Line(c.Title), c.LastSeen.Format("15:04:05"), k)
		}
	}
	return nil
}

// lockHeld tries the directory lock: held means a soak runs there.
func lockHeld(dir string) bool {
	f, err := secfs.OpenFile(dir+"/soak.lock", os.O_RDONLY, 0)
	if err != nil {
		return false
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err != nil {
		return true
	}
	unix.Flock(int(f.Fd()), unix.LOCK_UN)
	return false
}

// crashTotals counts the crash store: unique titles and occurrences.
func crashTotals(dir string) (unique, total int) {
	cs, _ := Crashes(dir)
	for _, c := range cs {
		if c.Kind == "known" {
			continue // excused kernel bugs outside LDT: listed, not counted
		}
		unique++
		total += c.Count
	}
	return
}

func sortedKeys[M ~map[string]V, V any](m M) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
