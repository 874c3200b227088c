package fuzz

import (
	"fmt"
	"time"
)

// detach closes the tracker under test, as a checkpointer that stops
// tracking does; until attach, collections do nothing and whatever
// happens (a pin taken, a mapping replaced, pages zapped) happens to an
// untracked process.
func (e *executor) detach() {
	if e.under == nil {
		return
	}
	if e.child != nil {
		// The forked child holds the tracker's file too (a raw fork copies
		// the descriptors): closing ours would not detach, and the attach
		// would find the address space still tracked (EBUSY).
		e.failed(OpDetach, fmt.Errorf("a forked child holds the tracker open"))
		return
	}
	e.under.close()
	e.under = nil
	e.done(OpDetach)
}

// attach opens a new tracker, as a checkpointer that starts tracking a
// running process does: it collects the history away and copies every
// page (the shadow becomes memory), so nothing written before is owed.
// Pins and mappings made while detached stay: what they write from now
// on is owed to the new tracker.
func (e *executor) attach() error {
	if e.under != nil {
		return nil
	}
	t0 := time.Now()
	u, err := openUnder(e.cfg.Tracker, e.regions)
	if err != nil {
		return fmt.Errorf("attach: %w", err)
	}
	e.under = u
	if _, err := u.collect(e.regions, true); err != nil {
		return fmt.Errorf("attach: first collection: %w", err)
	}
	for _, r := range e.regions {
		if r.spec.Ring() {
			continue
		}
		if err := e.readAll(r, r.shadow); err != nil {
			return fmt.Errorf("attach: copying r%d: %w", r.idx, err)
		}
		for q := range r.st {
			r.st[q].reset()
		}
	}
	e.res.TimeMS["attach"] += time.Since(t0).Milliseconds()
	e.done(OpAttach)
	return nil
}
