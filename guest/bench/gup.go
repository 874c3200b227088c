package bench

import (
	"fmt"
	"io"
	"time"

	"ldtlab/guest/kio"
)

// RunGUP is the GUP figure: a region written whole, collected and cleared
// by the tracker, then registered as an io_uring fixed buffer — one
// pin_user_pages_fast(FOLL_WRITE|FOLL_LONGTERM) of every page, the pin an
// O_DIRECT read or a DMA buffer takes. Right after a collection each
// tracker leaves the entries in its own state: soft-dirty and
// PAGEMAP_SCAN write-protected (GUP faults every page in), LDT writable
// but clean (GUP-fast falls back to the slow path to set LDT-backup under
// the page table lock, 0004, and only in a tracked mm, 0017). Untracked,
// GUP-fast pins every page: a kernel A/B (vanilla against the series) on
// this cell shows what the series costs a process nobody tracks.
func RunGUP(p Plan, progress io.Writer) (*GUP, error) {
	defer quiet()()
	m, err := newMapping(p.GUPMiB<<20, false)
	if err != nil {
		return nil, err
	}
	defer m.close()
	res := &GUP{SizeMiB: p.GUPMiB, Pages: m.pages(), Reps: p.Reps}
	for rep := p.FirstRep; rep < p.FirstRep+p.Reps; rep++ {
		for seq, i := range p.order("gup", rep, len(p.Trackers)) {
			tr := p.Trackers[i]
			s, err := gupOnce(tr, m, byte(rep+5))
			if err != nil {
				return nil, fmt.Errorf("gup %s: %w", tr, err)
			}
			s.Rep, s.Seq = rep, seq
			res.Samples = append(res.Samples, s)
		}
		logf(progress, "gup %d MiB: repetition %d (%d of %d) done (%d trackers in random order)", p.GUPMiB, rep, rep-p.FirstRep+1, p.Reps, len(p.Trackers))
	}
	return res, nil
}

// gupOnce arms tracker tr on m, writes every page, collects and clears,
// and times one registration of m as a fixed buffer.
func gupOnce(tr string, m *mapping, v byte) (GUPSample, error) {
	s := GUPSample{Tracker: tr, Pages: m.pages()}
	t, err := openTracker(tr, m)
	if err != nil {
		return s, err
	}
	if t != nil {
		defer t.Close()
	}
	writePages(m, 1, 1, v)
	if _, err := collect(t, m); err != nil {
		return s, err
	}
	r, err := kio.NewRing(4)
	if err != nil {
		return s, fmt.Errorf("io_uring: %w", err)
	}
	defer r.Close()
	c0 := counters(0)
	st := time.Now()
	err = r.Register([][]byte{m.mem})
	s.NS = time.Since(st).Nanoseconds()
	s.Counts = counters(0).since(c0)
	if err != nil {
		return s, fmt.Errorf("register %d MiB as a fixed buffer: %w", len(m.mem)>>20, err)
	}
	return s, r.Unregister()
}
