package report

import (
	"bytes"
	"sync"
	"time"
)

// Stream finds reports in a console as its bytes arrive. It is an
// io.Writer: the console hands it every chunk as it is written, and one
// loop does the rest, as a fuzzer's VM monitor does: a cheap look at the
// new lines ("could one of them open a report?"), and the full parse only
// when one could, or while a report is being printed. The parse reads a
// bounded window of bytes — a little context, the report still being
// printed — never the whole console, and each report is emitted once,
// whole. Offsets are byte offsets in the console.
type Stream struct {
	mu sync.Mutex
	// buf is the window: context lines, the lines of a report not yet
	// finished, then the unfinished last line. base is the console
	// offset of buf[0], off the offset after the last byte written.
	buf       []byte
	base, off int
	checked   int  // bytes of buf the cheap look has seen (a line boundary)
	lines     int  // complete lines in buf
	openOff   int  // console offset where the unsettled part of the window starts
	hit       bool // the cheap look saw a line that may open a report
	pending   bool // a report has begun and not finished
	cutting   bool // skipping the rest of a line longer than maxLine
	done      []Report
	// lastStart is the start of the last emitted report: a report found
	// again in the context is not emitted twice.
	lastStart int
	// leaks: the last report emitted was a kmemleak object.
	leaks     bool
	parses    int // full parses done (tests)
	lastScan  time.Time
	lastWrite time.Time
	changed   chan struct{}
	closed    chan struct{}
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
	// maxLine bounds a console line: a guest printing without newlines
	// must not grow the window. No report is that long a line; the rest
	// of it, up to its newline, is skipped.
	maxLine = 64 << 10
)

// NewStream returns an empty stream.
func NewStream() *Stream {
	return &Stream{lastStart: -1, changed: make(chan struct{}), closed: make(chan struct{})}
}

// Write adds console output: any chunk, lines may be cut anywhere.
func (s *Stream) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(p)
	s.off += n
	s.lastWrite = time.Now()
	if s.cutting {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			s.base = s.off
			return n, nil
		}
		s.cutting = false
		p = p[i+1:]
		s.base = s.off - len(p)
	}
	s.buf = append(s.buf, p...)
	end := bytes.LastIndexByte(s.buf, '\n') + 1
	if end > s.checked {
		fresh := s.buf[s.checked:end]
		s.lines += bytes.Count(fresh, []byte{'\n'})
		if !s.hit && couldOpen(fresh) {
			s.hit = true
		}
		s.checked = end
	}
	if len(s.buf)-end > maxLine {
		s.cutLine(end)
	}
	switch {
	case s.hit && !s.pending, s.pending && time.Since(s.lastScan) >= rescanEvery:
		s.scan(false)
	case !s.hit && !s.pending && s.lines > 2*contextLines:
		s.keepContext()
	}
	close(s.changed)
	s.changed = make(chan struct{})
	return n, nil
}

// couldOpen is the cheap look: whether one of the complete lines in b may
// open a report (the parse decides).
func couldOpen(b []byte) bool {
	for _, l := range splitLines(b) {
		if k, _ := classify(l.text); k != nil {
			return true
		}
	}
	return false
}

// cutLine handles an unfinished line longer than maxLine: what came
// before it is parsed as it is, the line itself is dropped and the rest
// of it, up to its newline, skipped.
func (s *Stream) cutLine(end int) {
	s.buf = s.buf[:end]
	s.scan(true)
	s.buf, s.lines, s.checked = nil, 0, 0
	s.base, s.openOff = s.off, s.off
	s.cutting, s.hit, s.pending = true, false, false
}

// keepContext drops all but the last contextLines complete lines (and
// the unfinished one) while no report is in sight.
func (s *Stream) keepContext() {
	s.drop(contextStart(s.buf, s.checked))
	s.lines = bytes.Count(s.buf[:s.checked], []byte{'\n'})
	s.openOff = max(s.openOff, s.base)
}

// drop removes the first n bytes of the window.
func (s *Stream) drop(n int) {
	if n <= 0 {
		return
	}
	s.buf = append([]byte(nil), s.buf[n:]...)
	s.base += n
	s.checked -= n
}

// Flush emits a report still being printed as it is (truncated): the
// console went quiet or the VM is gone.
func (s *Stream) Flush() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.scan(true)
}

// Close flushes the stream: the console has ended.
func (s *Stream) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.closed:
		return nil
	default:
	}
	s.scan(true)
	close(s.closed)
	close(s.changed)
	s.changed = make(chan struct{})
	return nil
}

// Done is closed when the stream is closed.
func (s *Stream) Done() <-chan struct{} { return s.closed }

// Offset is the console offset after the last byte written.
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

// Changed is closed at the next Write.
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

// scan parses the window, emits the reports that are complete (all of
// them when flush, the unfinished last line taken as a line), and keeps
// the lines from the first unfinished report on, with a little context.
func (s *Stream) scan(flush bool) {
	if !s.hit && !s.pending && !flush {
		return
	}
	s.lastScan = time.Now()
	complete := s.checked
	if flush {
		complete = len(s.buf)
	}
	if complete == 0 {
		s.hit = false
		return
	}
	win := s.buf[:complete]
	flush = flush || s.base+complete-s.openOff > maxOpen
	quiet := time.Since(s.lastWrite) >= settleQuiet
	keepFrom, settled := -1, 0
	var last *Report
	s.parses++
	for _, r := range Parse(win) {
		if s.base+r.Start <= s.lastStart {
			continue
		}
		// A finished report may still absorb what follows (the panic
		// an oops ends in): it is whole once a few lines follow it. Reports
		// stay in order: after one that is held, all are.
		settling := !quiet && bytes.Count(win[r.End:], []byte{'\n'}) < settleLines
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
		r.Start += s.base
		r.End += s.base
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
	first := lineStartAtOrAfter(win, settled)
	split := complete // the open part starts here
	if keepFrom >= 0 {
		split = max(first, bytes.LastIndexByte(win[:keepFrom], '\n')+1)
	}
	ctxFrom := max(first, contextStart(win, split))
	s.openOff = s.base + split
	s.drop(ctxFrom)
	if flush {
		s.checked = len(s.buf)
	}
	s.lines = bytes.Count(s.buf[:s.checked], []byte{'\n'})
	s.pending, s.hit = keepFrom >= 0, false
}

// lineStartAtOrAfter is the offset of the first line of b starting at or
// after off (len(b) if none).
func lineStartAtOrAfter(b []byte, off int) int {
	if off <= 0 {
		return 0
	}
	if off >= len(b) {
		return len(b)
	}
	if b[off-1] == '\n' {
		return off
	}
	i := bytes.IndexByte(b[off:], '\n')
	if i < 0 {
		return len(b)
	}
	return off + i + 1
}

// contextStart is where the last contextLines complete lines before end
// begin.
func contextStart(b []byte, end int) int {
	cut := end
	for n := 0; n < contextLines && cut > 0; n++ {
		cut = bytes.LastIndexByte(b[:cut-1], '\n') + 1
	}
	return cut
}
