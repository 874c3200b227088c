package report

import (
	"regexp"
	"strings"
)

// skipRe matches functions that never name the bug: the reporting
// machinery (dump_stack, __warn, die, sanitizer runtimes, lockdep, list
// and page checkers), exception/IRQ entry code, and the sleep, lock and
// delay primitives a hung or stuck task sits in. Titles use the first
// frame after them, as that is the code that misbehaved.
var skipRe = regexp.MustCompile(`^(` +
	`dump_stack\w*|__dump_stack|show_stack|instrument_\w+|check_region_inline|show_regs\w*|show_trace_log_lvl|sched_show_task|` +
	`__warn\w*|warn_slowpath\w*|report_bug|handle_bug|__report_bug|` +
	`panic|vpanic|check_panic_on_warn|die|die_addr|__die\w*|oops_\w+|do_trap|do_error_trap|` +
	`exc_\w+|asm_\w+|handle_\w*exception\w*|do_user_addr_fault|handle_page_fault|page_fault_oops|` +
	`kernelmode_fixup_or_oops|__bad_area\w*|bad_area\w*|no_context|` +
	`nmi_\w+|default_do_nmi|__sysvec_\w+|sysvec_\w+|irq_exit\w*|__irq_exit\w*|handle_softirqs|__do_softirq|` +
	`__might_resched|__might_sleep|check_preemption_disabled|debug_smp_processor_id|__might_fault|might_fault|might_sleep|__schedule_bug|` +
	`__schedule|schedule\w*|context_switch|__switch_to\w*|preempt_schedule\w*|io_schedule\w*|` +
	`__wait_for_common|wait_for_common\w*|do_wait_for_common|wait_for_completion\w*|` +
	`__mutex_lock\w*|mutex_lock\w*|_raw_\w+|__raw_\w+|do_raw_\w+|queued_\w+|native_queued_\w+|` +
	`__down\w*|down|down_\w+|rwsem_down_\w+|__rt_mutex\w*|rt_mutex\w*|` +
	`msleep\w*|usleep\w*|__udelay|udelay|__const_udelay|delay_tsc|delay_halt\w*|mdelay|cpu_relax|rep_nop|` +
	`kasan_\w+|__kasan_\w+|print_report|print_address_description\w*|__asan_\w+|` +
	`__ubsan_handle_\w+|ubsan_\w+|kfence_\w+|__kfence_\w+|` +
	`refcount_\w+|__refcount_\w+|` +
	`__list_add_valid\w*|__list_del_entry_valid\w*|` +
	`bad_page|free_page_is_bad\w*|print_bad_pte|vm_normal_page\w*|` +
	`free_pages_prepare|free_unref_\w+|__free_pages\w*|free_pages|__free_one_page|free_one_page|` +
	`__folio_put|folio_put\w*|put_page|__put_page|release_pages|folios_put\w*|` +
	`check_new_page\w*|rmqueue\w*|get_page_from_freelist|__alloc_pages\w*|alloc_pages\w*|` +
	`__kmalloc\w*|kmalloc\w*|kmem_cache_alloc\w*|__kvmalloc\w*|kvmalloc\w*|slab_alloc\w*|` +
	`mem(set|cpy|move|cmp)\w*|__mem(set|cpy|move)\w*|str(n?cpy|scpy|n?cmp|n?len)|` +
	`rep_movs_alternative|_copy_(to|from)_user|copy_(to|from)_user\w*|` +
	`dump_page|__dump_page|__dump_folio|dump_vma|dump_mm|` +
	`lockdep_\w+|lock_acquire\w*|lock_release|__lock_acquire|lock_acquired|lock_contended|` +
	`validate_chain|check_prev_add|check_prevs_add|check_noncircular|print_\w*lock\w*|mark_lock\w*|` +
	`watchdog_\w+|__hrtimer_\w+|hrtimer_\w+|tick_\w+|update_process_times|` +
	`rcu_\w*stall\w*|rcu_dump_cpu_stacks|rcu_momentary_\w+|stop_machine_yield|rcu_pending|rcu_sched_clock_irq|` +
	`__pfx_\w+|ret_from_fork\w*|kthread|entry_SYSCALL\w*|do_syscall_\w+` +
	`)$`)

func skipFunc(f string) bool { return skipRe.MatchString(f) }

// cleanFunc drops compiler clone suffixes (.constprop.0, .isra.0, .cold,
// .part.0), which vary between builds of the same code.
func cleanFunc(f string) string {
	if i := strings.IndexByte(f, '.'); i > 0 {
		return f[:i]
	}
	return f
}

// ripFunc is the function of the first "RIP:" line, "" if it is not
// symbolized or is machinery.
func (s *span) ripFunc() string {
	for _, j := range s.idx {
		t := strings.TrimSpace(s.p.lines[j].text)
		if !strings.HasPrefix(t, "RIP: ") {
			continue
		}
		if m := ripRe.FindStringSubmatch(t); m != nil {
			if f := cleanFunc(m[1]); !skipFunc(f) && (s.extraSkip == nil || !s.extraSkip.MatchString(f)) {
				return f
			}
		}
		return ""
	}
	return ""
}

// traceFunc is the first reliable, meaningful frame in the call traces.
// NMI sections are always skipped; IRQ sections when skipIRQ is set
// (watchdogs report from the timer interrupt that caught the CPU).
func (s *span) traceFunc(skipIRQ bool) string {
	in, irq, nmi := false, false, false
	for _, j := range s.idx {
		t := strings.TrimSpace(s.p.lines[j].text)
		if t == "Call Trace:" {
			in, irq, nmi = true, false, false
			continue
		}
		if !in {
			continue
		}
		switch t {
		case "<IRQ>", "<SOFTIRQ>":
			irq = true
			continue
		case "</IRQ>", "</SOFTIRQ>":
			irq = false
			continue
		case "<NMI>":
			nmi = true
			continue
		case "</NMI>":
			nmi = false
			continue
		}
		m := frameRe.FindStringSubmatch(t)
		if m == nil {
			if !isTraceLine(t) {
				in = false
			}
			continue
		}
		if m[1] != "" || nmi || (irq && skipIRQ) {
			continue
		}
		if f := cleanFunc(m[2]); !skipFunc(f) && (s.extraSkip == nil || !s.extraSkip.MatchString(f)) {
			return f
		}
	}
	return ""
}

// frameFunc is the first symbolized frame line anywhere in the span
// (after its header) that extra and skipFunc do not reject: KFENCE and
// kmemleak print their stacks without a "Call Trace:" line.
func (s *span) frameFunc(extra *regexp.Regexp) string {
	for _, j := range s.idx {
		if j <= s.hdrIdx {
			continue
		}
		t := strings.TrimSpace(strings.TrimPrefix(s.p.lines[j].text, "kmemleak: "))
		m := frameRe.FindStringSubmatch(t)
		if m == nil || m[1] != "" {
			continue
		}
		if f := cleanFunc(m[2]); !skipFunc(f) && (extra == nil || !extra.MatchString(f)) {
			return f
		}
	}
	return ""
}

// traceFuncExcept is traceFunc without the frames extra matches.
// stuckFunc is where a watchdog found the CPU (RIP, else the trace outside
// interrupts), skipping extra too.
func (s *span) stuckFunc(extra *regexp.Regexp) string {
	saved := s.extraSkip
	s.extraSkip = extra
	defer func() { s.extraSkip = saved }()
	return first(s.ripFunc(), s.traceFunc(true))
}

func (s *span) traceFuncExcept(extra *regexp.Regexp) string {
	saved := s.extraSkip
	s.extraSkip = extra
	defer func() { s.extraSkip = saved }()
	return s.traceFunc(false)
}

// lockAt is the function of the first ", at: func+0x" lock description,
// or of the first "[<address>] func+0x" line.
func (s *span) lockAt(re *regexp.Regexp) string {
	for _, j := range s.idx {
		t := strings.TrimSpace(s.p.lines[j].text)
		if m := re.FindStringSubmatch(t); m != nil {
			if f := cleanFunc(m[1]); !skipFunc(f) {
				return f
			}
		}
	}
	return ""
}

func first(fs ...string) string {
	for _, f := range fs {
		if f != "" {
			return f
		}
	}
	return ""
}

func in(what, f string) string {
	if f == "" {
		return what
	}
	return what + " in " + f
}

var (
	addrRe  = regexp.MustCompile(`\b(?:0x)?[0-9a-fA-F]{8,}\b|0x[0-9a-fA-F]+`)
	numRe   = regexp.MustCompile(`\b\d+\b`)
	spaceRe = regexp.MustCompile(`\s+`)
	// A generic "BUG: " message is named by its text up to the first
	// detail: "scheduling while atomic: sh/1/0x2", "... context at f.c:1".
	bugCutRe = regexp.MustCompile(`: |, | - | at | on CPU#| \[`)
	// Reports of sleeping (or scheduling) where the kernel must not.
	atomicSleepRe = regexp.MustCompile(`^(sleeping function called from invalid context|scheduling while atomic)`)
	// "[<ffffffff81234567>] func+0x12/0x30" (print_ip_sym).
	ipSymRe = regexp.MustCompile(`^\[<[0-9a-f]+>\] ([A-Za-z0-9_.$]+)\+0x`)
	// Allocator frames at the top of a kmemleak backtrace.
	leakSkipRe = regexp.MustCompile(`^(kmemleak\w*|__kmemleak\w*|create_object\w*|` +
		`k[mzc]alloc\w*|__k[mzc]alloc\w*|krealloc\w*|kmalloc_trace\w*|kvzalloc\w*|` +
		`kmem_cache_\w+|__kmem_cache_\w+|slab_\w+|__slab_\w+|` +
		`v[mz]alloc\w*|__vmalloc\w*|alloc_\w+|__alloc_\w+|kstrn?dup\w*|kmemdup\w*|k?v?asprintf|mempool_\w+)$`)
	rcuFuncRe = regexp.MustCompile(`^_*rcu_`)
	// Leaf helpers a spinning CPU is caught in: clock reads and pauses.
	spinLeafRe  = regexp.MustCompile(`^(ktime_get\w*|read_tsc|rdtsc\w*|native_sched_clock|sched_clock\w*|local_clock\w*|cpu_relax|rep_nop|native_pause|delay_tsc|delay_halt\w*|__const_udelay|__udelay|__delay|native_safe_halt)$`)
	rcuOrLeafRe = regexp.MustCompile(rcuFuncRe.String() + "|" + spinLeafRe.String())
	// Lockdep's own functions, under its WARN()s.
	lockdepSkipRe = regexp.MustCompile(`^(lock_\w+|__lock_\w+|lockdep_\w+|hlock_\w+|check_\w+|mark_\w+|validate_\w+|debug_\w+|lock_is_held\w*|__lock_is_held\w*|look_up_lock_class|register_lock_class|__lock_acquire)$`)
	exitRe        = regexp.MustCompile(` exitcode=\S+`)
)

// normalize replaces addresses and numbers in free text, so titles do not
// depend on where and when the kernel ran.
func normalize(s string) string {
	s = addrRe.ReplaceAllString(s, "ADDR")
	s = numRe.ReplaceAllString(s, "NUM")
	return strings.TrimSpace(spaceRe.ReplaceAllString(s, " "))
}

// title is the report's normalized title, with no control bytes.
func (s *span) title() string { return printable(s.rawTitle()) }

// printable replaces control bytes and invalid UTF-8, which a corrupted
// console can put in messages and comm names.
func printable(t string) string {
	t = strings.ToValidUTF8(t, "?")
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return '?'
		}
		return r
	}, t)
}

func (s *span) rawTitle() string {
	code := first(s.ripFunc(), s.traceFunc(false))
	// Where a watchdog caught a CPU: a busy loop's leaf helper (a clock
	// read, a pause) says nothing about whose loop it is.
	stuck := s.stuckFunc(spinLeafRe)
	switch s.h {
	case hWarning, hKernelBug, hList, hVMPage, hVMVMA, hVMMM:
		return s.bugTitle(code)
	case hOops:
		msg := s.oopsMsg()
		if strings.Contains(msg, "general protection fault") {
			return in("general protection fault", code)
		}
		if i := strings.Index(msg, ", "); i > 0 {
			msg = msg[:i]
		}
		return in(normalize(msg), code)
	case hPanic:
		return "Kernel panic: " + normalize(exitRe.ReplaceAllString(strings.TrimSpace(s.m[1]), ""))
	case hKASAN:
		t := "KASAN: " + s.m[1]
		for _, j := range s.idx {
			if m := accessRe.FindStringSubmatch(s.p.lines[j].text); m != nil {
				t += " " + m[1]
				break
			}
		}
		// The header names the faulting function, unless that is a
		// string or copy helper: then the first caller in the stack.
		f := cleanFunc(s.m[2])
		if skipFunc(f) {
			f = first(s.traceFunc(false), f)
		}
		return t + " in " + f
	case hKFENCE:
		f := cleanFunc(s.m[2])
		if skipFunc(f) {
			f = first(s.frameFunc(nil), f)
		}
		return "KFENCE: " + s.m[1] + " in " + f
	case hLeak:
		return in("memory leak", s.frameFunc(leakSkipRe))
	case hLeakSummary:
		return "kmemleak: suspected memory leaks"
	case hUBSAN:
		if f := s.traceFunc(false); f != "" {
			return "UBSAN: " + s.m[1] + " in " + f
		}
		return "UBSAN: " + s.m[1] + " in " + s.m[2]
	case hRCU:
		// RCU's own kthreads and helpers are never the stalled code
		// (a starved grace-period kthread is dumped first).
		return in("INFO: rcu detected stall", s.stuckFunc(rcuOrLeafRe))
	case hHung:
		return in("INFO: task hung", s.traceFunc(false))
	case hSoftLockup:
		return in("BUG: soft lockup", stuck)
	case hHardLockup:
		return in("Watchdog detected hard LOCKUP", stuck)
	case hBadPageState:
		return in("BUG: Bad page state", s.traceFunc(false))
	case hBadPageMap:
		return in("BUG: Bad page map", s.traceFunc(false))
	case hBadRSS:
		return "BUG: " + s.m[1]
	case hLockdep:
		return s.lockdepTitle()
	case hPageFault:
		// syzkaller's names, so titles can be searched upstream.
		what := "BUG: unable to handle kernel paging request"
		if strings.Contains(s.m[1], "NULL pointer") {
			what = "BUG: unable to handle kernel NULL pointer dereference"
		}
		return in(what, code)
	case hDoubleFault:
		return in("PANIC: double fault", code)
	}
	msg := s.m[1]
	if loc := bugCutRe.FindStringIndex(msg); loc != nil {
		msg = msg[:loc[0]]
	}
	if strings.HasPrefix(msg, "workqueue lockup") {
		// The stacks that follow are of busy workers, not of a culprit.
		return "BUG: workqueue lockup"
	}
	return in("BUG: "+normalize(msg), code)
}

// bugTitle names BUG()/WARN() based reports, including the list and VM
// checks that print their own message first.
func (s *span) bugTitle(code string) string {
	warn := ""
	if f := cleanFunc(s.warnFunc); s.warnFunc != "" && !strings.HasPrefix(s.warnFunc, "0x") && !skipFunc(f) {
		warn = f
	}
	switch s.finalType() {
	case TypeRefcount:
		return in("WARNING: refcount bug", code)
	case TypeLockdep:
		return in("WARNING: locking bug", s.traceFuncExcept(lockdepSkipRe))
	}
	switch s.h {
	case hList:
		return in(s.m[1]+" corruption", code)
	case hVMPage:
		return in(s.m[1]+"("+s.m[2]+")", first(warn, code))
	case hVMVMA:
		return in("VM_BUG_ON_VMA", first(warn, code))
	case hVMMM:
		return in("VM_BUG_ON_MM", first(warn, code))
	}
	switch {
	case s.typ == TypeListCorruption:
		return in("list corruption", code)
	case s.h == hWarning:
		return in("WARNING", first(warn, code))
	case code != "":
		return "kernel BUG in " + code
	case s.bugFile != "":
		return "kernel BUG at " + s.bugFile
	}
	return "kernel BUG"
}

// lockdepTitle names lockdep reports the way syzkaller does: deadlocks by
// the lock being acquired, the others by where they happened.
func (s *span) lockdepTitle() string {
	what := s.m[1]
	switch {
	case strings.Contains(what, "circular locking"), strings.Contains(what, "recursive locking"),
		strings.Contains(what, "lock inversion"), strings.Contains(what, "lock order"):
		// The lock being acquired is the most specific place.
		return in("possible deadlock", first(s.lockAt(lockAtRe), s.traceFunc(false)))
	case what == "inconsistent lock state":
		return in(what, first(s.lockAt(lockAtRe), s.traceFunc(false)))
	case what == "Invalid wait context":
		return in("BUG: Invalid wait context", first(s.lockAt(lockAtRe), s.traceFunc(false)))
	case what == "trying to register non-static key":
		return in("INFO: "+what, s.traceFunc(false))
	case strings.HasPrefix(what, "bad unlock balance"):
		// The release site is printed as "[<address>] func+0x..".
		return in("WARNING: bad unlock balance", first(s.lockAt(ipSymRe), s.traceFunc(false)))
	case strings.HasPrefix(what, "held lock freed"), strings.HasPrefix(what, "lock held when returning"):
		what = strings.TrimSuffix(what, "!")
		return in("WARNING: "+what, first(s.lockAt(lockAtRe), s.traceFunc(false)))
	case strings.HasSuffix(what, "still has locks held!"):
		what = "still has locks held"
	}
	what = strings.TrimSuffix(strings.TrimSuffix(what, "!"), " detected")
	return in("WARNING: "+what, s.traceFunc(false))
}
