// Package tracker puts the dirty-page trackers the lab compares behind one
// small interface, so checks and benchmarks can swap them by name:
//
//	ldt           /dev/ldt, LDT_CLEAR on clear
//	naive         /dev/ldt with LDT_NAIVE: the negative control
//	softdirty     /proc/PID/clear_refs + pagemap bit 55
//	pagemap-scan  PAGEMAP_SCAN over userfaultfd async write-protection (self only)
//
// Differences the checks must allow for: softdirty's clear is process-wide
// and not atomic with its read (quiesce the writer around collections) and
// it over-reports by design; pagemap-scan only tracks the calling process
// over the range given to Open; naive misses pages on purpose.
package tracker

import (
	"errors"
	"fmt"
	"os"
	"slices"
)

// PageSize is the base page size; the lab is x86-64 only.
const PageSize = 4096

// Region is a run of pages, page aligned, End exclusive.
type Region struct{ Start, End uintptr }

// Pages is the number of pages in r.
func (r Region) Pages() int { return int((r.End - r.Start) / PageSize) }

func (r Region) String() string { return fmt.Sprintf("[%#x,%#x)", r.Start, r.End) }

// Tracker reports written pages of one address space.
type Tracker interface {
	Name() string
	// Collect reports the pages of [start,end) written since the last
	// Collect with clear=true (or since Open). start and end must be
	// page aligned and inside the range given to Open.
	Collect(start, end uintptr, clear bool) ([]Region, error)
	Close() error
}

// CallCounter is implemented by the trackers of Names(): Calls is the
// number of system calls their collections (and Open's initial clear) have
// issued so far — LDT_IOC_COLLECT for ldt and naive, PAGEMAP_SCAN for
// pagemap-scan, pagemap preads and clear_refs writes for softdirty.
// Benchmarks report it per collection.
type CallCounter interface{ Calls() int64 }

// CallTimer is implemented by the trackers of Names(): CallNS is the wall
// time spent inside the system calls Calls counts, so that a benchmark can
// tell the kernel's share of a collection from the user-space handling of
// what it returned.
type CallTimer interface{ CallNS() int64 }

// EntryCounter is implemented by the trackers whose kernel counts the page
// table entries its collections decided on and rewrote (ldt and naive on a
// series with 0026; ok is false before it): work that does not depend on
// how fast the machine is.
type EntryCounter interface {
	Entries() (visited, changed int64, ok bool)
}

// ErrUnsupported is wrapped by Open when the running kernel or the
// tracker's mechanics cannot track the request (no /dev/ldt, no soft-dirty,
// PAGEMAP_SCAN for another process...). Tests skip on it; checks report it.
var ErrUnsupported = errors.New("tracker not supported here")

type opener func(name string, pid int, start, end uintptr) (Tracker, error)

var trackers = map[string]opener{
	"ldt":          openLDT,
	"naive":        openLDT,
	"softdirty":    openSoftDirty,
	"pagemap-scan": openPagemapScan,
}

// Names lists the trackers in a stable order, the one under test first.
func Names() []string { return []string{"ldt", "naive", "softdirty", "pagemap-scan"} }

// Open starts tracking [start,end) of process pid (0 = the caller): the
// first Collect reports writes made after Open returns. For softdirty and
// pagemap-scan the range must be mapped already.
func Open(name string, pid int, start, end uintptr) (Tracker, error) {
	o, ok := trackers[name]
	if !ok {
		return nil, fmt.Errorf("tracker: unknown tracker %q (have %v)", name, Names())
	}
	if os.Getpagesize() != PageSize {
		return nil, fmt.Errorf("tracker %s: %w: page size %d, want %d", name, ErrUnsupported, os.Getpagesize(), PageSize)
	}
	if err := checkRange(start, end); err != nil {
		return nil, fmt.Errorf("tracker %s: %w", name, err)
	}
	if pid < 0 {
		return nil, fmt.Errorf("tracker %s: bad pid %d", name, pid)
	}
	return o(name, pid, start, end)
}

func checkRange(start, end uintptr) error {
	if start%PageSize != 0 || end%PageSize != 0 || end < start {
		return fmt.Errorf("bad range [%#x,%#x): must be page aligned and not inverted", start, end)
	}
	return nil
}

// Merge sorts regions and joins overlapping or adjacent ones.
func Merge(rs []Region) []Region {
	if len(rs) == 0 {
		return nil
	}
	s := slices.Clone(rs)
	slices.SortFunc(s, func(a, b Region) int {
		switch {
		case a.Start < b.Start:
			return -1
		case a.Start > b.Start:
			return 1
		}
		return 0
	})
	out := s[:1]
	for _, r := range s[1:] {
		last := &out[len(out)-1]
		if r.Start <= last.End {
			last.End = max(last.End, r.End)
			continue
		}
		out = append(out, r)
	}
	return out
}

// Pages lists the page addresses covered by rs, in region order.
func Pages(rs []Region) []uintptr {
	var out []uintptr
	for _, r := range rs {
		for p := r.Start &^ (PageSize - 1); p < r.End; p += PageSize {
			out = append(out, p)
		}
	}
	return out
}

// Set is a set of page addresses, for comparing what a tracker reported
// with what the workload wrote.
type Set map[uintptr]struct{}

// NewSet returns the pages of rs.
func NewSet(rs ...Region) Set {
	s := Set{}
	s.AddRegions(rs...)
	return s
}

// Add adds page addresses (rounded down to their page).
func (s Set) Add(pages ...uintptr) {
	for _, p := range pages {
		s[p&^(PageSize-1)] = struct{}{}
	}
}

// AddRegions adds every page of rs.
func (s Set) AddRegions(rs ...Region) {
	for _, r := range rs {
		for p := r.Start &^ (PageSize - 1); p < r.End; p += PageSize {
			s[p] = struct{}{}
		}
	}
}

// Has reports whether the page containing addr is in s.
func (s Set) Has(addr uintptr) bool {
	_, ok := s[addr&^(PageSize-1)]
	return ok
}

// Len is the number of pages.
func (s Set) Len() int { return len(s) }

// Minus returns the pages of s that are not in o.
func (s Set) Minus(o Set) Set {
	out := Set{}
	for p := range s {
		if _, ok := o[p]; !ok {
			out[p] = struct{}{}
		}
	}
	return out
}

// Equal reports whether s and o hold the same pages.
func (s Set) Equal(o Set) bool {
	if len(s) != len(o) {
		return false
	}
	for p := range s {
		if _, ok := o[p]; !ok {
			return false
		}
	}
	return true
}

// Sorted returns the pages in ascending order.
func (s Set) Sorted() []uintptr {
	out := make([]uintptr, 0, len(s))
	for p := range s {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

// Regions returns s as merged regions.
func (s Set) Regions() []Region {
	var out []Region
	for _, p := range s.Sorted() {
		out = appendMerged(out, Region{p, p + PageSize})
	}
	return out
}

// appendMerged appends r to out, extending out's last region instead when
// r starts where it ends.
func appendMerged(out []Region, r Region) []Region {
	if k := len(out); k > 0 && out[k-1].End == r.Start {
		out[k-1].End = r.End
		return out
	}
	return append(out, r)
}

// Diff compares reported pages with ground truth: missed were written but
// not reported (a failure for every tracker but naive), extra were
// reported but not written (counted, never failed).
func Diff(reported, truth Set) (missed, extra Set) {
	return truth.Minus(reported), reported.Minus(truth)
}
