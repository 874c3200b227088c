package report

import (
	"regexp"
	"strings"
	"sync"
)

// titleLines are the span's lines from its header on, as the title rules
// read them: message text only, frames the unwinder is unsure of left out.
func (s *span) titleLines() []string {
	if s.tlines != nil {
		return s.tlines
	}
	for _, j := range s.idx {
		if j < s.hdrIdx {
			continue
		}
		// kmemleak.verbose prefixes every line of an object.
		t := strings.TrimPrefix(s.p.lines[j].text, "kmemleak: ")
		if questionableRe.MatchString(t) && !strings.Contains(t, "<EOI>") {
			continue
		}
		s.tlines = append(s.tlines, t)
	}
	return s.tlines
}

// questionableRe: "? func+0x1/0x2", "[<ffffffff81234567>] ? func+0x1/0x2".
var questionableRe = re(`^\s*(?:\[<[0-9a-f]+>\])? ?\? `)

// guiltyFrame is the kind's (or its flavour's) guilty frame, "" if none.
func (s *span) guiltyFrame(g *guilty) string {
	if g == nil {
		return ""
	}
	return g.frame(s.titleLines())
}

// expand fills a title template: %1..%9 are the header's submatches,
// %F the guilty frame ("corrupted", and the report marked so, when there
// is none), %A the access of a sanitizer report.
func (s *span) expand(tpl string, g *guilty) string {
	var b strings.Builder
	for i := 0; i < len(tpl); i++ {
		c := tpl[i]
		if c != '%' || i+1 == len(tpl) {
			b.WriteByte(c)
			continue
		}
		i++
		switch d := tpl[i]; {
		case d >= '1' && d <= '9':
			if n := int(d - '0'); n < len(s.m) {
				b.WriteString(strings.TrimSpace(s.m[n]))
			}
		case d == 'F':
			f := s.guiltyFrame(g)
			if f == "" {
				f, s.corrupt = "corrupted", true
			}
			b.WriteString(f)
		default:
			b.WriteByte('%')
			b.WriteByte(d)
		}
	}
	return b.String()
}

// rawTitle builds the title as the kind's row says.
func (s *span) rawTitle() string {
	k := s.k
	if s.flavour != nil {
		return s.expand(s.flavour.title, s.flavour.frames)
	}
	if k.titleFn != nil {
		return k.titleFn(s)
	}
	return s.expand(k.title, k.frames)
}

// title is the report's normalized title.
func (s *span) title() string { return normalize(s.rawTitle()) }

// flavourOf picks the WARNING or kernel BUG flavour of a header line.
func flavourOf(k *kind, m []string) *flavour {
	for i := range k.byFile {
		if k.byFile[i].re.MatchString(m[0]) {
			return &k.byFile[i]
		}
	}
	return nil
}

// Titles of the kinds a template cannot describe.

var (
	accessRe = re(`(Read|Write) (?:of size|at addr)`)
	kasanFn  = step{re: re(`^BUG: KASAN: (?:double-free or invalid-free|[a-z-]+) in ([A-Za-z0-9_]+)[.+]`)}
	// The access: the function the header names, then the stack.
	kasanAccess = &guilty{path: []step{kasanFn, callTrace, stack}, skip: re(`kernel_fault|tag_check|mem_abort|^el1_|^el1h_`)}
	// A bad free: the caller of the free.
	kasanFree = &guilty{path: []step{kasanFn, callTrace, stack}, skip: re(`slab_|kfree|vunmap|vfree`)}
)

func kasanTitle(s *span) string {
	what := s.m[1]
	g := kasanAccess
	switch what {
	case "double-free", "invalid-free", "double-free or invalid-free":
		return s.expand("KASAN: invalid-free in %F", kasanFree)
	}
	var access string
	for _, t := range s.titleLines() {
		if m := accessRe.FindStringSubmatch(t); m != nil {
			access = m[1]
			break
		}
	}
	hdr := strings.TrimSpace(s.p.lines[s.hdrIdx].text)
	switch {
	case access != "" && strings.Contains(hdr, " on address"):
		return "KASAN: " + what + " " + access
	case access != "" && s.m[2] != "":
		return s.expand("KASAN: "+what+" "+access+" in %F", g)
	}
	// Without the access line the report was cut: the header says what
	// there is to say.
	s.corrupt = true
	return "KASAN: " + strings.TrimPrefix(hdr, "BUG: KASAN: ")
}

var (
	ripOnly  = &guilty{path: []step{rip}}
	ripTrace = gRIPTrace()
)

func oopsTitle(s *span) string {
	what := s.m[1]
	switch {
	case strings.Contains(what, "general protection fault"):
		return s.expand("general protection fault in %F", ripTrace)
	case what == "divide error" || what == "divide_error":
		return s.expand("divide error in %F", ripOnly)
	case what == "invalid opcode":
		return s.expand("invalid opcode in %F", ripOnly)
	case what == "stack segment":
		return s.expand("stack segment fault in %F", ripTrace)
	case what == "double fault":
		return s.expand("PANIC: double fault in %F", ripOnly)
	}
	return s.expand(what+" in %F", ripTrace)
}

var (
	stackProtRe = re(`^stack-protector: Kernel stack is corrupted in: ([A-Za-z0-9_]+)[.+]`)
	exitCodeRe  = re(` exitcode=\S+`)
	// Where the stack protector fired, when the panic does not say.
	stackProtFrame = gTrace(`stack_chk`)
	// A stack that overflowed or whose end was overwritten: named like a
	// stall, by the caller of the code that recursed.
	stackEndFrame      = &guilty{path: []step{callTrace, stack}, skip: re(`schedule|retint_kernel`), pick: stallFrame}
	stackOverflowFrame = &guilty{path: []step{callTrace, stack}, skip: re(`bad_stack`), pick: stallFrame}
)

func panicTitle(s *span) string {
	msg := strings.TrimSpace(s.m[1])
	switch {
	case strings.HasPrefix(msg, "stack-protector:"):
		if m := stackProtRe.FindStringSubmatch(msg); m != nil {
			return "kernel panic: stack is corrupted in " + m[1]
		}
		return s.expand("kernel panic: stack is corrupted in %F", stackProtFrame)
	case strings.HasPrefix(msg, "corrupted stack end"):
		return s.expand("kernel panic: corrupted stack end in %F", stackEndFrame)
	case strings.HasPrefix(msg, "kernel stack overflow"):
		return s.expand("kernel stack overflow in %F", stackOverflowFrame)
	case strings.HasPrefix(msg, "Attempted to kill init!"):
		return "kernel panic: Attempted to kill init!"
	case strings.HasPrefix(msg, "Couldn't open N_TTY ldisc"):
		return "kernel panic: Couldn't open N_TTY ldisc"
	case s.sawOops || s.sawBugWarn:
		// The panic ended an oops or a BUG/WARNING of the same span
		// that began before it; not reached (the span is titled by its
		// first header).
	}
	// Seen alone, the panic of an oops, a WARNING or a hung task lost
	// the report that caused it.
	for _, lost := range []string{"Fatal exception", "panic_on_warn set", "hung_task: blocked tasks"} {
		if strings.HasPrefix(msg, lost) {
			s.corrupt = true
			return "kernel panic: " + lost
		}
	}
	return "kernel panic: " + exitCodeRe.ReplaceAllString(msg, "")
}

// lineTitle: the header line itself.
func lineTitle(s *span) string { return strings.TrimSpace(s.p.lines[s.hdrIdx].text) }

func rustTitle(s *span) string {
	// The message is the line after "panicked at file:line:col:".
	lines := s.titleLines()
	msg := ""
	if len(lines) > 1 {
		msg = strings.TrimSpace(lines[1])
	}
	return s.expand(msg+" in %F", s.k.frames)
}

// vmTitle names VM_BUG_ON_* and VM_WARN_ON_* reports by the check and,
// for the page form, its condition; the function is the WARN's or the
// first meaningful one.
func vmTitle(tpl string) func(s *span) string {
	return func(s *span) string {
		if s.warnFunc != "" && !strings.HasPrefix(s.warnFunc, "0x") {
			if f := cleanFunc(s.warnFunc); !skipAll.MatchString(f) {
				return s.expand(tpl, nil) + " in " + f
			}
		}
		return s.expand(tpl+" in %F", ripTrace)
	}
}

// cleanFunc drops compiler clone suffixes (.constprop.0, .isra.0, .cold).
func cleanFunc(f string) string {
	if i := strings.IndexByte(f, '.'); i > 0 {
		return f[:i]
	}
	return f
}

// Title normalization: what differs between runs of the same bug
// (addresses, numbers, line numbers, CPU numbers, the fuzzer's process
// names) is replaced, so that one bug keeps one title. Each rule is
// applied until the title no longer changes.
// A rule is tried only when the title holds its cue (cheap to look for).
var normalizers = []struct {
	cue  string // "": always; "0": a digit
	re   *regexp.Regexp
	with string
}{
	{"syz-executor", re(`syz-executor\.?[0-9]+(?:[/:][0-9]+)?`), "syz-executor"},
	{"syzkaller", re(`syzkaller[0-9]+(?:[/:][0-9]+)?`), "syzkaller"},
	{"", re(`([^a-zA-Z0-9])(?:0x)?[0-9a-f]{6,}`), "${1}ADDR"},
	{"0", re(`[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}`), "IP"},
	{":", re(`(\.\w+)(?::[0-9]+)+`), "${1}:LINE"},
	{"+0x", re(`([a-zA-Z][a-zA-Z0-9_.]+)\+0x[0-9a-z]+/0x[0-9a-z]+`), "${1}"},
	{"CPU#", re(`CPU#[0-9]+`), "CPU"},
	{"0", re(`(\W)(\d+)(\W|$)`), "${1}NUM${3}"},
	{"0", re(`\d{7,}`), "NUM"},
}

// hexRun reports whether t has n lowercase hex digits in a row.
func hexRun(t string, n int) bool {
	run := 0
	for i := 0; i < len(t); i++ {
		if c := t[i]; c >= '0' && c <= '9' || c >= 'a' && c <= 'f' {
			if run++; run >= n {
				return true
			}
		} else {
			run = 0
		}
	}
	return false
}

// maxTitle bounds a title: corrupted lines can be very long.
const maxTitle = 120

// normalized caches normalize: one bug printed many times has one raw
// title, and a log can hold a great many reports.
var normalized struct {
	sync.Mutex
	m map[string]string
}

func normalize(t string) string {
	normalized.Lock()
	n, ok := normalized.m[t]
	normalized.Unlock()
	if ok {
		return n
	}
	n = normalizeTitle(t)
	normalized.Lock()
	if normalized.m == nil || len(normalized.m) >= 4096 {
		normalized.m = map[string]string{}
	}
	normalized.m[t] = n
	normalized.Unlock()
	return n
}

func normalizeTitle(t string) string {
	for _, n := range normalizers {
		switch {
		case n.cue == "0" && !strings.ContainsAny(t, "0123456789"):
			continue
		case n.cue == "" && !hexRun(t, 6):
			continue
		case n.cue != "0" && n.cue != "" && !strings.Contains(t, n.cue):
			continue
		}
		for {
			u := n.re.ReplaceAllString(t, n.with)
			if u == t {
				break
			}
			t = u
		}
	}
	var b strings.Builder
	prev := byte(' ')
	for i := 0; i < len(t) && i < maxTitle; i++ {
		c := t[i]
		switch {
		case c == '\t':
			c = ' '
		case c < 0x20 || c >= 0x7f:
			continue
		}
		if c == ' ' && prev == ' ' {
			continue
		}
		b.WriteByte(c)
		prev = c
	}
	return strings.TrimSpace(b.String())
}

// Whether a report can be trusted to name the right code.

var (
	timestampRe   = re(`\[ *[0-9]+\.[0-9]+\]`)
	noStackAvail  = "(stack is not available)"
	stackCheckMax = 15
)

// corrupted reports whether the report is unreliable: its kind says so,
// its title could not be built whole, or it has no stack where one is
// expected (no stack at all, or a stack header without a frame after it),
// or fault injection printed into it.
func (s *span) corrupted(title string) bool {
	if s.k.corrupt || s.corrupt || timestampRe.MatchString(title) {
		return true
	}
	lines := s.titleLines()
	for _, l := range lines {
		if faultInjectRe.MatchString(l) {
			return true
		}
	}
	if s.k.noStack {
		return false
	}
	hasStack := false
	seen := map[string]bool{}
	for i, l := range lines {
		loc := stackStartRe.FindStringIndex(l)
		if loc == nil {
			continue
		}
		// Each kind of stack header is checked where it first appears.
		key := stackStartRe.FindString(l)
		if key == "" || seen[stackKey(key)] {
			continue
		}
		seen[stackKey(key)] = true
		if len(lines)-i < 4 {
			return true
		}
		ok := false
		for j := i + 1; j < len(lines) && j <= i+stackCheckMax; j++ {
			if stackStartRe.MatchString(lines[j]) {
				break
			}
			if strings.Contains(lines[j], noStackAvail) || stackFrameRe.MatchString(lines[j]) {
				ok = true
				break
			}
		}
		if !ok {
			return true
		}
		hasStack = true
	}
	return !hasStack
}

// stackKey folds the numbered stack headers ("Freed by task 12:") into
// their kind.
func stackKey(h string) string {
	return strings.TrimRight(strings.Map(func(r rune) rune {
		if r >= '0' && r <= '9' {
			return -1
		}
		return r
	}, h), " :")
}
