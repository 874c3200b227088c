package report

import (
	"fmt"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

// label is one kind of report a real console log holds, n times. The
// labels below come from the trigger that produced each log (kmod/labtest
// README) and from counting the kernel's own header lines by hand, never
// from the parser's output: the .want files say what the parser prints,
// these say what it should find. An empty title accepts any title of the
// type (boot stalls: the title is wherever the CPU was).
//
// Titles are syzkaller's (see syzkaller_test.go), worked out by hand from
// each log with its rules: the guilty frame is the first stack frame whose
// name holds none of the words of its skip list. The labtest functions
// are named after what they break (labtest_kasan_oob, labtest_lockdep,
// labtest_refcount, ...), so those words drop them and the debugfs write
// handler that called them names the report; the bug class still tells
// them apart.
type label struct {
	typ   Type
	title string
	n     int
}

// realLogs are consoles of real x86 kernels: our own 6.12 guests (debug,
// debug-vanilla and sanitize configs), captured by TestCaptureGoldenLogs /
// TestCaptureSanitizeGoldenLogs, the sanitize kernel's boot stalls under
// TCG, and a soak round's page_table_check warning. synthetic-*.log are
// not here: they were written for the parser, not printed by a kernel.
var realLogs = []struct {
	file string
	want []label
}{
	{"guest-warn.log", []label{{TypeWarning, "WARNING in labtest_warn", 1}}},
	{"guest-bug.log", []label{{TypeKernelBug, "kernel BUG in labtest_bug", 1}}},
	{"guest-several.log", []label{{TypeWarning, "WARNING in labtest_warn", 2}, {TypeKernelBug, "kernel BUG in labtest_bug", 1}}},
	{"guest-list-corruption.log", []label{{TypeListCorruption, "BUG: corrupted list in labtest_list_corrupt", 1}}},
	{"guest-hung-task.log", []label{{TypeHungTask, "INFO: task hung in labtest_hung_fn", 7}}},
	{"guest-soft-lockup.log", []label{{TypeSoftLockup, "BUG: soft lockup in labtest_spin_fn", 2}}},
	{"guest-vm-bug.log", []label{{TypeVMBug, "VM_BUG_ON_PAGE(page_ref_count(page) == NUM) in labtest_vmbug", 1}}},
	{"guest-module-panic.log", []label{{TypePanic, "kernel panic: labtest: deliberate panic via debugfs trigger", 1}}},
	{"guest-sysrq-panic.log", []label{{TypePanic, "kernel panic: sysrq triggered crash", 1}}},
	{"guest-page-table-check.log", []label{{TypePageTableCheck, "WARNING in __page_table_check_ptes_set", 1}}},
	{"guest-sanitize-boot-hang.log", []label{{TypeBug, "BUG: workqueue lockup", 1}, {TypeRCUStall, "", 1}}},
	{"guest-sanitize-boot-stall-1.log", []label{{TypeSoftLockup, "", 4}, {TypeRCUStall, "", 1}}},
	{"guest-sanitize-boot-stall-2.log", []label{{TypeSoftLockup, "", 4}, {TypeRCUStall, "", 1}}},
	{"guest-sanitize-clean.log", nil},
	// Every catalogue scenario under ldt and 20 s of stress: swap, THP,
	// migration, KSM and the sanitizers' chatter, no bug.
	{"guest-busy-clean-debug.log", nil},
	{"guest-busy-clean-sanitize.log", nil},
	{"guest-sanitize-kasan-oob.log", []label{{TypeKASAN, "KASAN: slab-out-of-bounds Read in labtest_write", 1}}},
	{"guest-sanitize-kasan-uaf.log", []label{{TypeKASAN, "KASAN: slab-use-after-free Read in labtest_write", 1}}},
	{"guest-sanitize-kfence.log", []label{{TypeKFENCE, "KFENCE: use-after-free read in labtest_kfence", 1}}},
	{"guest-sanitize-ubsan-shift.log", []label{{TypeUBSAN, "UBSAN: shift-out-of-bounds in labtest_write", 1}}},
	{"guest-sanitize-lockdep.log", []label{{TypeLockdep, "possible deadlock in labtest_write", 1}}},
	{"guest-sanitize-atomic-sleep.log", []label{{TypeAtomicSleep, "BUG: sleeping function called from invalid context in labtest_atomic_sleep", 1}}},
	{"guest-sanitize-refcount.log", []label{{TypeRefcount, "WARNING: refcount bug in labtest_write", 1}}},
	{"guest-sanitize-kmemleak.log", []label{{TypeKmemleak, "memory leak in labtest_leak", 1}}},
	{"guest-sanitize-kasan-double-free.log", []label{{TypeKASAN, "KASAN: invalid-free in labtest_write", 1}}},
	{"guest-sanitize-kasan-global.log", []label{{TypeKASAN, "KASAN: global-out-of-bounds Read in labtest_write", 1}}},
	{"guest-sanitize-kasan-stack.log", []label{{TypeKASAN, "KASAN: stack-out-of-bounds Read in labtest_write", 1}}},
	{"guest-sanitize-ubsan-bounds.log", []label{{TypeUBSAN, "UBSAN: array-index-out-of-bounds in labtest_write", 1}}},
	{"guest-sanitize-lockdep-inconsistent.log", []label{{TypeLockdep, "inconsistent lock state in labtest_timer_fn", 1}}},
	{"guest-sanitize-lockdep-rcu.log", []label{{TypeLockdep, "WARNING: suspicious RCU usage in labtest_write", 1}}},
	{"guest-sanitize-lockdep-wait-context.log", []label{{TypeLockdep, "WARNING: locking bug in labtest_wait_context", 1}}},
	{"guest-sanitize-lockdep-unlock-balance.log", []label{{TypeLockdep, "WARNING: bad unlock balance in labtest_unlock_balance", 1}}},
	{"guest-sanitize-rcu-stall.log", []label{{TypeRCUStall, "INFO: rcu detected stall in labtest_rcu_spin_fn", 1}}},
	// The CPU that IPIs the one with interrupts off spins as well.
	{"guest-sanitize-hard-lockup.log", []label{{TypeHardLockup, "Watchdog detected hard LOCKUP in labtest_irq_spin_fn", 1}, {TypeSoftLockup, "BUG: soft lockup in smp_call_function", 1}}},
	{"guest-sanitize-divide-error.log", []label{{TypeOops, "divide error in labtest_divide", 1}}},
	{"guest-sanitize-gpf.log", []label{{TypeGPF, "general protection fault in labtest_gpf", 1}}},
	{"guest-sanitize-null-deref.log", []label{{TypePageFault, "BUG: unable to handle kernel NULL pointer dereference in labtest_null", 1}}},
}

// TestDetectionOnRealLogs measures the parser against the labels: at
// least 98% of the labelled reports detected with their type, every
// detected one titled as labelled, and nothing reported that is not
// labelled (clean boots give nothing). The per-type table is logged
// (go test -v -run TestDetectionOnRealLogs); docs/benchmarks.md quotes it.
func TestDetectionOnRealLogs(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func([]byte) []byte
	}{
		{"as printed", func(b []byte) []byte { return b }},
		// The same consoles as a kernel without CONFIG_PRINTK_CALLER
		// prints them: "[    1.234567] msg", no "[T123]" to sort
		// interleaved callers by.
		{"without caller ids", func(b []byte) []byte { return callerTagRe.ReplaceAll(b, []byte("$1")) }},
	} {
		t.Run(tc.name, func(t *testing.T) { detection(t, tc.edit) })
	}
}

var callerTagRe = regexp.MustCompile(`(?m)^(\[\s*\d+\.\d+\])\[\s*[TC]\d+\]`)

func detection(t *testing.T, edit func([]byte) []byte) {
	type tally struct{ logs, want, found, titled int }
	byType := map[Type]*tally{}
	var want, found, titled, extra int
	for _, l := range realLogs {
		reps := Parse(edit(read(t, l.file)))
		used := make([]bool, len(reps))
		seen := map[Type]bool{}
		for _, lb := range l.want {
			tl := byType[lb.typ]
			if tl == nil {
				tl = &tally{}
				byType[lb.typ] = tl
			}
			if !seen[lb.typ] {
				tl.logs++
				seen[lb.typ] = true
			}
			tl.want += lb.n
			want += lb.n
			// Exact titles first, so that a wrong title is not hidden by
			// a right one of another label.
			for pass := 0; pass < 2; pass++ {
				for i, r := range reps {
					if used[i] || r.Type != lb.typ || lb.n == 0 {
						continue
					}
					exact := lb.title == "" || r.Title == lb.title
					if pass == 0 && !exact {
						continue
					}
					used[i] = true
					lb.n--
					tl.found++
					found++
					if exact {
						tl.titled++
						titled++
					} else {
						t.Errorf("%s: %s titled %q, want %q", l.file, r.Type, r.Title, lb.title)
					}
				}
			}
			if lb.n > 0 {
				t.Errorf("%s: %d %s report(s) %q not detected", l.file, lb.n, lb.typ, lb.title)
			}
		}
		for i, r := range reps {
			if !used[i] {
				extra++
				t.Errorf("%s: unlabelled report %s", l.file, r)
			}
		}
	}
	types := make([]string, 0, len(byType))
	for typ := range byType {
		types = append(types, string(typ))
	}
	sort.Strings(types)
	var b strings.Builder
	fmt.Fprintf(&b, "| type | logs | reports | detected | titled |\n|---|---|---|---|---|\n")
	for _, typ := range types {
		tl := byType[Type(typ)]
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %d |\n", typ, tl.logs, tl.want, tl.found, tl.titled)
	}
	fmt.Fprintf(&b, "| all | %d | %d | %d (%.1f%%) | %d |\n", len(realLogs), want, found, 100*float64(found)/float64(want), titled)
	t.Logf("detection on %d real logs (%d types), %d unlabelled reports:\n%s", len(realLogs), len(byType), extra, b.String())
	assert.GreaterOrEqual(t, float64(found), 0.98*float64(want), "detected %d of %d labelled reports", found, want)
	assert.Zero(t, extra, "reports on logs (or parts of logs) without that crash")
}
