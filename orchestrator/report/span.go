package report

import (
	"slices"
	"sort"
	"strings"
)

type parser struct {
	log      []byte
	lines    []line
	consumed []bool // line already belongs to a report
	// kernelMode: some line carries a printk timestamp, so lines without
	// one are program output and can neither open nor extend a report.
	kernelMode bool

	// Indexes that let a span visit only its own lines: without them a
	// log of many contexts (printk callers) costs lines × contexts.
	byCaller map[string][]int // caller → its kernel lines, ascending
	kernIdx  []int            // every kernel line
	boots    []int            // "Linux version" lines: the machine rebooted
	nmis     []int            // "NMI backtrace for cpu N" lines with a caller

	kinds   []*kind    // classify() of each line, valid where known[i]
	matches [][]string // its submatches
	known   []bool
	steps   int // lines visited; tests bound it to prove linear time
}

func newParser(log []byte) *parser {
	p := &parser{log: log, lines: splitLines(log), byCaller: map[string][]int{}}
	n := len(p.lines)
	p.consumed = make([]bool, n)
	p.kinds, p.matches, p.known = make([]*kind, n), make([][]string, n), make([]bool, n)
	for i := range p.lines {
		l := &p.lines[i]
		if strings.HasPrefix(l.text, "Linux version ") && newBootRe.MatchString(l.text) {
			p.boots = append(p.boots, i)
		}
		if !l.kernel {
			continue
		}
		p.kernelMode = true
		p.kernIdx = append(p.kernIdx, i)
		if l.caller != "" {
			p.byCaller[l.caller] = append(p.byCaller[l.caller], i)
			if strings.HasPrefix(l.text, "NMI backtrace for cpu ") {
				p.nmis = append(p.nmis, i)
			}
		}
	}
	return p
}

// classify is the package-level classify, memoized per line so that no
// line is matched against the header patterns more than once.
func (p *parser) classify(i int) (*kind, []string) {
	if !p.known[i] {
		p.kinds[i], p.matches[i] = classify(p.lines[i].text)
		p.known[i] = true
	}
	return p.kinds[i], p.matches[i]
}

func (p *parser) candidate(i int) bool { return !p.kernelMode || p.lines[i].kernel }

// cursor walks one ascending list of line indexes.
type cursor struct {
	list []int
	pos  int
}

// next returns the first index after j, or -1.
func (c *cursor) next(j int) int {
	for c.pos < len(c.list) && c.list[c.pos] <= j {
		c.pos++
	}
	if c.pos == len(c.list) {
		return -1
	}
	return c.list[c.pos]
}

func newCursor(list []int, after int) cursor {
	return cursor{list: list, pos: sort.SearchInts(list, after+1)}
}

// maxCallers bounds how many contexts one report may adopt (stalled CPUs
// dumping their stacks); more than any machine here has CPUs.
const maxCallers = 64

// mode says what ends a report's span.
type mode int

const (
	modeMarker   mode = iota // "---[ end trace ... ]---"
	modeTrace                // the end of the first call trace block
	modeKASAN                // the closing "=====" rule
	modeRSS                  // the end of a run of check_mm lines
	modePanic                // "---[ end Kernel panic" or "Rebooting in"
	modeIndented             // the end of the indented lines after the header (kmemleak)
	modeLine                 // the header line is the whole report
)

// scanWindow bounds how many console lines after its header a report may
// reach. Interleaving never spreads a real report this far, and it keeps
// Parse linear on logs full of unterminated headers.
const scanWindow = 5000

// span collects the lines of one report while it is being parsed.
type span struct {
	p       *parser
	hdrIdx  int
	k       *kind    // the row of the header that opened the span
	m       []string // the header's submatches
	flavour *flavour // what the WARNING or kernel BUG line names, if any
	callers []string // printk callers that belong to the report; nil: unknown
	idx     []int    // included lines, ascending
	typ     Type
	mode    mode

	oopsFollows bool // an "Oops:" line may follow and belongs to us
	bugFollows  bool // a "kernel BUG at"/"WARNING:" line may follow and belongs to us

	sawOops, sawBugWarn, sawTrace, sawOffset, inPanic bool
	warnFunc                                          string
	truncated                                         bool
	corrupt                                           bool     // the title could not be built whole
	tlines                                            []string // titleLines, once built

	cursors   []cursor // the span's own lines (see nextLine)
	nmiSeen   int      // NMI backtrace lines visited (bounded by maxCallers)
	hdrOffset bool     // s.m comes from a KASAN header line with "+0x"
	seq       bool     // no printk prefixes at all: every line is ours
}

// adoptsNMI: the report's stack comes from another CPU, printed under its
// own "Cn" caller after "NMI backtrace for cpu N".
func (s *span) adoptsNMI() bool { return s.typ == TypeRCUStall || s.typ == TypeHardLockup }

// initCursors sets up the walk over the lines that can belong to the span.
func (s *span) initCursors(after int) {
	p := s.p
	switch {
	case s.callers != nil:
		for _, c := range s.callers {
			s.cursors = append(s.cursors, newCursor(p.byCaller[c], after))
		}
		if s.adoptsNMI() {
			// Always the first cursor, so that it can be dropped.
			s.cursors = append([]cursor{newCursor(p.nmis, after)}, s.cursors...)
		}
	case p.kernelMode:
		s.cursors = append(s.cursors, newCursor(p.kernIdx, after))
	default:
		s.seq = true
	}
}

// adopt makes caller c part of the span from line j on.
func (s *span) adopt(c string, j int) {
	if len(s.callers) >= maxCallers || slices.Contains(s.callers, c) {
		return
	}
	s.callers = append(s.callers, c)
	s.cursors = append(s.cursors, newCursor(s.p.byCaller[c], j))
}

// nextLine returns the next line after j the span may include, or
// len(lines). Lines of other contexts are never visited.
func (s *span) nextLine(j int) int {
	s.p.steps++
	if s.seq {
		return j + 1
	}
	best := -1
	for i := range s.cursors {
		if n := s.cursors[i].next(j); n >= 0 && (best < 0 || n < best) {
			best = n
		}
	}
	if best < 0 {
		return len(s.p.lines)
	}
	return best
}

func (s *span) mine(l *line) bool {
	if s.callers != nil {
		return slices.Contains(s.callers, l.caller)
	}
	if s.p.kernelMode {
		return l.kernel
	}
	return true
}

func (p *parser) build(i int, k *kind, m []string) (Report, bool) {
	s := &span{p: p, hdrIdx: i, k: k, m: m}
	if c := p.lines[i].caller; c != "" {
		s.callers = []string{c}
	}
	s.hdrOffset = strings.Contains(p.lines[i].text, "+0x")
	s.setup()
	s.backtrack()
	s.idx = append(s.idx, i)
	if !s.scan(i+1) || !s.confirmed() {
		return Report{}, false
	}
	for _, j := range s.idx {
		p.consumed[j] = true
	}
	return s.report(), true
}

// setup starts the span as its kind's row says.
func (s *span) setup() {
	k := s.k
	s.typ, s.mode = k.typ, k.end
	s.oopsFollows, s.bugFollows = k.oopsFollows, k.bugFollows
	s.sawOops, s.inPanic = k.oops, k.panic
	if k.bug || k.warn {
		s.sawBugWarn = true
		s.flavour = flavourOf(k, s.m)
		if k.warn {
			s.warnFunc = s.m[2]
		}
		if k.bug {
			s.oopsFollows = true
		}
	}
}

// backtrack pulls in the lines printed just before the header that are
// part of the report: "cut here", a WARN() message, the page dump before
// "page dumped because:", the "=====" rule before KASAN/lockdep headers.
func (s *span) backtrack() {
	var lead []int
	seen := 0
	// Walk back over the span's own context only.
	var list []int
	switch {
	case s.callers != nil:
		list = s.p.byCaller[s.callers[0]]
	case s.p.kernelMode:
		list = s.p.kernIdx
	}
	k := sort.SearchInts(list, s.hdrIdx)
	prev := func(j int) int {
		if list == nil {
			return j - 1
		}
		if k--; k < 0 {
			return -1
		}
		return list[k]
	}
	for j := prev(s.hdrIdx); j >= 0 && j >= s.hdrIdx-200 && seen < 24; j = prev(j) {
		s.p.steps++
		l := &s.p.lines[j]
		if !s.mine(l) {
			continue
		}
		if s.p.consumed[j] {
			return
		}
		if k, _ := s.p.classify(j); k != nil {
			return
		}
		seen++
		lead = append(lead, j)
		switch {
		case cutHereRe.MatchString(l.text) && seen <= 6:
		case s.k == kindVMPage && strings.HasPrefix(l.text, "page:"):
		case (s.k.end == modeKASAN || s.typ == TypeLockdep) && seen == 1 && ruleRe.MatchString(l.text):
		default:
			continue
		}
		slices.Reverse(lead)
		s.idx = lead
		return
	}
}

// scan extends the span from line `from` on. It returns false when the
// header turned out not to be a report.
func (s *span) scan(from int) bool {
	if s.mode == modeLine {
		return true
	}
	lines := s.p.lines
	var (
		inTrace    bool
		afterBlock bool   // a "</TASK>" closed the call trace block
		post       bool   // the report proper ended; looking for a consequence panic
		summary    = true // post: still in the oops executive summary
		pending    []int  // post: lines kept only if a consequence panic follows
		count      int
		hdrPos     = len(s.idx) - 1
	)
	s.initCursors(from - 1)
	boot := len(lines)
	if k := sort.SearchInts(s.p.boots, s.hdrIdx+1); k < len(s.p.boots) {
		boot = s.p.boots[k]
	}
	redo := false // look at the same line again (in post mode)
	advance := func(j int) int {
		if redo {
			redo = false
			return j
		}
		return s.nextLine(j)
	}
	for j := s.nextLine(from - 1); j < len(lines); j = advance(j) {
		if j >= boot {
			// The machine rebooted: nothing after this belongs to us.
			return s.endOfLog(post || afterBlock)
		}
		if j-s.hdrIdx > scanWindow {
			s.truncated = !post && !afterBlock
			return true
		}
		l := &lines[j]
		foreign := !s.mine(l)
		if foreign && s.adoptsNMI() {
			// Only the first few NMI backtraces of other contexts
			// are looked at (consumed ones too), so that a log full
			// of them costs each stall report a constant.
			if s.nmiSeen++; s.nmiSeen >= maxCallers {
				s.cursors[0] = cursor{}
			}
		}
		if s.p.consumed[j] {
			continue
		}
		if foreign {
			if !s.adoptsNMI() || l.caller == "" || !nmiBacktrace.MatchString(l.text) {
				continue
			}
			// A stalled CPU dumps its stack from NMI context, i.e.
			// under its own "Cn" caller: adopt it.
			s.adopt(l.caller, j)
			if !s.mine(l) {
				continue
			}
		}
		if s.mode == modeIndented {
			if !indented(l.text) {
				return true
			}
			s.idx = append(s.idx, j)
			continue
		}
		k2, m2 := s.p.classify(j)
		if k2 != nil && k2.inline && k2 != s.k {
			// A one-line report printed in the middle of this one:
			// reported on its own, it does not end this one.
			continue
		}
		t := strings.TrimSpace(l.text)

		if post {
			if k2 == kindPanic && consequence(m2[1], s) {
				s.idx = append(s.idx, pending...)
				s.idx = append(s.idx, j)
				pending, post = nil, false
				s.mode, s.inPanic = modePanic, true
				continue
			}
			if k2 != nil || len(pending) > 400 {
				return true
			}
			// oops_end reprints the registers after the end marker;
			// do_exit may add "note:" lines.
			if summary && s.sawOops && (regLineRe.MatchString(t) || strings.HasPrefix(t, "note: ")) {
				s.idx = append(s.idx, j)
				continue
			}
			summary = false
			pending = append(pending, j)
			continue
		}

		if inTrace && !isTraceLine(t) && s.mode == modeTrace && k2 == nil && s.resumes(j) {
			// Another message printed into the trace (no caller ids to
			// tell them apart): the trace goes on after it.
			continue
		}
		if (inTrace && !isTraceLine(t)) || afterBlock {
			inTrace, afterBlock = false, false
			if s.mode == modeTrace &&
				(s.typ != TypeRCUStall || k2 != nil || !rcuContinueRe.MatchString(l.text) || !s.adjacent(j)) {
				post, redo = true, true
				continue
			}
		}
		if s.mode == modeRSS && k2 != kindBadRSS {
			return true
		}
		if k2 != nil && !s.absorb(k2, m2, l) {
			return s.confirmed()
		}
		s.idx = append(s.idx, j)
		count++
		if s.k.confirm != nil && !s.confirmed() && count > 40 {
			return false
		}
		if count > 5000 { // runaway: a real report is far shorter
			return true
		}
		if s.mode == modeTrace && !s.sawTrace && count > s.stacklessLimit() {
			// Some "BUG:"/stall messages come without a stack
			// (workqueue lockup): keep just the header then.
			s.idx = s.idx[:hdrPos+1]
			return true
		}
		switch {
		case endPanicRe.MatchString(t), s.inPanic && rebootingRe.MatchString(t):
			return true
		case kernelOffRe.MatchString(t):
			s.sawOffset = true
		case endTraceRe.MatchString(t) && s.mode != modePanic && s.mode != modeKASAN:
			post = true
			continue
		case ruleRe.MatchString(t) && s.mode == modeKASAN:
			post = true
			continue
		}
		switch {
		case t == "Call Trace:":
			inTrace, s.sawTrace = true, true
		case inTrace && t == "</TASK>":
			// The task stack is always printed last.
			inTrace, afterBlock = false, true
		}
	}
	return s.endOfLog(post || afterBlock || s.mode == modeRSS || s.mode == modeIndented)
}

// resumes reports whether a frame follows line j within two of the span's
// lines, without moving the span's cursors.
func (s *span) resumes(j int) bool {
	saved := append([]cursor(nil), s.cursors...)
	defer func() { s.cursors = saved }()
	for range 2 {
		if j = s.nextLine(j); j >= len(s.p.lines) {
			return false
		}
		l := &s.p.lines[j]
		if !s.mine(l) {
			continue
		}
		if t := strings.TrimSpace(l.text); frameRe.MatchString(t) || rawFrameRe.MatchString(t) {
			return true
		}
	}
	return false
}

// stacklessLimit is how many lines may precede the call trace before the
// report is taken to have none. Lockdep prints whole dependency chains
// first; other reports a few lines.
func (s *span) stacklessLimit() int {
	if s.typ == TypeLockdep {
		return 2000
	}
	return 100
}

// adjacent reports whether no other context printed between the span's
// last line and line j. A stall report continues (more CPUs, starved
// kthread) only right away; "Cn" callers are reused by later, unrelated
// interrupt-context messages.
func (s *span) adjacent(j int) bool {
	from := s.idx[len(s.idx)-1] + 1
	if j-from > 200 {
		return false // bounded: a continuation follows right away
	}
	for k := from; k < j; k++ {
		s.p.steps++
		if l := &s.p.lines[k]; l.kernel && !s.mine(l) {
			return false
		}
	}
	return true
}

// endOfLog decides whether a span cut off by the end of the log (or by a
// reboot) was complete anyway.
func (s *span) endOfLog(complete bool) bool {
	// With panic=-1 the machine resets right after "Kernel Offset:",
	// before the end marker is printed.
	if !complete && !(s.inPanic && s.sawOffset) {
		s.truncated = true
	}
	return true
}

// confirmed: a kind that needs a confirming line (a vma dump its BUG, a
// broken hung-task header the rest of it) has seen it.
func (s *span) confirmed() bool {
	c := s.k.confirm
	if c == nil {
		return true
	}
	n := 0
	for _, j := range s.idx {
		if j < s.hdrIdx {
			continue
		}
		if c.MatchString(strings.TrimLeft(s.p.lines[j].text, " ")) {
			return true
		}
		if n++; n > s.k.confirmIn {
			return false
		}
	}
	return false
}

// absorb decides whether another header line continues this report.
func (s *span) absorb(k *kind, m []string, l *line) bool {
	if slices.Contains(k.partOf, s.typ) {
		return true
	}
	switch {
	case k.oops:
		if s.oopsFollows && !s.sawOops && !s.sawTrace {
			s.sawOops, s.mode = true, modeMarker
			return true
		}
	case k.bug || k.warn:
		if s.bugFollows && !s.sawBugWarn && !s.sawTrace {
			s.sawBugWarn, s.mode = true, modeMarker
			s.flavour = flavourOf(k, m)
			if k.warn {
				s.warnFunc = m[2]
				s.oopsFollows = false
			}
			return true
		}
	case k.panic:
		// A panic in the middle of a report of the same context is
		// caused by it (panic_on_warn, panic_on_oops, ...).
		if !s.inPanic && (s.callers == nil || l.caller == s.callers[0]) {
			s.inPanic, s.mode = true, modePanic
			return true
		}
	case k == kindBadRSS:
		return s.mode == modeRSS
	case k == kindKASAN:
		// A symbolized KASAN report repeats its header once per
		// inlined frame; the one with an offset names the function.
		if last, _ := s.p.classify(s.idx[len(s.idx)-1]); s.k == kindKASAN && last == kindKASAN && m[1] == s.m[1] {
			if !s.hdrOffset && strings.Contains(l.text, "+0x") {
				s.m, s.hdrOffset = m, true
			}
			return true
		}
	}
	return false
}

func (s *span) report() Report {
	var b strings.Builder
	for _, j := range s.idx {
		l := &s.p.lines[j]
		b.Write(trimEOL(s.p.log[l.start:l.end]))
		b.WriteByte('\n')
	}
	s.typ = s.finalType()
	title := s.title()
	return Report{
		Type:      s.typ,
		Title:     title,
		Start:     s.p.lines[s.idx[0]].start,
		End:       s.p.lines[s.idx[len(s.idx)-1]].end,
		Text:      b.String(),
		Truncated: s.truncated,
		Corrupted: s.corrupted(title),
	}
}

// indented: a kmemleak detail line ("  comm ...", "    frame+0x1/0x2").
func indented(text string) bool {
	text = strings.TrimPrefix(text, "kmemleak: ")
	return strings.HasPrefix(text, " ") || strings.HasPrefix(text, "\t")
}

func trimEOL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

// finalType refines the kind's type with what the body revealed: the
// file of the BUG or WARNING it absorbed, the kind of VM check.
func (s *span) finalType() Type {
	if s.flavour != nil && s.flavour.typ != "" {
		return s.flavour.typ
	}
	switch {
	case s.k == kindOops && strings.Contains(s.m[1], "general protection fault"):
		return TypeGPF
	case s.k == kindVMPage && strings.HasPrefix(s.m[1], "VM_WARN"):
		return TypeWarning
	case s.typ == TypeVMBug && s.warnFunc != "":
		return TypeWarning
	}
	return s.typ
}
