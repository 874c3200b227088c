package fuzz

import (
	"errors"
	"fmt"

	"ldtlab/guest/tracker"
)

// underTest is the tracker under test over the sequence's regions. ldt,
// naive and softdirty track the whole address space (one instance);
// pagemap-scan registers userfaultfd over each region (one per region).
type underTest struct {
	name string
	one  tracker.Tracker
	per  map[int]tracker.Tracker
}

// openTracker is tracker.Open (unit tests put fakes here).
var openTracker = tracker.Open

func openUnder(name string, regions []*region) (*underTest, error) {
	u := &underTest{name: name, per: map[int]tracker.Tracker{}}
	if name != "pagemap-scan" {
		t, err := openTracker(name, 0, 0, 0)
		if err != nil {
			return nil, err
		}
		u.one = t
		return u, nil
	}
	for _, r := range regions {
		t, err := openTracker(name, 0, r.base, r.end())
		if err != nil {
			u.close()
			return nil, err
		}
		u.per[r.idx] = t
	}
	return u, nil
}

// collect collects rs (each over its current range). Soft-dirty's clear
// is process-wide: it reads every region asked for, then clears once.
func (u *underTest) collect(rs []*region, clear bool) (map[int][]tracker.Region, error) {
	out := map[int][]tracker.Region{}
	for _, r := range rs {
		t := u.one
		if t == nil {
			t = u.per[r.idx]
		}
		if t == nil {
			return nil, fmt.Errorf("no tracker for region %d", r.idx)
		}
		perRegionClear := clear && u.name != "softdirty"
		rep, err := t.Collect(r.base, r.end(), perRegionClear)
		if err != nil {
			return nil, fmt.Errorf("collect r%d [%#x,%#x): %w", r.idx, r.base, r.end(), err)
		}
		for _, rg := range rep {
			if rg.Start%pg != 0 || rg.End%pg != 0 || rg.End <= rg.Start || rg.Start < r.base || rg.End > r.end() {
				return nil, fmt.Errorf("tracker %s reported %v outside region %d [%#x,%#x) or malformed", u.name, rg, r.idx, r.base, r.end())
			}
		}
		out[r.idx] = rep
	}
	if clear && u.name == "softdirty" {
		if _, err := u.one.Collect(0, 0, true); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func (u *underTest) close() {
	var errs []error
	if u.one != nil {
		errs = append(errs, u.one.Close())
	}
	for _, t := range u.per {
		errs = append(errs, t.Close())
	}
	_ = errors.Join(errs...)
}
