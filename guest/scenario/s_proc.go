package scenario

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"

	"golang.org/x/sys/unix"

	"ldtlab/guest/tracker"
)

func init() {
	register(&Scenario{
		Name:  "fork",
		Paths: "12 (S2)",
		Doc: "the parent writes, forks (its PTEs are write-protected, D moves to SAVED_DIRTY), then parent and child " +
			"write different pages; each is tracked by its own tracker and must report only its own writes.",
		Naive: Nothing,
		Run:   runFork,
	})
	register(&Scenario{
		Name:  "lifecycle",
		Paths: "exit, munmap",
		Doc: "a forked target writes in a loop and exits (or munmaps its memory first) while collections run back to " +
			"back: every collection returns regions or a clean ESRCH, never another error, and no kernel report.",
		Naive: Nothing,
		NotFor: map[string]string{
			"pagemap-scan": "PAGEMAP_SCAN's write-protection must be registered from inside the tracked process, and the target here is another process",
		},
		Run: runLifecycle,
	})
}

// forkModel is the oracle of a forked child: the parent's page states at
// the fork, then the child's own writes.
func (ws *Workset) forkModel() *Workset {
	m := *ws
	m.pages = slices.Clone(ws.pages)
	m.written = map[int]bool{}
	m.hints = map[int]string{}
	m.history = maps.Clone(ws.history)
	return &m
}

func mergeStat(a, b EpochStat) EpochStat {
	out := EpochStat{
		Written: a.Written + b.Written, Reported: a.Reported + b.Reported,
		Missed: append(slices.Clone(a.Missed), b.Missed...), Extra: a.Extra + b.Extra,
		Classified: maps.Clone(a.Classified), ReportedOffs: a.ReportedOffs,
	}
	for k, v := range b.Classified {
		out.Classified["child:"+k] += v
	}
	return out
}

func procMemReader(pid int) (func(addr uintptr, buf []byte) error, func(), error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/mem")
	if err != nil {
		return nil, nil, err
	}
	return func(addr uintptr, buf []byte) error {
		_, err := f.ReadAt(buf, int64(addr))
		return err
	}, func() { f.Close() }, nil
}

func runFork(e *Env) error {
	const n = 64
	ws, _, t, err := populated(e, Anon, n)
	if err != nil {
		return err
	}
	defer ws.Close()
	defer t.Close()
	childTracked := 0
	for range e.Epochs {
		for _, id := range Pick(e.Rand, 0, n, n/4) {
			ws.Write(id) // before the fork: the parent must still report these
		}
		model := ws.forkModel()
		c, err := startFork(ws.mem)
		if err != nil {
			return err
		}
		err = func() error {
			defer c.kill()
			ct, err := e.Open(c.pid, ws.Base, ws.End())
			var se *SkipError
			if errors.As(err, &se) {
				ct = nil // pagemap-scan: the parent side only
			} else if err != nil {
				return fmt.Errorf("track the child: %w", err)
			} else {
				defer ct.Close()
				childTracked++
			}
			for _, id := range Pick(e.Rand, 0, n, n/4) {
				ws.Write(id)
			}
			ids := Pick(e.Rand, 0, n, n/4)
			offs := make([]int, len(ids))
			stamps := make([]uint64, len(ids))
			for i, id := range ids {
				offs[i], stamps[i] = ws.Off(id), model.NextStamp(id)
				model.Expect(id, stamps[i])
				model.MarkWritten(id)
			}
			c.write(offs, stamps)
			rs, err := t.Collect(ws.Base, ws.End(), true)
			if err != nil {
				return err
			}
			st := ws.Judge(rs)
			if ct != nil {
				crs, err := ct.Collect(ws.Base, ws.End(), true)
				if err != nil {
					return fmt.Errorf("collect the child: %w", err)
				}
				st = mergeStat(st, model.Judge(crs))
			}
			e.Record(st)
			if err := e.Verify(ws); err != nil {
				return err
			}
			read, done, err := procMemReader(c.pid)
			if err != nil {
				return err
			}
			defer done()
			cs, err := model.Verify(read)
			for i := range cs {
				cs[i].What = "in the child: " + cs[i].What
				cs[i].ID += 1 << 20 // the child's pages count apart
			}
			e.AddCorrupt(cs)
			return err
		}()
		if err != nil {
			return err
		}
	}
	if childTracked == 0 {
		e.Note("the child was not tracked (%s tracks only its own process): parent side only", e.Tracker)
	}
	return nil
}

func runLifecycle(e *Env) error {
	const n = 256
	ws, err := NewWorkset(e.Seed, n)
	if err != nil {
		return err
	}
	defer ws.Close()
	if _, err := ws.Map("target", Anon, 0, n, -1); err != nil {
		return err
	}
	for id := range n {
		ws.Write(id)
	}
	esrch, emptyAfterUnmap := 0, 0
	for ep := range e.Epochs {
		c, err := startFork(ws.mem)
		if err != nil {
			return err
		}
		err = func() error {
			defer c.kill()
			t, err := e.Open(c.pid, ws.Base, ws.End())
			if err != nil {
				return err
			}
			defer t.Close()
			unmap := uint64(ep % 2)
			c.post(opSpin, uint64(500+e.Rand.IntN(20000)), unmap)
			st := EpochStat{Classified: map[string]int{}}
			exited := false
			for i := 0; ; i++ {
				rs, err := t.Collect(ws.Base, ws.End(), true)
				if errors.Is(err, unix.ESRCH) {
					esrch++
					break
				}
				if err != nil {
					return fmt.Errorf("collection %d while the target exits: %w (want regions or ESRCH)", i, err)
				}
				if exited {
					return fmt.Errorf("collection after the target was reaped succeeded with %d regions, want ESRCH", len(rs))
				}
				if unmap == 1 && len(rs) == 0 {
					emptyAfterUnmap++
				}
				st.Reported += tracker.NewSet(rs...).Len()
				var wst unix.WaitStatus
				if pid, _ := unix.Wait4(c.pid, &wst, unix.WNOHANG, nil); pid == c.pid {
					exited = true
					c.pid = 0 // reaped: kill must not hit a reused pid
				}
			}
			e.Record(st)
			return nil
		}()
		if err != nil {
			return err
		}
	}
	e.Note("%d of %d targets ended with a clean ESRCH; %d empty collections after munmap", esrch, e.Epochs, emptyAfterUnmap)
	return nil
}
