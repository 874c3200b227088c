// Package report finds kernel failure reports (WARNING, BUG, oops, panic,
// sanitizer and watchdog reports, ...) in kernel console output and gives
// each a normalized title, so that the same bug gets the same title on
// every run regardless of addresses, PIDs, CPUs and timestamps.
package report

import "sort"

// Type classifies a report by the kernel facility that produced it.
type Type string

// Report types. Callers may compare against these; new ones may be added.
const (
	TypeWarning        Type = "warning"
	TypeBug            Type = "bug" // "BUG: ..." lines without a more specific type
	TypeKernelBug      Type = "kernel-bug"
	TypeOops           Type = "oops"
	TypeGPF            Type = "gpf"
	TypePanic          Type = "panic"
	TypeKASAN          Type = "kasan"
	TypeUBSAN          Type = "ubsan"
	TypeRCUStall       Type = "rcu-stall"
	TypeHungTask       Type = "hung-task"
	TypeSoftLockup     Type = "soft-lockup"
	TypeHardLockup     Type = "hard-lockup"
	TypeBadPageState   Type = "bad-page-state"
	TypeBadPageMap     Type = "bad-page-map"
	TypeBadRSS         Type = "bad-rss"
	TypePageTableCheck Type = "page-table-check"
	TypeListCorruption Type = "list-corruption"
	TypeVMBug          Type = "vm-bug"
	TypeLockdep        Type = "lockdep"
	TypeKFENCE         Type = "kfence"
	TypeKmemleak       Type = "kmemleak"
	TypeRefcount       Type = "refcount"
	TypeAtomicSleep    Type = "atomic-sleep" // sleeping or scheduling in atomic context
	TypePageFault      Type = "page-fault"   // a kernel access the page fault handler could not fix
	TypeKMSAN          Type = "kmsan"
	TypeKCSAN          Type = "kcsan"
	TypeSlab           Type = "slab-debug" // SLUB's own checks of its objects (CONFIG_SLUB_DEBUG)
	TypeRust           Type = "rust-panic"
)

// Report is one kernel failure found in a log.
type Report struct {
	Type  Type
	Title string // normalized: same bug → same title
	// Start and End are byte offsets of the report's span in the input
	// (End exclusive). Lines of other callers may lie inside the span.
	Start, End int
	// Text is the span with the lines of other printk callers removed
	// (when CONFIG_PRINTK_CALLER tags make that possible) and CRs dropped.
	Text string
	// Truncated is set when the log ended before the report's end marker.
	Truncated bool
	// Corrupted is set when the report cannot be trusted to name the
	// right code: its stack is missing or unreliable, or its lines are
	// mixed with another report's. Its title is then less stable.
	Corrupted bool
}

// String returns "TYPE: TITLE".
func (r Report) String() string { return string(r.Type) + ": " + r.Title }

// Parse returns the reports found in log, in order of appearance.
func Parse(log []byte) []Report {
	reps, _ := parse(log)
	return reps
}

// parse also returns how many lines the parser visited.
func parse(log []byte) ([]Report, int) {
	p := newParser(log)
	var out []Report
	leaks := false // unreferenced objects were reported since the last kmemleak summary
	for i := range p.lines {
		if p.consumed[i] || !p.candidate(i) {
			continue
		}
		k, m := p.classify(i)
		switch k {
		case nil:
			continue
		case kindLeakSummary:
			// The summary only counts what kmemleak.verbose=1 already
			// printed; on its own it is the one sign of a leak.
			if leaks {
				leaks = false
				continue
			}
		case kindLeak:
			leaks = true
		}
		if r, ok := p.build(i, k, m); ok {
			out = append(out, r)
		}
	}
	// Backtracking to a "cut here" line and interleaved callers can make
	// a later header start earlier than an already found report.
	sort.SliceStable(out, func(a, b int) bool { return out[a].Start < out[b].Start })
	return out, p.steps + len(p.lines)
}
