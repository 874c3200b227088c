package fuzz

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"ldtlab/guest/result"
)

// ExecArg as os.Args[1] makes ldt-fuzz run one sequence (stdin) under one
// tracker and print an ExecResult: every run is a fresh process.
const ExecArg = "-fuzz-exec"

// Options select a fuzz run.
type Options struct {
	Duration time.Duration // draw sequences until then (0 with Replay: once)
	Seed     uint64        // sequence i is Generate(SeqSeed(Seed, i))
	Trackers []string      // default: ldt, naive, softdirty, pagemap-scan
	DataDir  string        // a block-device file system (the data disk)
	OutDir   string        // replay files
	MaxSeqs  int           // stop after this many sequences (0: no limit)
	Replay   *Sequence     // run this sequence instead of drawing
	// Minimize failures (drop operations while it still fails) within
	// MinimizeFor each (default 4 minutes).
	Minimize    bool
	MinimizeFor time.Duration
	// Until stops early once findings of every class named are in
	// (Class: pinned-thp, shared-pin, shmem-collapse, ring).
	Until       []string
	ExecTimeout time.Duration // per run (default 2 minutes)
	Self        string        // this program (default /proc/self/exe)
	Progress    io.Writer
	// Runner replaces the child process (unit tests).
	Runner func(ctx context.Context, seq *Sequence, tracker string) (*ExecResult, error)
}

// Summary is a fuzz run, as ldt-fuzz prints it.
type Summary struct {
	Seed      uint64                   `json:"seed"`
	Sequences int                      `json:"sequences"`
	Runs      int                      `json:"runs"`
	TookS     float64                  `json:"took_s"`
	Trackers  map[string]*TrackerStats `json:"trackers"`
	Findings  []*Finding               `json:"findings,omitempty"`
	// KnownGaps counts lost pages excused by a documented gap, per
	// tracker and class.
	KnownGaps map[string]int `json:"known_gaps,omitempty"`
	OpsDone   map[string]int `json:"ops_done"`
	OpsFailed map[string]int `json:"ops_failed,omitempty"`
	// TimeMS sums where the runs' time went (setup, operations, final);
	// ExecMS is the runs' total, wall clock included (process start).
	TimeMS  map[string]int64 `json:"time_ms,omitempty"`
	ExecMS  int64            `json:"exec_ms"`
	Checked int64            `json:"pages_checked"`
	Errors  []string         `json:"errors,omitempty"`
	Until   []string         `json:"until,omitempty"`
	Stopped string           `json:"stopped"`
}

// TrackerStats are one tracker's runs.
type TrackerStats struct {
	Runs     int            `json:"runs"`
	Verdicts map[string]int `json:"verdicts"`
	Verdict  result.Verdict `json:"verdict"`
	Checked  int64          `json:"pages_checked"`
	Reported int64          `json:"pages_reported"`
	NA       map[string]int `json:"na,omitempty"`
}

// Finding is one failure, minimized, with its replay.
type Finding struct {
	Title     string  `json:"title"`
	Class     string  `json:"class,omitempty"` // the known bug it is (issue 19), if any
	Tracker   string  `json:"tracker"`
	Key       string  `json:"key"`
	Kind      string  `json:"kind"` // lost | corrupted | over-reported | error
	Count     int     `json:"count"`
	Seq       int     `json:"sequence"` // number of the sequence that first showed it
	SeqSeed   uint64  `json:"sequence_seed"`
	FoundS    float64 `json:"found_s"`
	MinimizeS float64 `json:"minimize_s"`
	OrigOps   int     `json:"original_ops"`
	MinOps    int     `json:"minimized_ops"`
	// Reproduced: the minimized sequence failed the same way when run
	// again on its own.
	Reproduced bool      `json:"reproduced"`
	Example    string    `json:"example"`
	Replay     *Sequence `json:"replay"`
	ReplayFile string    `json:"replay_file,omitempty"`
	Command    string    `json:"command"`
}

// FindingPrefix starts a progress line that holds a finding as JSON.
const FindingPrefix = "ldt-fuzz-finding: "

// SeqSeed is sequence i's seed.
func SeqSeed(base uint64, i int) uint64 {
	z := base + uint64(i+1)*0x9e3779b97f4a7c15
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// DefaultTrackers are the trackers a run compares.
var DefaultTrackers = []string{"ldt", "naive", "softdirty", "pagemap-scan"}

// negative tells the trackers that must be caught.
func negative(t string) bool { return t == "naive" || result.IsMutant(t) }

type driver struct {
	o     Options
	sum   *Summary
	start time.Time
	byKey map[string][]*Finding // a key's variants (different minimized triggers)
	snap  map[string]string
}

// Run fuzzes until the deadline (or the replay is done).
func Run(ctx context.Context, o Options) (*Summary, error) {
	if len(o.Trackers) == 0 {
		o.Trackers = DefaultTrackers
	}
	if o.ExecTimeout == 0 {
		o.ExecTimeout = 2 * time.Minute
	}
	if o.MinimizeFor == 0 {
		o.MinimizeFor = 4 * time.Minute
	}
	if o.Self == "" {
		o.Self = "/proc/self/exe"
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	d := &driver{o: o, start: time.Now(), byKey: map[string][]*Finding{}, snap: Snapshot(),
		sum: &Summary{Seed: o.Seed, Trackers: map[string]*TrackerStats{}, KnownGaps: map[string]int{}, OpsDone: map[string]int{}, OpsFailed: map[string]int{}, TimeMS: map[string]int64{}, Until: o.Until}}
	for _, t := range o.Trackers {
		d.sum.Trackers[t] = &TrackerStats{Verdicts: map[string]int{}, NA: map[string]int{}}
	}
	defer Restore(d.snap)
	if o.Runner == nil {
		if err := EnsureDataFile(o.DataDir); err != nil {
			return nil, err
		}
	}
	deadline := d.start.Add(o.Duration)
	d.sum.Stopped = "deadline"
	for i := 0; ; i++ {
		if ctx.Err() != nil {
			d.sum.Stopped = "interrupted"
			break
		}
		if o.Replay != nil {
			if i == 1 {
				d.sum.Stopped = "replayed"
				break
			}
		} else if time.Now().After(deadline) || (o.MaxSeqs > 0 && i >= o.MaxSeqs) {
			if o.MaxSeqs > 0 && i >= o.MaxSeqs {
				d.sum.Stopped = "sequences done"
			}
			break
		}
		seq := o.Replay
		if seq == nil {
			seq = Generate(SeqSeed(o.Seed, i))
		}
		d.sequence(ctx, i, seq)
		if d.untilMet() {
			d.sum.Stopped = "every class in --until found"
			break
		}
	}
	d.finish()
	return d.sum, nil
}

// Classes are the finding classes (issue 19's lost writes) --until and
// --expect name; "ring" is either ring.
var Classes = []string{"pinned-thp", "shared-pin", "shmem-collapse", "ring", "ring-uring", "ring-aio", "pinned-wp", "khugepaged-retract", "pin-before-attach"}

// ClassMatches tells whether a finding of class got answers want.
func ClassMatches(got, want string) bool {
	return got != "" && (got == want || (want == "ring" && strings.HasPrefix(got, "ring")))
}

func (d *driver) untilMet() bool {
	if len(d.o.Until) == 0 {
		return false
	}
	for _, c := range d.o.Until {
		found := false
		for _, f := range d.sum.Findings {
			found = found || (ClassMatches(f.Class, c) && (f.Reproduced || !d.o.Minimize))
		}
		if !found {
			return false
		}
	}
	return true
}

func (d *driver) logf(format string, args ...any) {
	fmt.Fprintf(d.o.Progress, "[fuzz %6.1fs] "+format+"\n", append([]any{time.Since(d.start).Seconds()}, args...)...)
}

// sequence runs seq under every tracker and handles what they found.
func (d *driver) sequence(ctx context.Context, i int, seq *Sequence) {
	d.sum.Sequences++
	var line []string
	type fresh struct {
		key  string
		loss *Loss
		res  *ExecResult
		kind string
		t    string
	}
	var news []fresh
	for _, t := range d.o.Trackers {
		t0 := time.Now()
		res, err := d.run(ctx, seq, t)
		if ctx.Err() != nil {
			return
		}
		d.sum.ExecMS += time.Since(t0).Milliseconds()
		ts := d.sum.Trackers[t]
		if err != nil {
			res = &ExecResult{Tracker: t, Error: err.Error()}
		}
		v, keys := Judge(t, res)
		if v != result.VNA {
			ts.Runs++
			d.sum.Runs++
		} else {
			ts.NA[res.NA]++
		}
		ts.Verdicts[string(v)]++
		ts.Checked += int64(res.Checked)
		ts.Reported += int64(res.Reported)
		d.sum.Checked += int64(res.Checked)
		for k, n := range res.OpsDone {
			d.sum.OpsDone[k] += n
		}
		for k, n := range res.OpsFailed {
			d.sum.OpsFailed[k] += n
		}
		for k, n := range res.TimeMS {
			d.sum.TimeMS[k] += n
		}
		for _, l := range res.Losses {
			if l.Gap != "" {
				d.sum.KnownGaps[t+" "+l.Gap]++
			}
		}
		if v == result.VNA {
			line = append(line, fmt.Sprintf("%s %s", t, v))
		} else {
			line = append(line, fmt.Sprintf("%s %s (%.1fs)", t, v, float64(res.TookMS)/1000))
		}
		for _, k := range keys {
			if f := d.variantOf(k.key, seq); f != nil {
				f.Count++
				continue
			}
			news = append(news, fresh{k.key, k.loss, res, k.kind, t})
		}
	}
	d.logf("seq %d (seed %d, %d regions, %d ops): %s", i, seq.Seed, len(seq.Regions), len(seq.Ops), strings.Join(line, ", "))
	for _, n := range news {
		if f := d.variantOf(n.key, seq); f != nil {
			f.Count++
			continue
		}
		f := &Finding{Tracker: n.t, Key: n.key, Kind: n.kind, Count: 1, Seq: i, SeqSeed: seq.Seed,
			FoundS: time.Since(d.start).Seconds(), OrigOps: len(seq.Ops), Replay: seq.Clone(), Example: describe(n.res, n.loss)}
		d.logf("FINDING %s: %s", n.key, f.Example)
		if d.o.Minimize {
			d.minimize(ctx, f)
		}
		f.MinOps = len(f.Replay.Ops)
		f.Title = Title(f)
		f.Class = Classify(f)
		if same := d.sameTitle(f); same != nil {
			// Another way to the same reproducer: one finding.
			same.Count++
			d.logf("  minimized to a known finding: %s", same.Title)
			continue
		}
		d.byKey[n.key] = append(d.byKey[n.key], f)
		d.save(f)
		d.sum.Findings = append(d.sum.Findings, f)
		d.logf("  %s (class %q): %d → %d operations in %.0fs, reproduced=%v; replay: %s", f.Title, f.Class, f.OrigOps, f.MinOps, f.MinimizeS, f.Reproduced, f.Command)
		// The finding whole, at once: a run that dies later (the kernel
		// panics, the host interrupts it) keeps it.
		if b, err := json.Marshal(f); err == nil {
			fmt.Fprintf(d.o.Progress, "%s%s\n", FindingPrefix, b)
		}
	}
}

// maxVariants bounds the reproducers minimized for one key.
const maxVariants = 4

// variantOf returns the finding a failure with key in seq repeats: one of
// the key whose minimized reproducer's operations all occur in seq (the
// same trigger, most likely). A failure whose sequence lacks every known
// variant's trigger is minimized again: it may be another way in (a
// pinned THP write-protected by PAGEMAP_SCAN rather than clear_refs).
func (d *driver) variantOf(key string, seq *Sequence) *Finding {
	vs := d.byKey[key]
	if len(vs) == 0 {
		return nil
	}
	have := map[string]bool{}
	for _, o := range seq.Ops {
		have[opName(o)] = true
	}
	for _, f := range vs {
		all := true
		for _, t := range triggers(f.Replay) {
			all = all && have[t]
		}
		if all {
			return f
		}
	}
	if len(vs) >= maxVariants {
		return vs[0]
	}
	return nil
}

func (d *driver) sameTitle(f *Finding) *Finding {
	for _, vs := range d.byKey {
		for _, g := range vs {
			if g.Title == f.Title {
				return g
			}
		}
	}
	return nil
}

// opName names an operation as titles do (madvise-collapse, numa-on).
func opName(o Op) string {
	switch o.Op {
	case OpMadvise, OpMprotect, OpNUMA, OpUffdWP:
		return o.Op + "-" + o.Arg
	}
	return o.Op
}

// triggers are the operations of a reproducer that are not plain
// writes, reads, collections or pauses, in order, once each.
func triggers(s *Sequence) []string {
	var out []string
	for _, o := range s.Ops {
		switch o.Op {
		case OpWrite, OpRead, OpCollect, OpSleep:
			continue
		}
		if n := opName(o); !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out
}

func describe(res *ExecResult, l *Loss) string {
	switch {
	case l != nil:
		return l.String() + ": " + l.Detail + " [" + strings.Join(l.Events, "; ") + "]"
	case res.Error != "":
		return "error: " + res.Error
	case res.Quiet > 0:
		return fmt.Sprintf("%d pages reported by a quiet collection: %s", res.Quiet, res.QuietSample)
	}
	return ""
}

// run runs seq under tracker t in a fresh process.
func (d *driver) run(ctx context.Context, seq *Sequence, t string) (*ExecResult, error) {
	defer Restore(d.snap)
	if d.o.Runner != nil {
		return d.o.Runner(ctx, seq, t)
	}
	b, err := json.Marshal(seq)
	if err != nil {
		return nil, err
	}
	// A kernel report's console context then says which run it came from.
	kmsg(fmt.Sprintf("ldt-fuzz: sequence seed %d (%d ops) under %s", seq.Seed, len(seq.Ops), t))
	rctx, cancel := context.WithTimeout(ctx, d.o.ExecTimeout)
	defer cancel()
	cmd := exec.CommandContext(rctx, d.o.Self, ExecArg, t, filepath.Join(d.o.DataDir, DataFileName), d.o.DataDir)
	cmd.Stdin = bytes.NewReader(b)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.WaitDelay = 5 * time.Second
	err = cmd.Run()
	// File regions a killed run left behind.
	if old, _ := filepath.Glob(filepath.Join(d.o.DataDir, "ldt-fuzz-*-r*")); len(old) > 0 {
		for _, p := range old {
			os.Remove(p)
		}
	}
	var res ExecResult
	if jerr := json.Unmarshal(out.Bytes(), &res); jerr != nil {
		msg := strings.TrimSpace(errb.String())
		if len(msg) > 600 {
			msg = msg[len(msg)-600:]
		}
		switch {
		case rctx.Err() != nil && ctx.Err() == nil:
			return nil, fmt.Errorf("the run did not finish within %s (killed): %s", d.o.ExecTimeout, msg)
		case err != nil:
			return nil, fmt.Errorf("the run died (%v): %s", err, msg)
		}
		return nil, fmt.Errorf("unreadable result (%v): %s", jerr, msg)
	}
	return &res, nil
}

// key identifies a failure for deduplication and for the minimizer's
// "still fails the same way".
type key struct {
	key  string
	kind string
	loss *Loss
}

// primary is the writer a loss is filed under: a pin or the kernel's ring
// before the process's own writes.
func primary(srcs []string) string {
	best := ""
	rank := map[string]int{classPin: 3, classRing: 2, classOwn: 1}
	for _, s := range srcs {
		if best == "" || rank[sourceClass[s]] > rank[sourceClass[best]] {
			best = s
		}
	}
	return best
}

// Judge gives a run's verdict and the failures it holds (for the
// negative control, none: its losses are what CAUGHT means).
func Judge(t string, r *ExecResult) (result.Verdict, []key) {
	if r.NA != "" {
		return result.VNA, nil
	}
	var keys []key
	seen := map[string]bool{}
	addKey := func(k key) {
		if !seen[k.key] {
			seen[k.key] = true
			keys = append(keys, k)
		}
	}
	lost, gaps := 0, 0
	for i := range r.Losses {
		l := &r.Losses[i]
		if l.Gap != "" {
			gaps++
			continue
		}
		lost++
		addKey(key{fmt.Sprintf("%s|%s|%s|%s", t, l.Kind, l.RKind, primary(l.Sources)), l.Kind, l})
	}
	if r.Quiet > 0 {
		addKey(key{fmt.Sprintf("%s|over-reported|%s", t, firstWord(r.QuietSample)), "over-reported", nil})
	}
	if r.Error != "" {
		addKey(key{fmt.Sprintf("%s|error|%s", t, errorKey(r.Error)), "error", nil})
	}
	if negative(t) {
		if r.Error != "" {
			return result.VError, keys[len(keys)-1:]
		}
		if lost > 0 || gaps > 0 || r.Quiet > 0 {
			return result.VCaught, nil
		}
		return result.VPass, nil
	}
	switch {
	case r.Error != "":
		return result.VError, keys
	case len(keys) > 0:
		return result.VFail, keys
	case gaps > 0:
		return result.VKnownGap, nil
	}
	return result.VPass, nil
}

// firstWord is the region kind of a quiet sample "r0 (kind) pages ...".
func firstWord(s string) string {
	f := strings.Fields(s)
	if len(f) < 2 {
		return s
	}
	return strings.Trim(f[1], "()")
}

// errorKey keeps what an error says without its addresses and numbers.
func errorKey(s string) string {
	var b strings.Builder
	for _, w := range strings.Fields(s) {
		if strings.ContainsAny(w, "0123456789") {
			continue
		}
		b.WriteString(w + " ")
		if b.Len() > 80 {
			break
		}
	}
	return strings.TrimSpace(b.String())
}

// minimize drops operations (and regions) while the sequence still
// fails with f's key: delta debugging, complements first, then single
// operations, bounded by MinimizeFor.
func (d *driver) minimize(ctx context.Context, f *Finding) {
	t0 := time.Now()
	defer func() { f.MinimizeS = time.Since(t0).Seconds() }()
	deadline := t0.Add(d.o.MinimizeFor)
	trials := 0
	fails := func(s *Sequence) bool {
		if ctx.Err() != nil || time.Now().After(deadline) {
			return false
		}
		trials++
		res, err := d.run(ctx, s, f.Tracker)
		if err != nil {
			res = &ExecResult{Error: err.Error()}
		}
		_, keys := Judge(f.Tracker, res)
		for _, k := range keys {
			if k.key == f.Key {
				return true
			}
		}
		return false
	}
	// First: does it fail again at all?
	if !fails(f.Replay) {
		d.logf("  not reproduced on a second run: kept unminimized")
		return
	}
	seq := Minimize(f.Replay, fails)
	f.Replay = seq
	f.Reproduced = fails(seq)
	d.logf("  minimized in %d runs", trials)
}

// Minimize is ddmin over the operations, then drops unused regions.
func Minimize(seq *Sequence, fails func(*Sequence) bool) *Sequence {
	cur := seq.Clone()
	n := 2
	for len(cur.Ops) >= 2 {
		chunk := (len(cur.Ops) + n - 1) / n
		reduced := false
		for i := 0; i*chunk < len(cur.Ops); i++ {
			cand := cur.Clone()
			lo, hi := i*chunk, min((i+1)*chunk, len(cur.Ops))
			cand.Ops = append(cand.Ops[:lo:lo], cur.Clone().Ops[hi:]...)
			if fails(cand) {
				cur = cand
				n = max(n-1, 2)
				reduced = true
				break
			}
		}
		if !reduced {
			if n >= len(cur.Ops) {
				break
			}
			n = min(2*n, len(cur.Ops))
		}
	}
	if len(cur.Ops) == 1 {
		cand := cur.Clone()
		cand.Ops = nil
		if fails(cand) {
			cur = cand
		}
	}
	// Regions no operation names (a collection of every region names
	// none in particular).
	for ri := len(cur.Regions) - 1; ri >= 0 && len(cur.Regions) > 1; ri-- {
		if cand := dropRegion(cur, ri); cand != nil && fails(cand) {
			cur = cand
		}
	}
	return cur
}

// dropRegion removes region ri and every operation on it; nil when an
// operation depends on it implicitly (fixed buffers, pins).
func dropRegion(s *Sequence, ri int) *Sequence {
	c := s.Clone()
	c.Regions = append(c.Regions[:ri:ri], s.Regions[ri+1:]...)
	var ops []Op
	for _, o := range c.Ops {
		if o.R == ri && o.Op != OpCollect {
			if o.Op == OpUReg || o.Op == OpXPin {
				return nil
			}
			continue
		}
		if o.Op == OpCollect && o.R == ri {
			o.R = -1
		}
		if o.R > ri {
			o.R--
		}
		var w []PageRef
		for _, p := range o.W {
			if p.R == ri {
				continue
			}
			if p.R > ri {
				p.R--
			}
			w = append(w, p)
		}
		o.W = w
		ops = append(ops, o)
	}
	c.Ops = ops
	return c
}

// Title names a finding by what it lost and the operations of its
// minimized reproducer.
func Title(f *Finding) string {
	ops := triggers(f.Replay)
	parts := strings.SplitN(f.Key, "|", 4)
	var t string
	switch f.Kind {
	case "lost":
		t = fmt.Sprintf("fuzz: %s lost %s writes to %s", f.Tracker, parts[3], parts[2])
	case "corrupted":
		t = fmt.Sprintf("fuzz: %s: %s content corrupted (%s writes)", f.Tracker, parts[2], parts[3])
	case "over-reported":
		t = fmt.Sprintf("fuzz: %s over-reported %s in a quiet collection", f.Tracker, parts[2])
	default:
		t = fmt.Sprintf("fuzz: %s error: %s", f.Tracker, parts[2])
	}
	if len(ops) > 0 {
		t += " (" + strings.Join(ops, ", ") + ")"
	}
	if len(t) > 190 {
		t = t[:187] + "..."
	}
	return t
}

// Classify tells which of issue 19's lost writes a finding is ("" none);
// pinned-wp is the 4 KiB twin of pinned-thp this fuzzer found (a pinned
// page write-protected by uffd-wp / PAGEMAP_SCAN: the pin rule needs a
// writable entry).
func Classify(f *Finding) string {
	if f.Tracker != "ldt" || f.Kind != "lost" {
		return ""
	}
	parts := strings.SplitN(f.Key, "|", 4)
	rkind, src := parts[2], parts[3]
	shmem := strings.HasPrefix(rkind, KMemfd) || strings.HasPrefix(rkind, KSharedAnon)
	has := func(op, arg string) bool {
		for _, o := range f.Replay.Ops {
			if o.Op == op && (arg == "" || o.Arg == arg) {
				return true
			}
		}
		return false
	}
	switch {
	case strings.HasPrefix(rkind, KUringRing):
		return "ring-uring"
	case strings.HasPrefix(rkind, KAIORing):
		return "ring-aio"
	case src == OpXWrite && has(OpDetach, ""):
		// Another process's pin taken while no tracker was attached.
		return "pin-before-attach"
	case src == OpXWrite, src == OpUdmabuf:
		return "shared-pin"
	case src == OpUReadFix && (has(OpClearRef, "") || has(OpNUMA, "on") || has(OpPMScan, "") || has(OpUffdWP, "on")):
		// A pinned entry write-protected (clear_refs, NUMA hinting,
		// uffd-wp), then written through the pin.
		if strings.HasSuffix(rkind, "/pmd") {
			return "pinned-thp"
		}
		return "pinned-wp"
	case shmem && has(OpMadvise, "collapse"):
		return "shmem-collapse"
	case shmem && has(OpKhugepaged, ""):
		// khugepaged's retract of a PTE-mapped shmem THP (0023).
		return "khugepaged-retract"
	}
	return ""
}

// save writes f's replay file.
func (d *driver) save(f *Finding) {
	name := "replay-" + TitleHash(f.Title) + ".json"
	f.Command = fmt.Sprintf("ldt-fuzz -replay %s -trackers %s", name, f.Tracker)
	if d.o.OutDir == "" {
		return
	}
	if err := os.MkdirAll(d.o.OutDir, 0o755); err != nil {
		d.sum.Errors = append(d.sum.Errors, err.Error())
		return
	}
	b, _ := json.MarshalIndent(f.Replay, "", "  ")
	p := filepath.Join(d.o.OutDir, name)
	if err := os.WriteFile(p, append(b, '\n'), 0o644); err != nil {
		d.sum.Errors = append(d.sum.Errors, err.Error())
		return
	}
	f.ReplayFile = p
	f.Command = fmt.Sprintf("ldt-fuzz -replay %s -trackers %s", p, f.Tracker)
}

// TitleHash names a title's files (as the soak's crash store does).
func TitleHash(title string) string {
	h := sha256.Sum256([]byte(title))
	return hex.EncodeToString(h[:8])
}

func (d *driver) finish() {
	d.sum.TookS = time.Since(d.start).Seconds()
	for t, ts := range d.sum.Trackers {
		v := ts.Verdicts
		switch {
		case ts.Runs == 0:
			ts.Verdict = result.VNA
		case negative(t):
			switch {
			case v[string(result.VError)] > 0:
				ts.Verdict = result.VError
			case v[string(result.VCaught)] > 0:
				ts.Verdict = result.VCaught
			default:
				ts.Verdict = result.VNoTeeth
			}
		case v[string(result.VFail)] > 0:
			ts.Verdict = result.VFail
		case v[string(result.VError)] > 0:
			ts.Verdict = result.VError
		case v[string(result.VKnownGap)] > 0:
			ts.Verdict = result.VKnownGap
		default:
			ts.Verdict = result.VPass
		}
	}
	sort.SliceStable(d.sum.Findings, func(i, j int) bool { return d.sum.Findings[i].FoundS < d.sum.Findings[j].FoundS })
}

// Failed tells whether the run found anything (or the negative control
// had no teeth, or a tracker errored).
func (s *Summary) Failed() bool {
	if len(s.Findings) > 0 {
		return true
	}
	for _, ts := range s.Trackers {
		if ts.Verdict.Failed() {
			return true
		}
	}
	return false
}

func kmsg(s string) {
	if f, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0); err == nil {
		f.WriteString(s)
		f.Close()
	}
}

// DataFileName is the data file reads come from, in DataDir.
const DataFileName = "ldt-fuzz.dat"

// EnsureDataFile writes the data file (dataWord content) unless it is
// there with the right size.
func EnsureDataFile(dir string) error {
	if dir == "" {
		return errors.New("fuzz: no data directory (the guest's data disk, /mnt/data)")
	}
	p := filepath.Join(dir, DataFileName)
	if st, err := os.Stat(p); err == nil && st.Size() == dataPages*pg {
		return nil
	}
	b := make([]byte, dataPages*pg)
	for q := 0; q < dataPages; q++ {
		dataPage(b[q*pg:(q+1)*pg], int64(q)*pg)
	}
	f, err := os.OpenFile(p, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("fuzz: data file: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("fuzz: data file: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// MaybeExec runs one sequence and exits when this process is such a run
// (ExecArg TRACKER DATAFILE DATADIR, the sequence on stdin).
func MaybeExec() {
	if len(os.Args) < 5 || os.Args[1] != ExecArg {
		return
	}
	var seq Sequence
	if err := json.NewDecoder(os.Stdin).Decode(&seq); err != nil {
		fmt.Fprintln(os.Stderr, "ldt-fuzz exec: reading the sequence:", err)
		os.Exit(2)
	}
	res := Exec(&seq, ExecConfig{Tracker: os.Args[2], DataFile: os.Args[3], DataDir: os.Args[4]})
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		os.Exit(2)
	}
	os.Exit(0)
}
