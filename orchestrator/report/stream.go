package report

import (
	"bytes"
	"sync"
	"time"
)

// Stream finds reports in a console as its lines arrive, instead of
// re-parsing the whole log: it parses only a bounded window — the lines
// of a report still being printed plus a little context before it (a
// "cut here" line, a lockdep banner) — and emits each report once, whole.
// Offsets are positions in the stream (bytes of the lines fed so far,
// each counted with its newline).
type Stream struct {
	mu     sync.Mutex
	ctx    [][]byte // settled lines kept as context, at most contextLines
	open   [][]byte // lines since a report began that is not finished
	ctxOff int      // offset of ctx[0]
	off    int      // offset after the last line fed
	done   []Report // emitted, absolute offsets
	// lastStart is the start of the last emitted report: a report found
	// again in the context window is not emitted twice.
	lastStart int
	// pending: open holds a report that has begun and not finished.
	pending bool
	// leaks: the last report emitted was a kmemleak object.
	leaks bool
	// dirty: lines were fed since the last scan.
	dirty    bool
	lastScan time.Time
	lastFeed time.Time
	changed  chan struct{}
}

const leakSummaryTitle = "kmemleak: suspected memory leaks"

const (
	contextLines = 64
	// settleLines must follow a finished report before it is emitted,
	// or the console must have been quiet for settleQuiet.
	settleLines = 3
	settleQuiet = 500 * time.Millisecond
	// maxOpen bounds a report that never ends (a flood): it is emitted
	// truncated and the window starts afresh.
	maxOpen     = 1 << 20
	rescanEvery = 50 * time.Millisecond
)

// NewStream returns an empty stream.
func NewStream() *Stream { return &Stream{lastStart: -1, changed: make(chan struct{})} }

// Feed adds complete lines (without their newlines).
func (s *Stream) Feed(lines ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range lines {
		s.open = append(s.open, []byte(l))
		s.off += len(l) + 1
	}
	s.dirty = true
	s.lastFeed = time.Now()
	// While a report is being printed the window grows with every line:
	// parse it at most every rescanEvery (readers scan on demand).
	if !s.pending || time.Since(s.lastScan) >= rescanEvery {
		s.scan(false)
	}
	close(s.changed)
	s.changed = make(chan struct{})
}

// Flush emits a report still being printed as it is (truncated): the
// console went quiet or the VM is gone.
func (s *Stream) Flush() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dirty = true
	s.scan(true)
}

// Offset is the stream position after the last line fed.
func (s *Stream) Offset() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.off
}

// Pending tells whether a report has begun and not finished.
func (s *Stream) Pending() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.scan(false)
	return s.pending
}

// Changed is closed at the next Feed.
func (s *Stream) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// Since returns the reports that began at or after offset mark.
func (s *Stream) Since(mark int) []Report {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.scan(false)
	var out []Report
	for _, r := range s.done {
		if r.Start >= mark {
			out = append(out, r)
		}
	}
	return out
}

// All returns every report emitted so far.
func (s *Stream) All() []Report { return s.Since(0) }

// scan parses the window (context + open lines), emits the reports that
// are complete (all of them when flush), and keeps open the lines from
// the first unfinished report on.
func (s *Stream) scan(flush bool) {
	if !s.dirty && !s.pending {
		return
	}
	s.dirty, s.lastScan = false, time.Now()
	if len(s.open) == 0 {
		return
	}
	all := append(s.ctx[:len(s.ctx):len(s.ctx)], s.open...)
	var win bytes.Buffer
	starts := make([]int, len(all)) // window offset of each line
	for i, l := range all {
		starts[i] = win.Len()
		win.Write(l)
		win.WriteByte('\n')
	}
	openBytes := win.Len()
	if len(s.ctx) > 0 {
		openBytes -= starts[len(s.ctx)]
	}
	flush = flush || openBytes > maxOpen
	base := s.ctxOff
	keepFrom, settled := -1, 0
	var last *Report
	for _, r := range Parse(win.Bytes()) {
		if base+r.Start <= s.lastStart {
			continue
		}
		// A finished report may still absorb what follows (the panic
		// an oops ends in): it is whole once a few lines follow it. Reports
		// stay in order: after one that is held, all are.
		settling := win.Len()-r.End < trailing(all, starts, r.End) && time.Since(s.lastFeed) < settleQuiet
		if keepFrom >= 0 || (r.Truncated || settling) && !flush {
			if keepFrom < 0 || r.Start < keepFrom {
				keepFrom = r.Start
			}
			continue
		}
		settled = max(settled, r.End)
		if r.Type == TypeKmemleak && r.Title == leakSummaryTitle && s.leaks {
			// The summary of leaks emitted by an earlier scan, whose lines
			// have left the window (Parse skips it when it sees them).
			s.leaks = false
			continue
		}
		// Within one window Parse pairs leaks and summaries itself.
		s.leaks = false
		last = &r
		r.Start += base
		r.End += base
		s.done = append(s.done, r)
		s.lastStart = r.Start
	}
	if last != nil {
		s.leaks = last.Type == TypeKmemleak && last.Title != leakSummaryTitle
	}
	if keepFrom >= 0 {
		// Interleaved reports: one held may begin inside one emitted.
		settled = min(settled, keepFrom)
	}
	// Lines of emitted reports leave the window (so a report is never
	// found again, nor a fragment of it as a new one); a little context
	// before the next report stays.
	first := 0
	for first < len(all) && starts[first] < settled {
		first++
	}
	split := len(all) // lines from split on stay open
	if keepFrom >= 0 {
		split = first
		for split+1 < len(all) && starts[split+1] <= keepFrom {
			split++
		}
	}
	ctxFrom := max(first, split-contextLines)
	s.ctx = append([][]byte(nil), all[ctxFrom:split]...)
	s.open = append([][]byte(nil), all[split:]...)
	s.ctxOff = base + starts[min(ctxFrom, len(all)-1)]
	if ctxFrom >= len(all) {
		s.ctxOff = s.off
	}
	s.pending = keepFrom >= 0
}

// trailing is how many bytes the settleLines lines after offset end take
// (more than the window holds when fewer lines follow).
func trailing(all [][]byte, starts []int, end int) int {
	i := 0
	for i < len(starts) && starts[i] < end {
		i++
	}
	if i+settleLines > len(all) {
		return 1 << 62
	}
	n := 0
	for _, l := range all[i : i+settleLines] {
		n += len(l) + 1
	}
	return n
}
