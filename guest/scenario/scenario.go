// Package scenario is the catalogue of deterministic dirty-tracking
// scenarios of issue 4 and their oracle. Each scenario is a seeded program
// that drives one family of the kernel paths that read or clear the dirty
// bit (reclaim, swap, MADV_FREE, migration, THP, KSM, fork, GUP…; the
// catalogue in README.md and kmod/README.md), collects with the tracker under test
// after every epoch and judges the report against ground truth: missed
// pages (written, not reported), extra pages (reported, not written:
// counted and classified, never failed) and corrupted pages (content that
// is not the last written stamp: the kernel lost data).
package scenario

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"sort"
	"strings"
	"time"

	"ldtlab/guest/result"
	"ldtlab/guest/tracker"
)

// Expect is what the negative control (the naive tracker) must do to a
// scenario.
type Expect = result.Expect

// Expectations and outcomes, as the host reads them.
const (
	LoseData  = result.LoseData
	MissPages = result.MissPages
	Nothing   = result.Nothing
	Pass      = result.Pass
	Fail      = result.Fail
	Skip      = result.Skip
)

// Scenario is one entry of the catalogue.
type Scenario struct {
	Name string
	// Paths names the rows of the dirty-bit map it drives.
	Paths string
	Doc   string
	Naive Expect
	// Loss, when set, is the kind of corruption (a substring of its
	// description) the naive LoseData expectation must show: losing data
	// some other way is a different bug, not the one declared.
	Loss string
	// NotFor maps trackers the scenario's mechanics exclude to the reason.
	NotFor map[string]string
	// Run drives the scenario; it returns a *SkipError when the guest
	// lacks something it needs.
	Run func(e *Env) error
	// Child runs the scenario in a child process (the memory cgroup
	// scenario); see child.go.
	Child *ChildSpec
}

// Trackers lists the trackers the scenario runs under.
func (s *Scenario) Trackers() []string {
	var out []string
	for _, t := range tracker.Names() {
		if _, no := s.NotFor[t]; !no {
			out = append(out, t)
		}
	}
	return out
}

// SkipError says why a scenario cannot run here.
type SkipError struct{ Reason string }

func (e *SkipError) Error() string { return "skip: " + e.Reason }

// Skipf returns a *SkipError.
func Skipf(format string, args ...any) error {
	return &SkipError{Reason: fmt.Sprintf(format, args...)}
}

// Config selects one cell.
type Config struct {
	Tracker string
	Seed    uint64
	Epochs  int // 0: the scenario's default
	// DataDir is a directory on a block-device file system (ext2 on the
	// guest's data disk) for writeback and O_DIRECT.
	DataDir string
	// Progress receives human-readable progress (stderr); nil discards.
	Progress io.Writer
	// KeepSets records the reported page offsets of every epoch (compare).
	KeepSets bool
}

// Result is one cell, as ldt-check prints it and the host judges it.
type Result = result.Cell

const maxSamples = 8

// Env is what a running scenario gets: its seeded randomness, the tracker
// under test and the result it fills.
type Env struct {
	Config
	Rand   *rand.Rand
	Epochs int
	res    *Result
	// corrupt holds the (page, expected stamp) pairs already counted, so
	// a lost page seen by several verifications counts once.
	corrupt map[[2]uint64]bool
	loss    string
}

// Logf writes a progress line.
func (e *Env) Logf(format string, args ...any) {
	if e.Progress != nil {
		fmt.Fprintf(e.Progress, "[%s/%s] "+format+"\n", append([]any{e.res.Scenario, e.Tracker}, args...)...)
	}
}

// Note records a fact for the result.
func (e *Env) Note(format string, args ...any) {
	e.res.Notes = append(e.res.Notes, fmt.Sprintf(format, args...))
}

func (e *Env) sample(s string) {
	if len(e.res.Samples) < maxSamples {
		e.res.Samples = append(e.res.Samples, s)
	}
}

// Open opens the tracker under test on pid's [start,end); a tracker the
// guest lacks turns into a skip. Every report of the returned tracker is
// checked for well-formed regions inside the range asked for.
func (e *Env) Open(pid int, start, end uintptr) (tracker.Tracker, error) {
	t, err := tracker.Open(e.Tracker, pid, start, end)
	if errors.Is(err, tracker.ErrUnsupported) {
		return nil, &SkipError{Reason: err.Error()}
	}
	if err != nil {
		return nil, err
	}
	return checked{t}, nil
}

// checked rejects reports that are unaligned, inverted, empty or outside
// the collected range: a tracker returning them is broken, whatever the
// pages inside say.
type checked struct{ tracker.Tracker }

func (c checked) Collect(start, end uintptr, clear bool) ([]tracker.Region, error) {
	rs, err := c.Tracker.Collect(start, end, clear)
	if err != nil {
		return rs, err
	}
	if err := CheckRegions(rs, start, end); err != nil {
		return nil, fmt.Errorf("tracker %s: %w", c.Name(), err)
	}
	return rs, nil
}

// CheckRegions fails regions that are not page aligned, inverted or empty,
// or reach outside [start,end).
func CheckRegions(rs []tracker.Region, start, end uintptr) error {
	for _, r := range rs {
		switch {
		case r.Start%PageSize != 0 || r.End%PageSize != 0:
			return fmt.Errorf("reported region %v is not page aligned", r)
		case r.End <= r.Start:
			return fmt.Errorf("reported region %v is inverted or empty", r)
		case r.Start < start || r.End > end:
			return fmt.Errorf("reported region %v lies outside the collected range [%#x,%#x)", r, start, end)
		}
	}
	return nil
}

// Quiet runs the quiet epoch every scenario ends with: a collection
// (judged like any other: it must report what was written since the last
// one), then a second one with nothing written in between, which must be
// empty. A tracker that reports everything, or whose clear does not clear,
// fails here.
func (e *Env) Quiet(ws *Workset, t tracker.Tracker) error {
	if _, err := e.Collect(ws, t); err != nil {
		return err
	}
	return e.QuietOnly(ws.Base, ws.End(), t)
}

// QuietOnly is the second half of Quiet, for a scenario that has just
// collected [start,end) itself.
func (e *Env) QuietOnly(start, end uintptr, t tracker.Tracker) error {
	rs, err := t.Collect(start, end, true)
	if err != nil {
		return fmt.Errorf("quiet collection: %w", err)
	}
	n := tracker.NewSet(rs...).Len()
	e.res.QuietEpochs++
	e.res.QuietReported += n
	if n > 0 {
		e.sample(fmt.Sprintf("quiet epoch: %d pages reported with nothing written (first %v)", n, rs[0]))
		e.Logf("quiet epoch: %d pages reported with nothing written", n)
	}
	return nil
}

// Track opens the tracker under test on the caller's working set.
func (e *Env) Track(ws *Workset) (tracker.Tracker, error) {
	return e.Open(0, ws.Base, ws.End())
}

// Collect collects with clear over the whole working set and records the
// oracle's verdict as one epoch.
func (e *Env) Collect(ws *Workset, t tracker.Tracker) (EpochStat, error) {
	rs, err := t.Collect(ws.Base, ws.End(), true)
	if err != nil {
		return EpochStat{}, fmt.Errorf("collect epoch %d: %w", len(e.res.Written)+1, err)
	}
	st := ws.Judge(rs)
	e.Record(st)
	return st, nil
}

// Record adds an epoch's verdict to the result.
func (e *Env) Record(st EpochStat) {
	r := e.res
	r.Written = append(r.Written, st.Written)
	r.Reported = append(r.Reported, st.Reported)
	r.MissedPerEpoch = append(r.MissedPerEpoch, len(st.Missed))
	r.CorruptPerEpoch = append(r.CorruptPerEpoch, 0)
	r.Missed += len(st.Missed)
	r.Extra += st.Extra
	for k, v := range st.Classified {
		r.ExtraClassified[k] += v
		if Unexplained(k) {
			r.Unexplained += v
		}
	}
	if e.KeepSets {
		r.ReportedSets = append(r.ReportedSets, st.ReportedOffs)
	}
	for i, p := range st.Missed {
		if i == 2 {
			break
		}
		e.sample(fmt.Sprintf("epoch %d: missed page %#x", len(r.Written), p))
	}
	if len(st.Missed) > 0 {
		e.Logf("epoch %d: written %d reported %d MISSED %d", len(r.Written), st.Written, st.Reported, len(st.Missed))
	} else {
		e.Logf("epoch %d: written %d reported %d", len(r.Written), st.Written, st.Reported)
	}
}

// AddCorrupt counts corrupted pages found by a verification; a page is
// counted once per expected content.
func (e *Env) AddCorrupt(cs []Corruption) {
	n := 0
	for _, c := range cs {
		k := [2]uint64{uint64(c.ID), c.Want}
		if e.corrupt[k] {
			continue
		}
		e.corrupt[k] = true
		n++
		if e.loss != "" && strings.Contains(c.What, e.loss) {
			e.res.DeclaredLoss++
		}
		e.sample("corrupted " + c.String())
	}
	if n == 0 {
		return
	}
	e.res.Corrupted += n
	if k := len(e.res.CorruptPerEpoch); k > 0 {
		e.res.CorruptPerEpoch[k-1] += n
	}
	e.Logf("CORRUPTED %d pages (first: %s)", n, cs[0])
}

// Verify checks all pages of ws through the CPU and counts corruption.
func (e *Env) Verify(ws *Workset) error {
	cs, err := ws.Verify(nil)
	e.AddCorrupt(cs)
	return err
}

// order is the numbering (lazyfree-thp next to lazyfree).
var order = []string{
	"stale-swap-cache", "lazyfree", "lazyfree-thp", "swap-roundtrip", "memory-pressure", "writeback",
	"ksm", "migration", "thp-split-collapse", "fork", "mprotect", "mremap", "kernel-writes",
	"coexistence", "concurrency", "lifecycle", "shmem-thp-split",
	"pinned-thp-wrprotect", "pinned-thp-numa-hint", "shared-pin-elsewhere", "kernel-rings", "shmem-collapse",
	"shared-pin-between-collections", "shared-pin-udmabuf",
}

// Catalogue is every scenario, in the order.
func Catalogue() []*Scenario {
	sort.SliceStable(catalogue, func(i, j int) bool {
		return rank(catalogue[i].Name) < rank(catalogue[j].Name)
	})
	return catalogue
}

func rank(name string) int {
	if i := slices.Index(order, name); i >= 0 {
		return i
	}
	return len(order)
}

var catalogue []*Scenario

func register(s *Scenario) { catalogue = append(catalogue, s) }

// Lookup finds a scenario by name.
func Lookup(name string) (*Scenario, bool) {
	for _, s := range catalogue {
		if s.Name == name {
			return s, true
		}
	}
	return nil, false
}

// Names lists the scenario names in catalogue order.
func Names() []string {
	var out []string
	for _, s := range catalogue {
		out = append(out, s.Name)
	}
	return out
}

// defaultEpochs is used when Config.Epochs is 0.
const defaultEpochs = 6

// RunCell runs scenario s under cfg.Tracker and judges it.
func RunCell(s *Scenario, cfg Config) *Result {
	epochs := cfg.Epochs
	if epochs <= 0 {
		epochs = defaultEpochs
	}
	res := &Result{
		Scenario: s.Name, Tracker: cfg.Tracker, Seed: cfg.Seed, Epochs: epochs,
		NaiveExpectation: s.Naive, ExtraClassified: map[string]int{},
		Written: []int{}, Reported: []int{}, MissedPerEpoch: []int{}, CorruptPerEpoch: []int{},
	}
	start := time.Now()
	defer func() { res.DurationMS = time.Since(start).Milliseconds() }()
	if !tracker.Known(cfg.Tracker) {
		res.Outcome, res.Reason = Fail, fmt.Sprintf("unknown tracker %q", cfg.Tracker)
		return res
	}
	if why, no := s.NotFor[cfg.Tracker]; no {
		res.Outcome, res.Reason, res.AsExpected = Skip, "not applicable: "+why, true
		return res
	}
	if s.Child != nil && !inChild {
		// The child judges its own cell; its result is ours.
		runInChild(s, cfg, res)
		return res
	}
	err := runBody(s, cfg, res, epochs)
	var se *SkipError
	switch {
	case errors.As(err, &se):
		res.Outcome, res.Reason, res.AsExpected = Skip, se.Reason, true
		return res
	case err != nil:
		res.Outcome, res.Reason = Fail, err.Error()
		return res
	}
	if res.QuietEpochs == 0 {
		res.Outcome, res.Reason = Fail, "the scenario ran no quiet epoch: its over-reporting is unbounded"
		return res
	}
	judge(s, res)
	return res
}

// Unexplained tells the extra-report classes no kernel mechanism
// explains: ldt reporting them is over-reporting.
func Unexplained(class string) bool {
	switch class {
	case "unclassified", "outside-range", "unmapped-reservation", "child:unclassified", "child:outside-range", "child:unmapped-reservation":
		return true
	}
	return false
}

// Strict tells the trackers whose over-reporting fails a cell: ldt and
// the mutants that stand in for it.
func Strict(name string) bool {
	return name == "ldt" || slices.Contains(tracker.Mutants(), name)
}

func runBody(s *Scenario, cfg Config, res *Result, epochs int) (err error) {
	e := &Env{
		Config:  cfg,
		Rand:    rand.New(rand.NewPCG(cfg.Seed, uint64(len(s.Name))<<32^0x1d7)),
		Epochs:  epochs,
		res:     res,
		corrupt: map[[2]uint64]bool{},
		loss:    s.Loss,
	}
	// One OS thread for the whole body: MADV_PAGEOUT drains only the
	// calling CPU's LRU batches, and pinning needs a stable thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v", p)
		}
	}()
	return s.Run(e)
}

// judge applies the outcome rule the host relies on: pass ⇔ missed == 0
// and corrupted == 0; for naive, as expected ⇔ it failed the declared way.
func judge(s *Scenario, res *Result) {
	res.Outcome = Pass
	over := res.QuietReported > 0 || (Strict(res.Tracker) && res.Unexplained > 0)
	if res.Missed > 0 || res.Corrupted > 0 || over {
		res.Outcome = Fail
	}
	if res.Tracker != "naive" {
		res.AsExpected = res.Outcome == Pass
		if !res.AsExpected {
			res.Reason = fmt.Sprintf("%d missed, %d corrupted pages", res.Missed, res.Corrupted)
			if over {
				res.Reason += fmt.Sprintf("; over-reporting: %d pages in quiet epochs, %d unexplained extra", res.QuietReported, res.Unexplained)
			}
			if k := result.KnownGap(s.Name, res.Tracker); k != "" {
				res.Reason += "; known " + res.Tracker + " gap: " + k
			}
		}
		return
	}
	switch s.Naive {
	case LoseData:
		res.AsExpected = res.Corrupted > 0
		res.Reason = fmt.Sprintf("naive must lose data: corrupted=%d missed=%d", res.Corrupted, res.Missed)
		if s.Loss != "" {
			res.AsExpected = res.DeclaredLoss > 0
			res.Reason += fmt.Sprintf(", of them %d %q", res.DeclaredLoss, s.Loss)
		}
	case MissPages:
		res.AsExpected = res.Missed > 0
		res.Reason = fmt.Sprintf("naive must miss pages: missed=%d corrupted=%d", res.Missed, res.Corrupted)
	default:
		res.AsExpected = res.Outcome == Pass
		res.Reason = fmt.Sprintf("naive must behave like ldt here: missed=%d corrupted=%d", res.Missed, res.Corrupted)
	}
	if !res.AsExpected && s.Naive != Nothing {
		res.Reason = "no teeth: " + res.Reason
	}
}

// SortedKeys returns m's keys in order (stable output).
func SortedKeys(m map[string]int) []string {
	k := make([]string, 0, len(m))
	for s := range m {
		k = append(k, s)
	}
	sort.Strings(k)
	return k
}

// hostname-free default for the data directory.
func defaultDataDir() string {
	if d := os.Getenv("LDTLAB_DATADIR"); d != "" {
		return d
	}
	return "/mnt/data"
}

// DefaultDataDir is /mnt/data unless LDTLAB_DATADIR says otherwise.
var DefaultDataDir = defaultDataDir()
