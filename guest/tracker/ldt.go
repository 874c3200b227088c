package tracker

import (
	"errors"
	"fmt"
	"io/fs"
	"sync/atomic"

	"ldtlab/guest/ldt"
)

// ldtTracker is /dev/ldt in normal ("ldt") or negative-control ("naive")
// mode. It holds the target by address space, so it works for any pid the
// caller may ptrace-attach to.
type ldtTracker struct {
	name  string
	f     *ldt.File
	flags ldt.Flags
	last  atomic.Int64 // regions of the last collection: the next one's capacity
}

func openLDT(name string, pid int, start, end uintptr) (Tracker, error) {
	f, err := ldt.Open()
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("tracker %s: %w: %w", name, ErrUnsupported, err)
	}
	if err != nil {
		return nil, fmt.Errorf("tracker %s: %w", name, err)
	}
	t := &ldtTracker{name: name, f: f}
	if name == "naive" {
		t.flags = ldt.Naive
	}
	if err := f.Attach(pid); err != nil {
		f.Close()
		return nil, fmt.Errorf("tracker %s: %w", name, err)
	}
	// Everything written before Open is history: drop it so the first
	// Collect reports only what happens afterwards.
	if _, err := f.CollectAll(start, end, t.flags|ldt.Clear); err != nil {
		f.Close()
		return nil, fmt.Errorf("tracker %s: initial clear: %w", name, err)
	}
	return t, nil
}

func (t *ldtTracker) Name() string { return t.name }

func (t *ldtTracker) Collect(start, end uintptr, clear bool) ([]Region, error) {
	if err := checkRange(start, end); err != nil {
		return nil, fmt.Errorf("tracker %s: %w", t.name, err)
	}
	flags := t.flags
	if clear {
		flags |= ldt.Clear
	}
	// Straight into the caller's type, in a slice the size of the last
	// result: a collection of many small regions is otherwise dominated
	// by growing and copying slices in user space.
	out := make([]Region, 0, t.last.Load())
	err := t.f.CollectEach(start, end, flags, func(rs []ldt.Region) {
		for _, r := range rs {
			out = appendMerged(out, Region{uintptr(r.Start), uintptr(r.End)})
		}
	})
	if err != nil {
		return nil, fmt.Errorf("tracker %s: %w", t.name, err)
	}
	t.last.Store(int64(len(out)))
	return out, nil
}

// Calls counts the ioctls on the tracker's /dev/ldt file.
func (t *ldtTracker) Calls() int64 { return t.f.Calls() }

// CallNS is the time spent inside those ioctls.
func (t *ldtTracker) CallNS() int64 { return t.f.CallNS() }

// Entries are the kernel's counts of the entries its collections decided
// on and rewrote.
func (t *ldtTracker) Entries() (visited, changed int64, ok bool) { return t.f.Entries() }

func (t *ldtTracker) Close() error { return t.f.Close() }
