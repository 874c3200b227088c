package report

import (
	"regexp"
	"strings"
)

// hdr is the kind of line that opens (or continues) a report.
type hdr int

const (
	hNone hdr = iota
	hWarning
	hKernelBug
	hOops
	hPanic
	hKASAN
	hUBSAN
	hRCU
	hHung
	hSoftLockup
	hHardLockup
	hBadPageState
	hBadPageMap
	hBadRSS
	hList
	hVMPage
	hVMVMA
	hVMMM
	hLockdep
	hPageFault
	hDoubleFault
	hBug
	hKFENCE
	hLeak        // kmemleak: one unreferenced object (kmemleak.verbose=1 or the debugfs file)
	hLeakSummary // kmemleak: "N new suspected memory leaks"
)

// headers are tried in order; specific "BUG: ..." forms come before the
// generic one. Every pattern is anchored at the start of the message so
// that a report word inside an ordinary message ("ldtlab-init: BUG ...")
// does not count.
var headers = []struct {
	h  hdr
	re *regexp.Regexp
}{
	{hKASAN, regexp.MustCompile(`^BUG: KASAN: ([\w-]+) in ([^\s+]+)`)},
	{hKFENCE, regexp.MustCompile(`^BUG: KFENCE: ([a-z -]+?) in ([^\s+]+)`)},
	{hSoftLockup, regexp.MustCompile(`^(?:watchdog: )?BUG: soft lockup - CPU#\d+ stuck for \d+s!`)},
	// The buddy detector names the CPU that noticed: "CPU1: Watchdog ...".
	{hHardLockup, regexp.MustCompile(`^(?:watchdog: )?(?:CPU\d+: )?Watchdog detected hard LOCKUP on cpu \d+`)},
	{hBadPageState, regexp.MustCompile(`^BUG: Bad page state in process `)},
	{hBadPageMap, regexp.MustCompile(`^BUG: Bad page map in process `)},
	{hBadRSS, regexp.MustCompile(`^BUG: (Bad rss-counter state|non-zero pgtables_bytes on freeing mm)`)},
	// The "N messages suppressed" lines of the two above are not reports.
	{hNone, regexp.MustCompile(`^BUG: Bad page (?:state|map): \d+ messages suppressed`)},
	{hPageFault, regexp.MustCompile(`^BUG: (unable to handle page fault|kernel NULL pointer dereference|unable to handle kernel paging request|unable to handle kernel NULL pointer dereference)`)},
	// Lockdep's bracketed headers ("[ BUG: Invalid wait context ]"; all
	// of them before 4.x) and its old INFO:/BUG: forms.
	{hLockdep, regexp.MustCompile(`^(?:\[ )?(?:INFO|BUG|WARNING): (possible circular locking dependency detected|possible recursive locking detected|inconsistent lock state|suspicious RCU usage|bad unlock balance detected!|held lock freed!|lock held when returning to user space!|possible irq lock inversion dependency detected|[A-Z]+-safe -> [A-Z]+-unsafe lock order detected|Invalid wait context)(?: \])?\s*$`)},
	{hBug, regexp.MustCompile(`^BUG: (.+)`)},
	{hLockdep, regexp.MustCompile(`^WARNING: (possible circular locking dependency detected|possible recursive locking detected|inconsistent lock state|suspicious RCU usage|bad unlock balance detected!|held lock freed!|lock held when returning to user space!|possible irq lock inversion dependency detected|[A-Z]+-safe -> [A-Z]+-unsafe lock order detected|Nested lock was not taken|bad contention detected!|chain_key collision|\S+/\d+ still has locks held!)\s*$`)},
	// The kernel's WARNING always has the "CPU: N PID: N at" form; a
	// program printing "WARNING: ..." does not match.
	{hWarning, regexp.MustCompile(`^WARNING: CPU: \d+ PID: \d+ at (?:(\S+):\d+ )?([^\s+]+)`)},
	// 6.16 onwards: "WARNING: mm/memory.c:1754 at fn+0x26/0x18a, CPU#17: comm/2041".
	{hWarning, regexp.MustCompile(`^WARNING: (?:(\S+):\d+ )?at ([^\s+,]+)[^,]*, CPU#\d+: `)},
	// Lockdep's one bracketed header, and its complaint about a lock
	// class that was never initialized.
	{hLockdep, regexp.MustCompile(`^INFO: (trying to register non-static key)\.`)},
	{hLeak, regexp.MustCompile(`^(?:kmemleak: )?unreferenced object 0x[0-9a-f]+ \(size \d+\):`)},
	{hLeakSummary, regexp.MustCompile(`^kmemleak: \d+ new suspected memory leaks`)},
	{hKernelBug, regexp.MustCompile(`^[Kk]ernel BUG at (?:(\S+?):\d+!|(\S+) \[verbose debug info unavailable\])`)},
	// 6.12 prints "Oops: <what>: <err> [#n]"; older kernels printed a
	// bare "general protection fault...: <err> [#n]".
	{hOops, regexp.MustCompile(`^(?:Oops: (.+?)|(general protection fault.*?)): [0-9a-f]{4} \[#\d+\]`)},
	{hPanic, regexp.MustCompile(`^Kernel panic - not syncing: ?(.*)`)},
	{hUBSAN, regexp.MustCompile(`^UBSAN: (.+?) in (\S+?)(?::\d+)*\s*$`)},
	{hRCU, regexp.MustCompile(`^(?:rcu: )?INFO: \S+ (?:detected (?:expedited )?stalls?|self-detected stall)`)},
	{hHung, regexp.MustCompile(`^INFO: task .+:\d+ blocked for more than \d+ seconds\.`)},
	{hList, regexp.MustCompile(`^(h?list_(?:add|del)\w*) corruption[.,]`)},
	{hVMPage, regexp.MustCompile(`^page dumped because: (VM_[A-Z_]+)\((.*)\)\s*$`)},
	{hVMVMA, regexp.MustCompile(`^vma [0-9a-f]+ start [0-9a-f]+ end [0-9a-f]+ mm [0-9a-f]+`)},
	{hVMMM, regexp.MustCompile(`^mm [0-9a-f]+ task_size \d+`)},
	{hDoubleFault, regexp.MustCompile(`^PANIC: double fault, error_code: 0x[0-9a-f]+`)},
}

// classify returns the header kind of a message and the pattern's
// submatches.
func classify(text string) (hdr, []string) {
	// Cheap pre-filter: every header starts with one of these letters.
	if text == "" || !strings.ContainsRune("BWkKOgUrIwlhpvmPu[", rune(text[0])) {
		return hNone, nil
	}
	for _, h := range headers {
		if m := h.re.FindStringSubmatch(text); m != nil {
			return h.h, m
		}
	}
	return hNone, nil
}

// Lines that are not headers but steer span detection.
var (
	cutHereRe    = regexp.MustCompile(`^-+\[ cut here \]-+\s*$`)
	endTraceRe   = regexp.MustCompile(`^---\[ end trace(?: [0-9a-f]+)? \]---`)
	endPanicRe   = regexp.MustCompile(`^---\[ end Kernel panic`)
	rebootingRe  = regexp.MustCompile(`^Rebooting in -?\d+ seconds`)
	kernelOffRe  = regexp.MustCompile(`^Kernel Offset: `)
	ruleRe       = regexp.MustCompile(`^={20,}\s*$`)
	newBootRe    = regexp.MustCompile(`^Linux version \d`)
	nmiBacktrace = regexp.MustCompile(`^NMI backtrace for cpu (\d+)`)
	// "func+0x1/0x2", optionally "[module]" and, in symbolized logs,
	// "file.c:12"; symbolizers also print inlined callers as
	// "func file.c:12 [inline]".
	// "func+0x1/0x2", optionally "[module]" and, in symbolized logs,
	// "file.c:12"; symbolizers also print inlined callers as
	// "func file.c:12 [inline]".
	frameRe       = regexp.MustCompile(`^(\? )?([A-Za-z0-9_.$]+)(?:\+0x[0-9a-f]+/0x[0-9a-f]+(?: \[[^\]]*\]| \S+:\d+(?::\d+)?)*| \S+:\d+(?::\d+)? \[inline\])$`)
	rawFrameRe    = regexp.MustCompile(`^(\? )?0x[0-9a-f]+$`)
	stackMarkRe   = regexp.MustCompile(`^</?[A-Z#_]+>$`)
	regLineRe     = regexp.MustCompile(`^(RIP|EIP|Code|RSP|RAX|RDX|RBP|R10|R13|FS|CS|CR2|DR0|DR3|PKRU):`)
	ripRe         = regexp.MustCompile(`^RIP: [0-9a-f]{4}:([A-Za-z0-9_.$]+)\+0x`)
	lockAtRe      = regexp.MustCompile(`, at: (?:\[<[0-9a-f]+>\] )?([A-Za-z0-9_.$]+)\+0x`)
	accessRe      = regexp.MustCompile(`^(Read|Write) of size \d+`)
	rcuContinueRe = regexp.MustCompile(`^(rcu:|Sending NMI|NMI backtrace|CPU: \d+|Hardware name:|Tainted:|task:|Call Trace:|Modules linked in:|Task dump for CPU|\t)`)
)

// isTraceLine reports whether a message can appear inside a
// "Call Trace:" block: frames, stack-switch marks and the register dump
// printed when the unwinder crosses from an IRQ stack to the task stack.
func isTraceLine(text string) bool {
	t := strings.TrimSpace(text)
	return frameRe.MatchString(t) || rawFrameRe.MatchString(t) ||
		stackMarkRe.MatchString(t) || regLineRe.MatchString(t)
}

// consequence reports whether a panic message is the kernel giving up
// because of the report s, rather than a failure of its own.
func consequence(msg string, s *span) bool {
	switch {
	case strings.Contains(msg, "panic_on_warn set"):
		return true
	case strings.HasPrefix(msg, "Fatal exception"),
		strings.HasPrefix(msg, "Attempted to kill init!"),
		strings.HasPrefix(msg, "Aiee, killing interrupt handler!"),
		strings.HasPrefix(msg, "Attempted to kill the idle task!"),
		strings.HasPrefix(msg, "Oopsed too often"),
		strings.HasPrefix(msg, "Oops failed to kill thread"):
		return s.sawOops
	case strings.HasPrefix(msg, "hung_task: blocked tasks"):
		return s.typ == TypeHungTask
	case strings.HasPrefix(msg, "softlockup: hung tasks"):
		return s.typ == TypeSoftLockup
	case strings.HasPrefix(msg, "RCU Stall"):
		return s.typ == TypeRCUStall
	case strings.HasPrefix(msg, "Hard LOCKUP"):
		return s.typ == TypeHardLockup
	}
	return false
}
