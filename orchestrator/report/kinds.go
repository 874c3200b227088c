package report

import (
	"regexp"
	"regexp/syntax"
	"strings"
)

// kind is one row of the table of report kinds: the header line that
// opens the report, its type, how its end is found, how its title is
// built and whether it is a report at all. A span (span.go) follows the
// row it was opened by; nothing else names report kinds.
type kind struct {
	re   *regexp.Regexp // the header, anchored at the start of a message
	need string         // a substring the header must hold: checked before re, cheaply
	typ  Type
	end  mode
	// notReport: a line that looks like a header but opens no report (a
	// "messages suppressed" count, a detector's own chatter).
	notReport bool

	// How the span grows past its header.
	oopsFollows bool           // an "Oops:"/"general protection fault" line may follow and belongs to it
	bugFollows  bool           // a "kernel BUG at"/"WARNING:" line may follow and belongs to it
	confirm     *regexp.Regexp // a report only if one of its first confirmIn lines after the header matches
	confirmIn   int

	// What this line is when another report's span reaches it.
	oops, bug, warn, panic bool
	inline                 bool   // a one-line report that can come in the middle of another
	partOf                 []Type // a line that belongs to a report of these types when one is open

	// The title: a template ("%1".."%9": header submatches, normalized;
	// "%F": the guilty frame, "corrupted" when none is found; "%A": the
	// access of a sanitizer report, "Read" or "Write"), or a function
	// when a template cannot say it.
	title   string
	titleFn func(s *span) string
	frames  *guilty // where the guilty frame is looked for
	// byFile refines a WARNING or kernel BUG by the file (and function)
	// its header names: refcount, ODEBUG, usercopy, list debugging ...
	byFile []flavour

	// Whether the report can be trusted to name the right code.
	noStack bool // complete without a stack trace
	corrupt bool // on its own, a consequence whose cause was lost
}

// flavour is a WARNING or kernel BUG whose file (and function) says more
// than "WARNING"/"kernel BUG".
type flavour struct {
	re     *regexp.Regexp // matched against the header line
	typ    Type           // "" keeps the kind's
	title  string
	frames *guilty
}

func re(s string) *regexp.Regexp { return regexp.MustCompile(s) }

// Kinds that others refer to.
var (
	kindOops = &kind{
		// 6.12 prints "Oops: <what>: <err> [#n]"; older kernels printed
		// a bare "general protection fault: <err> [#n]", "divide error:
		// ...". KASAN's GPF hint was once printed without a newline.
		// A bare "Oops: 0002 [#1]" (or 6.12's "Oops: Oops: 0000 [#1]")
		// follows a page fault's "BUG: unable to handle ..." lines.
		re:   re(`^(?:Oops: |kasan: GPF could be caused by NULL-ptr deref or user memory access)?(?:((?:segment-related )?general protection fault|[a-z][a-z0-9_ -]*?)(?:,[^:]*)?: |Oops: )?[0-9a-f]{4} \[#\d+\]`),
		need: " [#",
		typ:  TypeOops, end: modeMarker, oops: true,
		titleFn: oopsTitle,
	}
	kindPanic = &kind{
		re:  re(`^Kernel panic - not syncing: ?(.*)`),
		typ: TypePanic, end: modePanic, panic: true,
		titleFn: panicTitle,
	}
	kindKernelBug = &kind{
		re:  re(`^kernel BUG at (?:(\S+?):\d+!?|(\S+) \[verbose debug info unavailable\])`),
		typ: TypeKernelBug, end: modeMarker, oopsFollows: true, bug: true,
		title: "kernel BUG in %F", frames: gRIPTrace(`^skb_`),
		byFile: []flavour{
			{re: re(`^kernel BUG at mm/usercopy\.c`), title: "BUG: bad usercopy in %F", frames: gTrace(`usercopy|__check`)},
			{re: re(`^kernel BUG at lib/list_debug\.c`), typ: TypeListCorruption, title: "BUG: corrupted list in %F", frames: gTrace()},
			{re: re(`mm/page_table_check\.c`), typ: TypePageTableCheck, title: "kernel BUG in %F", frames: gRIPTrace(`^skb_`)},
			{re: re(`lib/refcount\.c`), typ: TypeRefcount, title: "kernel BUG in %F", frames: gRIPTrace(`^skb_`)},
		},
	}
	kindWarning = &kind{
		re:  re(`^WARNING: (?:CPU: \d+ PID: \d+ at |\[.*\] )(?:(\S+):\d+ )?([^\s+]+)`),
		typ: TypeWarning, end: modeMarker, warn: true,
		title: "WARNING in %F", frames: gWarning(), byFile: warningFlavours,
	}
	// 6.16 onwards: "WARNING: mm/memory.c:1754 at fn+0x26/0x18a, CPU#17: comm/2041".
	kindWarning616 = &kind{
		re:  re(`^WARNING: (?:(\S+):\d+ )?at ([^\s+,]+)[^,]*, CPU#\d+: `),
		typ: TypeWarning, end: modeMarker, warn: true,
		title: "WARNING in %F", frames: gWarning(), byFile: warningFlavours,
	}
	kindKASAN = &kind{
		re:  re(`^BUG: KASAN: (double-free or invalid-free|[\w-]+) (?:in|on address) ([^\s+]+)?`),
		typ: TypeKASAN, end: modeKASAN,
		titleFn: kasanTitle,
	}
	kindLeak = &kind{
		re:  re(`^(?:kmemleak: )?unreferenced object 0x[0-9a-f]+ \(size \d+\):`),
		typ: TypeKmemleak, end: modeIndented,
		title: "memory leak in %F",
		frames: &guilty{path: []step{{re: re(`backtrace(?: \(crc [0-9a-f]*\))?:`)}, stack},
			skip: re(`kmemleak|mmap|kmem|slab|alloc|create_object|idr_get|list_lru_init|kasprintf|kvasprintf|pcpu_create|strdup|strndup|memdup`)},
	}
	kindLeakSummary = &kind{
		re:  re(`^kmemleak: \d+ new suspected memory leaks`),
		typ: TypeKmemleak, end: modeIndented, noStack: true,
		title: "kmemleak: suspected memory leaks",
	}
	kindBadRSS = &kind{
		re:  re(`^BUG: (Bad rss-counter state|non-zero pgtables_bytes on freeing mm|non-zero nr_ptes on freeing mm|non-zero nr_pmds on freeing mm)`),
		typ: TypeBadRSS, end: modeRSS, noStack: true,
		title: "BUG: %1",
	}
	kindRCU = &kind{
		re:  re(`^(?:rcu: )?INFO: (?:rcu_(?:preempt|sched|bh|tasks)|\S+) (?:(?:self-)?detected (?:expedited )?stalls?)`),
		typ: TypeRCUStall, end: modeTrace,
		title: "INFO: rcu detected stall in %F",
		frames: &guilty{
			path: []step{{re: re(`apic_timer_interrupt`)}, rip, stack},
			alt:  []step{{re: re(`apic_timer_interrupt|Exception stack|el1h_64_irq`)}, stack},
			skip: re(`apic_timer_interrupt|rcu`), pick: stallFrame,
			// A stall printed without the timer interrupt's stack (the
			// stalled CPU's registers and task stack only): where the
			// CPU was, past RCU's own code and the clock reads and pauses
			// a busy loop sits in.
			fallback: &guilty{path: []step{rip, callTrace, stack}, skip: re(`^_*rcu_|` + spinLeaf), pick: stallFrame}},
	}
	kindHardLockup = &kind{
		// The buddy detector names the CPU that noticed: "CPU1: Watchdog ...".
		re:  re(`^(?:watchdog: )?(?:CPU\d+: )?Watchdog detected hard LOCKUP on cpu \d+`),
		typ: TypeHardLockup, end: modeTrace,
		title: "Watchdog detected hard LOCKUP in %F", frames: gStall(),
	}
	kindSoftLockup = &kind{
		re:  re(`^(?:(?:NMI )?watchdog: )?BUG: soft lockup - CPU#\d+ stuck for \d+s!`),
		typ: TypeSoftLockup, end: modeTrace,
		title: "BUG: soft lockup in %F", frames: gStall(),
	}
	kindVMPage = &kind{
		re:  re(`^page dumped because: (VM_[A-Z_]+)\((.*)\)\s*$`),
		typ: TypeVMBug, end: modeMarker, bugFollows: true, oopsFollows: true,
		titleFn: vmTitle("%1(%2)"),
	}
)

// kinds are tried in order: specific forms before general ones. Every
// pattern is anchored at the start of the message, so that a report word
// inside an ordinary message ("ldtlab-init: BUG ...") does not count.
var kinds = []*kind{
	kindKASAN,
	{re: re(`^BUG: KMSAN: kernel-usb-infoleak`), typ: TypeKMSAN, end: modeKASAN, noStack: true,
		title: "KMSAN: kernel-usb-infoleak in %F",
		frames: &guilty{path: []step{stack, {re: re(`Local variable .* created at:|Uninit was created at:`)}, stack},
			skip: re(`alloc_skb|usb_submit_urb|usb_start_wait_urb|usb_bulk_msg|usb_interrupt_msg|usb_control_msg`)}},
	{re: re(`^BUG: KMSAN: ([a-z-]+)`), typ: TypeKMSAN, end: modeKASAN, noStack: true,
		title: "KMSAN: %1 in %F",
		frames: &guilty{path: []step{stack, {re: re(`Local variable .* created at:|Uninit was created at:`)}, stack},
			skip: re(`alloc_skb|netlink_ack|netlink_rcv_skb|_encrypt$|^(?:crypto|cipher|drbg|rng)_`)}},
	{re: re(`^BUG: KCSAN: (.*)`), typ: TypeKCSAN, end: modeKASAN, noStack: true, title: "KCSAN: %1"},
	{re: re(`^BUG: KFENCE: (use-after-free|out-of-bounds) (read|write) in ([^\s+]+)`), typ: TypeKFENCE, end: modeKASAN,
		title: "KFENCE: %1 %2 in %F", frames: gAfterHeader(`^BUG: KFENCE: [a-z -]+ in ([A-Za-z0-9_]+)[.+]`)},
	{re: re(`^BUG: KFENCE: invalid free in ([^\s+]+)`), typ: TypeKFENCE, end: modeKASAN, noStack: true,
		title: "KFENCE: invalid free in %F", frames: gAfterHeader(`^BUG: KFENCE: [a-z -]+ in ([A-Za-z0-9_]+)[.+]`)},
	{re: re(`^BUG: KFENCE: invalid (read|write) in ([^\s+]+)`), typ: TypeKFENCE, end: modeKASAN,
		title: "KFENCE: invalid %1 in %F", frames: gAfterHeader(`^BUG: KFENCE: [a-z -]+ in ([A-Za-z0-9_]+)[.+]`)},
	{re: re(`^BUG: KFENCE: memory corruption in ([^\s+]+)`), typ: TypeKFENCE, end: modeKASAN, noStack: true,
		title: "KFENCE: memory corruption in %F", frames: gAfterHeader(`^BUG: KFENCE: [a-z -]+ in ([A-Za-z0-9_]+)[.+]`)},
	{re: re(`^BUG: KFENCE: ([a-z -]+?) in ([^\s+]+)`), typ: TypeKFENCE, end: modeKASAN,
		title: "KFENCE: %1 in %F", frames: gAfterHeader(`^BUG: KFENCE: [a-z -]+ in ([A-Za-z0-9_]+)[.+]`)},
	kindSoftLockup,
	kindHardLockup,
	{re: re(`^BUG: Bad page (state|cache) in process `), typ: TypeBadPageState, end: modeTrace,
		title: "BUG: Bad page %1 in %F",
		frames: &guilty{path: []step{{re: re(`page last allocated`)}, stack}, skip: badPageSkip,
			// Without page_owner there is no allocation stack: the lab
			// names the report by the stack that found the page.
			fallback: &guilty{path: []step{callTrace, stack}, skip: re(badPageSkip.String() + `|bad_page|free_page_is_bad|free_pages|__free_one_page|free_one_page|release_pages|folios_put|check_new_page|rmqueue|get_page_from_freelist`)}}},
	{re: re(`^BUG: Bad page map in process `), typ: TypeBadPageMap, end: modeTrace, noStack: true, title: "BUG: Bad page map"},
	kindBadRSS,
	// The "N messages suppressed" lines of the two above are not reports.
	{re: re(`^BUG: Bad page (?:state|map): \d+ messages suppressed`), notReport: true},
	{re: re(`^BUG: (?:unable to handle kernel paging request|unable to handle page fault for address|Unable to handle kernel data access)`),
		typ: TypePageFault, end: modeMarker, oopsFollows: true,
		title: "BUG: unable to handle kernel paging request in %F", frames: gRIPTrace()},
	{re: re(`^BUG: (?:unable to handle kernel NULL pointer dereference|kernel NULL pointer dereference|Kernel NULL pointer dereference)`),
		typ: TypePageFault, end: modeMarker, oopsFollows: true,
		title: "BUG: unable to handle kernel NULL pointer dereference in %F", frames: gRIPTrace()},
	// The second half of the header is a separate printk, sometimes lost.
	{re: re(`^BUG: (?:unable to handle kernel|Unable to handle kernel)`), typ: TypePageFault, end: modeMarker, oopsFollows: true,
		title: "BUG: unable to handle kernel", corrupt: true},
	{re: re(`^BUG: (spinlock|rwlock) (lockup suspected|already unlocked|recursion|cpu recursion|bad magic|wrong owner|wrong CPU|trylock failure on UP)`),
		typ: TypeLockdep, end: modeTrace,
		title: "BUG: %1 %2 in %F", frames: gTrace(`spin_|_lock|_unlock`)},
	{re: re(`^(?:\[ )?BUG: .*still has locks held!`), typ: TypeLockdep, end: modeTrace, noStack: true,
		title: "BUG: still has locks held in %F", frames: gCapture(`\[<?(?:0x)?[0-9a-f]+>?\] +([A-Za-z0-9_]+)[.+]`)},
	{re: re(`^BUG: scheduling while atomic`), typ: TypeAtomicSleep, end: modeTrace, oopsFollows: true,
		title: "BUG: scheduling while atomic in %F", frames: gTrace(`schedule`)},
	{re: re(`^(?:\[ )?(BUG|WARNING): lock held when returning to user space`), typ: TypeLockdep, end: modeTrace, noStack: true,
		title:  "%1: lock held when returning to user space in %F",
		frames: &guilty{path: []step{{re: re(`leaving the kernel with locks still held`)}, {re: re(`at: (?:\[<?(?:0x)?[0-9a-f]+>?\] +)?([A-Za-z0-9_]+)[.+]`)}}}},
	{re: re(`^(?:\[ )?(BUG|WARNING): bad unlock balance detected!`), typ: TypeLockdep, end: modeTrace,
		title:  "%1: bad unlock balance in %F",
		frames: &guilty{path: []step{{re: re(`\[<?(?:0x)?[0-9a-f]+>?\] +([A-Za-z0-9_]+)[.+]`)}, callTrace, stack}}},
	{re: re(`^(?:\[ )?BUG: held lock freed!`), typ: TypeLockdep, end: modeTrace, noStack: true,
		title: "BUG: held lock freed in %F", frames: gCapture(`\[<?(?:0x)?[0-9a-f]+>?\] +([A-Za-z0-9_]+)[.+]`)},
	{re: re(`^(?:\[ )?WARNING: held lock freed!`), typ: TypeLockdep, end: modeTrace, noStack: true,
		title: "WARNING: held lock freed in %F", frames: gCapture(`at:(?: \[<?(?:0x)?[0-9a-f]+>?\])? +([A-Za-z0-9_]+)[.+]`)},
	{re: re(`^BUG: Dentry .* still in use \(\d+\) \[(unmount) of ([^\]]+)\]`), typ: TypeBug, end: modeMarker, noStack: true,
		title: "BUG: Dentry still in use in %1"},
	{re: re(`^BUG: workqueue lockup`), typ: TypeBug, end: modeTrace, noStack: true, title: "BUG: workqueue lockup"},
	{re: re(`^BUG: sleeping function called from invalid context`), typ: TypeAtomicSleep, end: modeTrace,
		title: "BUG: sleeping function called from invalid context in %F", frames: gTrace()},
	{re: re(`^BUG: using ([a-z_]+)\(\) in preemptible`), typ: TypeAtomicSleep, end: modeTrace,
		title:  "BUG: using %1() in preemptible code in %F",
		frames: gTrace(`dump_stack|preemption|preempt|debug_|processor_id|this_cpu`)},
	{re: re(`^BUG: workqueue leaked lock or atomic`), typ: TypeLockdep, end: modeTrace, noStack: true,
		title: "BUG: workqueue leaked lock or atomic in %F", frames: gCapture(`last function: ([A-Za-z0-9_]+)\s*$`)},
	{re: re(`^BUG: .*stack guard page was hit at`), typ: TypeBug, end: modeMarker, oopsFollows: true,
		title: "BUG: stack guard page was hit in %F", frames: gStall()},
	// Lockdep's headers: "[ BUG: Invalid wait context ]" (bracketed on
	// x86, like all of them before 4.x), INFO:/WARNING: forms.
	{re: re(`^(?:\[ )?BUG: Invalid wait context`), typ: TypeLockdep, end: modeTrace,
		title: "WARNING: locking bug in %F", frames: gTrace(`lock_sock|release_sock`)},
	{re: re(`^(?:\[ )?(?:INFO|WARNING): possible circular locking dependency detected`), typ: TypeLockdep, end: modeTrace,
		title: "possible deadlock in %F",
		frames: &guilty{path: []step{{re: re(`is trying to acquire`)}, lockAt, lockAt, stack},
			skip: re(`process_one_work|flush_workqueue|drain_workqueue|destroy_workqueue`)}},
	{re: re(`^(?:\[ )?(?:INFO|WARNING): possible recursive locking detected`), typ: TypeLockdep, end: modeTrace,
		title: "possible deadlock in %F", frames: gCaptureAfter(`is trying to acquire lock`, lockAtRe)},
	{re: re(`^(?:\[ )?(?:INFO|WARNING): possible irq lock inversion dependency detected`), typ: TypeLockdep, end: modeTrace,
		title: "possible deadlock in %F", frames: gCaptureAfter(`just changed the state of lock`, lockAtRe)},
	{re: re(`^(?:\[ )?(?:INFO|WARNING): ([A-Z]+)-safe -> ([A-Z]+)-unsafe lock order detected`), typ: TypeLockdep, end: modeTrace,
		title:  "possible deadlock in %F",
		frames: &guilty{path: []step{{re: re(`which became (?:.*) at:`)}, stack}, alt: []step{{re: re(`is trying to acquire`)}, lockAt}}},
	{re: re(`^(?:\[ )?(?:INFO|WARNING): inconsistent lock state`), typ: TypeLockdep, end: modeTrace,
		title: "inconsistent lock state in %F", frames: gTrace()},
	{re: re(`^(?:\[ )?(INFO|WARNING): suspicious RCU usage`), typ: TypeLockdep, end: modeTrace,
		title: "%1: suspicious RCU usage in %F", frames: gTrace(`rcu|kmem|slab`)},
	{re: re(`^(?:\[ )?WARNING: .*still has locks held!`), typ: TypeLockdep, end: modeTrace, noStack: true,
		title: "WARNING: still has locks held in %F", frames: gCapture(`at: ([A-Za-z0-9_]+)[.+]`)},
	{re: re(`^(?:\[ )?WARNING: Nested lock was not taken`), typ: TypeLockdep, end: modeTrace,
		title: "WARNING: nested lock was not taken in %F", frames: gWarning()},
	{re: re(`^(?:\[ )?WARNING: (bad contention detected!|chain_key collision)`), typ: TypeLockdep, end: modeTrace,
		title: "WARNING: %1 in %F", frames: gTrace()},
	{re: re(`^(?:\[ )?INFO: trying to register non-static key`), typ: TypeLockdep, end: modeTrace,
		title: "INFO: trying to register non-static key in %F", frames: gTrace(`stack|lock|IRQ`)},
	{re: re(`^BUG: MAX_LOCK(?:DEP)?_\w+ too low!|^BUG: MAX_STACK_TRACE_ENTRIES too low!`), typ: TypeLockdep, end: modeTrace, noStack: true,
		titleFn: lineTitle},
	// SLUB's own consistency checks ("BUG kmalloc-64 (Tainted: G B): ...").
	{re: re(`^BUG [\w.:-]+ \([^)]*\): Object already free`), typ: TypeSlab, end: modeTrace, noStack: true,
		title: "BUG: Object already free"},
	{re: re(`^BUG [\w.:-]+ \([^)]*\): ((?:Left |Right )?Redzone overwritten|Poison overwritten|Object padding overwritten|Padding overwritten|Freepointer corrupt|Invalid object pointer \S+|Wrong object count|Freechain corrupt)`),
		typ: TypeSlab, end: modeTrace, noStack: true, title: "BUG: %1"},
	// Seen alone, the allocation or free of an object whose report was lost.
	{re: re(`^INFO: (Freed|Allocated) in (.*)`), typ: TypeSlab, end: modeTrace, corrupt: true, title: "INFO: %1 in %2",
		partOf: []Type{TypeSlab, TypeKASAN}},
	// A generic "BUG: ..." is titled by its line.
	{re: re(`^BUG:\s*$`), typ: TypeBug, end: modeTrace, corrupt: true, title: "BUG: corrupted"},
	// syzkaller's own announcement of the kmemleak report that follows.
	{re: re(`^BUG: memory leak\s*$`), notReport: true},
	{re: re(`^BUG: (.+)`), typ: TypeBug, end: modeTrace, oopsFollows: true, noStack: true, titleFn: lineTitle},
	kindWarning,
	kindWarning616,
	{re: re(`^WARNING: kernel stack regs at [0-9a-f]+ in \S* has bad '([^']+)' value`), typ: TypeWarning, end: modeLine, noStack: true,
		title: "WARNING: kernel stack regs has bad '%1' value"},
	{re: re(`^WARNING: kernel stack frame pointer at [0-9a-f]+ in \S* has bad value`), typ: TypeWarning, end: modeLine, noStack: true,
		title: "WARNING: kernel stack frame pointer has bad value"},
	{re: re(`^WARNING: kernel stack (?:regs .* has bad 'bp' value|frame pointer .* has bad value)`), typ: TypeWarning, end: modeLine, noStack: true,
		title: "WARNING: kernel stack regs has bad value"},
	{re: re(`^WARNING:\s*$`), typ: TypeWarning, end: modeMarker, corrupt: true, title: "WARNING: corrupted"},
	kindLeak,
	kindLeakSummary,
	kindKernelBug,
	{re: re(`^Kernel BUG (.*)`), typ: TypeKernelBug, end: modeMarker, oopsFollows: true, bug: true, noStack: true, title: "kernel BUG %1"},
	kindOops,
	{re: re(`^stack segment: [0-9a-f]{4}`), typ: TypeOops, end: modeMarker, oops: true,
		title: "stack segment fault in %F", frames: gRIPTrace()},
	kindPanic,
	{re: re(`^UBSAN: Undefined behaviour in`), typ: TypeUBSAN, end: modeMarker,
		title: "UBSAN: undefined-behaviour in %F", frames: gTrace(`ubsan|overflow`)},
	{re: re(`^UBSAN: (.+?) in (\S+?)(?::\d+)*\s*$`), typ: TypeUBSAN, end: modeMarker,
		title: "UBSAN: %1 in %F", frames: gTrace(`ubsan|overflow`)},
	kindRCU,
	{re: re(`^INFO: task .{0,100}? blocked (?:in I/O wait )?for more than \d+ seconds`), typ: TypeHungTask, end: modeTrace,
		title: "INFO: task hung in %F", frames: &guilty{path: []step{callTrace, stack}, pick: hungFrame}},
	{re: re(`^INFO: task .{0,100}? can't die for more than .* seconds`), typ: TypeHungTask, end: modeTrace,
		title: "INFO: task can't die in %F", frames: gTrace(`schedule`)},
	// A task name with a newline in it breaks the header in two.
	{re: re(`^INFO: task .{0,100}$`), typ: TypeHungTask, end: modeTrace,
		confirm: re(`blocked (?:in I/O wait )?for more than \d+ seconds`), confirmIn: 2,
		title: "INFO: task hung in %F", frames: &guilty{path: []step{callTrace, stack}, pick: hungFrame}},
	{re: re(`^INFO:\s*$`), typ: TypeBug, end: modeTrace, corrupt: true, title: "INFO: corrupted"},
	{re: re(`^(h?list_(?:add|del)\w*) corruption[.,]`), typ: TypeListCorruption, end: modeMarker, bugFollows: true, oopsFollows: true,
		title: "BUG: corrupted list in %F", frames: gTrace()},
	kindVMPage,
	{re: re(`^vma [0-9a-f]+ start [0-9a-f]+ end [0-9a-f]+ mm [0-9a-f]+`), typ: TypeVMBug, end: modeMarker,
		bugFollows: true, oopsFollows: true, confirm: bugOrWarnRe, confirmIn: 40, titleFn: vmTitle("VM_BUG_ON_VMA")},
	{re: re(`^mm [0-9a-f]+ task_size \d+`), typ: TypeVMBug, end: modeMarker,
		bugFollows: true, oopsFollows: true, confirm: bugOrWarnRe, confirmIn: 40, titleFn: vmTitle("VM_BUG_ON_MM")},
	{re: re(`^PANIC: double fault`), typ: TypeBug, end: modeMarker, oopsFollows: true,
		title: "PANIC: double fault in %F", frames: &guilty{path: []step{rip}}},
	{re: re(`^unregister_netdevice: waiting for (?:.*) to become free`), typ: TypeBug, end: modeLine, inline: true, noStack: true,
		title: "unregister_netdevice: waiting for DEV to become free"},
	{re: re(`^VFS: Close: file count is 0`), typ: TypeBug, end: modeLine, noStack: true,
		title: "VFS: Close: file count is zero (use-after-free)"},
	{re: re(`^VFS: Busy inodes after unmount`), typ: TypeBug, end: modeLine, noStack: true,
		title: "VFS: Busy inodes after unmount (use-after-free)"},
	{re: re(`^rust_kernel: panicked at`), typ: TypeRust, end: modeTrace, titleFn: rustTitle, bugFollows: true, oopsFollows: true,
		frames: gTrace(`rust_begin_unwind`)},
	{re: re(`^trusty: panic \(.*?\):(?: DEBUG)? ASSERT FAILED at \(.*?\): (.+)`), typ: TypePanic, end: modeMarker, noStack: true,
		title: "trusty: ASSERT FAILED: %1"},
	{re: re(`^trusty: panic.* ASSERT FAILED.*: *(.*)`), typ: TypePanic, end: modeMarker, corrupt: true,
		title: "trusty: ASSERT FAILED: %1"},
	{re: re(`^trusty: panic \(.*?\): (.+)`), typ: TypePanic, end: modeMarker, noStack: true, title: "trusty: panic: %1"},
}

// warningFlavours are the WARNINGs titled by what warned rather than
// where: the kernel's checkers of objects, copies, refcounts, locks.
var warningFlavours = []flavour{
	{re: re(`lib/debugobjects\.c.* (?:debug_print|debug_check|at)`), title: "WARNING: ODEBUG bug in %F",
		frames: gWarning(`debug_|rcu|hrtimer_|timer_|work_|percpu_|vunmap|vfree|__free_|debug_check|kobject_`)},
	{re: re(`mm/usercopy\.c.* (?:usercopy_warn|at)`), title: "WARNING: bad usercopy in %F", frames: gWarning(`usercopy|__check`)},
	{re: re(`lib/kobject\.c.* (?:kobject_|at)`), title: "WARNING: kobject bug in %F", frames: gWarning(`kobject_`)},
	{re: re(`fs/proc/generic\.c.* (?:proc_register|at)`), title: "WARNING: proc registration bug in %F", frames: gWarning(`proc_`)},
	{re: re(`lib/refcount\.c.* (?:refcount_|at)`), typ: TypeRefcount, title: "WARNING: refcount bug in %F", frames: gWarning(`refcount|kobject_`)},
	{re: re(`kernel/locking/lockdep\.c.*lock_`), typ: TypeLockdep, title: "WARNING: locking bug in %F", frames: gWarning(`lock_sock|release_sock`)},
	{re: re(`kernel/locking/lockdep\.c`), typ: TypeLockdep, title: "WARNING in %F", frames: gWarning()},
	{re: re(`mm/.*\.c.* k?.?malloc`), title: "WARNING: kmalloc bug in %F", frames: gWarning(`kmalloc|krealloc|slab|kmem`)},
	{re: re(`mm/vmalloc\.c.*__vmalloc_node`), title: "WARNING: zero-size vmalloc in %F", frames: gWarning()},
	{re: re(`.* usb_submit_urb`), title: "WARNING in %F/usb_submit_urb",
		frames: gWarning(`usb_submit_urb|usb_start_wait_urb|usb_bulk_msg|usb_interrupt_msg|usb_control_msg`)},
	{re: re(`mm/page_table_check\.c`), typ: TypePageTableCheck, title: "WARNING in %F", frames: gWarning()},
	{re: re(`lib/list_debug\.c`), typ: TypeListCorruption, title: "WARNING in %F", frames: gWarning()},
}

// badPageSkip: the page allocator and page cache frames of a bad page's
// allocation stack.
var badPageSkip = re(`(?:free|put|get|update|release)_page|free_unref|^_*folio|truncate_inode_pages|page_frag_free|alloc|vmap|page_owner`)

// spinLeaf: leaf helpers a spinning CPU is caught in (clock reads, pauses).
const spinLeaf = `^(?:ktime_get\w*|read_tsc|rdtsc\w*|native_sched_clock|sched_clock\w*|local_clock\w*|cpu_relax|rep_nop|native_pause|delay_tsc|delay_halt\w*|__const_udelay|__udelay|__delay|native_safe_halt)$`

// bugOrWarnRe: the BUG or WARNING a vma or mm dump is printed for.
var bugOrWarnRe = re(`^(?:kernel BUG at |WARNING: )`)

// byFirst lists, for each first byte of a message, the kinds whose header
// can begin with it, in table order: a message is matched only against
// the few patterns it could open.
var byFirst = func() (idx [256][]*kind) {
	for _, k := range kinds {
		set, any := firstBytes(k.re)
		for b := range idx {
			if any || set[b] {
				idx[b] = append(idx[b], k)
			}
		}
	}
	return idx
}()

// firstBytes is the set of bytes a match of re can begin with (any: it
// cannot tell, or a match may be empty).
func firstBytes(r *regexp.Regexp) (set [256]bool, any bool) {
	t, err := syntax.Parse(r.String(), syntax.Perl)
	if err != nil {
		return set, true
	}
	if nullable := first(t.Simplify(), &set); nullable {
		return set, true
	}
	return set, false
}

// first adds to set the bytes a match of t can begin with and reports
// whether t can match the empty string; a byte it cannot name (a
// non-ASCII rune, any character) makes every byte possible.
func first(t *syntax.Regexp, set *[256]bool) (nullable bool) {
	all := func() {
		for b := range set {
			set[b] = true
		}
	}
	addRune := func(r rune, fold bool) {
		if r > 0x7f {
			all()
			return
		}
		set[r] = true
		if fold {
			set[strings.ToUpper(string(r))[0]] = true
			set[strings.ToLower(string(r))[0]] = true
		}
	}
	switch t.Op {
	case syntax.OpEmptyMatch, syntax.OpBeginLine, syntax.OpEndLine, syntax.OpBeginText, syntax.OpEndText,
		syntax.OpWordBoundary, syntax.OpNoWordBoundary:
		return true
	case syntax.OpLiteral:
		if len(t.Rune) == 0 {
			return true
		}
		addRune(t.Rune[0], t.Flags&syntax.FoldCase != 0)
		return false
	case syntax.OpCharClass:
		for i := 0; i+1 < len(t.Rune); i += 2 {
			if t.Rune[i+1] > 0x7f {
				all()
				return false
			}
			for r := t.Rune[i]; r <= t.Rune[i+1]; r++ {
				addRune(r, t.Flags&syntax.FoldCase != 0)
			}
		}
		return false
	case syntax.OpCapture:
		return first(t.Sub[0], set)
	case syntax.OpConcat:
		for _, sub := range t.Sub {
			if !first(sub, set) {
				return false
			}
		}
		return true
	case syntax.OpAlternate:
		for _, sub := range t.Sub {
			if first(sub, set) {
				nullable = true
			}
		}
		return nullable
	case syntax.OpQuest, syntax.OpStar:
		first(t.Sub[0], set)
		return true
	case syntax.OpPlus:
		return first(t.Sub[0], set)
	case syntax.OpRepeat:
		return first(t.Sub[0], set) || t.Min == 0
	}
	all()
	return true
}

// classify returns the kind of a message and the pattern's submatches,
// nil when the message opens no report.
func classify(text string) (*kind, []string) {
	text = strings.TrimLeft(text, " \t")
	if text == "" {
		return nil, nil
	}
	for _, k := range byFirst[text[0]] {
		if k.need != "" && !strings.Contains(text, k.need) {
			continue
		}
		if m := k.re.FindStringSubmatch(text); m != nil {
			if k.notReport {
				return nil, nil
			}
			return k, m
		}
	}
	return nil, nil
}
