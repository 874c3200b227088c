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
		Doc: "the parent puts pages in LDT-only state (process_vm_writev, swapped and read back, lazyfree + collected) and " +
			"writes, forks (its PTEs are write-protected, D moves to SAVED_DIRTY), then parent and child write different " +
			"pages; each is tracked by its own tracker and must report only its own writes; after the child exits the " +
			"parent is paged out and read back.",
		Naive: MissPages,
		Run:   staged(runFork),
	})
	register(&Scenario{
		Name:  "lifecycle",
		Paths: "exit, munmap",
		Doc: "a forked target, idle (nothing reported), then writing known pages (exactly those reported, its memory " +
			"verified), then exiting while writing in a loop, or after munmapping its memory (every later collection " +
			"empty), while collections run back to back: each returns regions or a clean ESRCH, never another error.",
		Naive: Nothing,
		NotFor: map[string]string{
			"pagemap-scan": "PAGEMAP_SCAN's write-protection must be registered from inside the tracked process, and the target here is another process",
		},
		Run: staged(runLifecycle),
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

func runFork(e *Scene) error {
	const n = 64
	if err := anySwap(); err != nil {
		return err
	}
	ws, seg, t, err := e.Populate(Anon, n)
	if err != nil {
		return err
	}
	childTracked := 0
	var ss swapStats
	for range e.Epochs {
		// LDT-only state in the parent before the fork write-protects
		// its PTEs.
		o := pickLDTOnly(e.Env, 0, n, n/16)
		if err := e.prepLazy(ws, o.lazy); err != nil {
			return err
		}
		if _, err := e.Collect(ws, t); err != nil {
			return err
		}
		if err := e.prepLDTOnly(ws, o, &ss); err != nil {
			return err
		}
		for _, id := range Pick(e.Rand, 0, n, n/4) {
			if !slices.Contains(o.gup, id) && !slices.Contains(o.swapped, id) {
				ws.Write(id) // before the fork: the parent must still report these
			}
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
			if ct != nil {
				// The child's own quiet epoch: it wrote nothing since.
				if err := e.QuietOnly(ws.Base, ws.End(), ct); err != nil {
					return fmt.Errorf("child: %w", err)
				}
			}
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
		// The child is gone: page the parent's memory out (shared pages
		// are not), read it back; the lazyfree pages must hold their data
		// and nothing was written since the last collection.
		if err := ss.pageout(seg.Bytes(ws)); err != nil {
			return err
		}
		if err := e.Verify(ws); err != nil {
			return err
		}
		if _, err := e.Collect(ws, t); err != nil {
			return err
		}
	}
	if err := e.Quiet(ws, t); err != nil {
		return err
	}
	if err := ss.require(e); err != nil {
		return err
	}
	if childTracked == 0 {
		e.Note("the child was not tracked (%s tracks only its own process): parent side only", e.Tracker)
	}
	return nil
}

func runLifecycle(e *Scene) error {
	const n = 256
	ws, err := e.Workset(n)
	if err != nil {
		return err
	}
	if _, err := ws.Map("target", Anon, 0, n, -1); err != nil {
		return err
	}
	for id := range n {
		ws.Write(id)
	}
	esrch, afterUnmap := 0, 0
	for ep := range e.Epochs {
		model := ws.forkModel()
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
			// An idle target: nothing to report.
			if err := e.QuietOnly(ws.Base, ws.End(), t); err != nil {
				return err
			}
			// The target writes known pages: exactly those are reported,
			// and its memory holds them.
			ids := Pick(e.Rand, 0, n, n/8)
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
				return fmt.Errorf("collect the target's writes: %w", err)
			}
			e.Record(model.Judge(rs))
			read, done, err := procMemReader(c.pid)
			if err != nil {
				return err
			}
			cs, err := model.Verify(read)
			done()
			e.AddCorrupt(cs)
			if err != nil {
				return err
			}
			unmap := ep%2 == 1
			if unmap {
				// After munmap nothing is left to report.
				c.do(opMunmap, nil, nil)
				rs, err := t.Collect(ws.Base, ws.End(), true)
				if err != nil {
					return fmt.Errorf("collect after munmap: %w", err)
				}
				if k := tracker.NewSet(rs...).Len(); k > 0 {
					afterUnmap += k
					e.res.QuietReported += k
					e.sample(fmt.Sprintf("epoch %d: %d pages reported after the target unmapped its memory", ep+1, k))
				}
				c.post(opExit, 0, 0)
			} else {
				c.post(opSpin, uint64(500+e.Rand.IntN(20000)), 0)
			}
			// Collections back to back while the target exits: regions
			// (empty after munmap) or a clean ESRCH, nothing else.
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
				if k := tracker.NewSet(rs...).Len(); unmap && k > 0 {
					afterUnmap += k
					e.res.QuietReported += k
				}
				var wst unix.WaitStatus
				if pid, _ := unix.Wait4(c.pid, &wst, unix.WNOHANG, nil); pid == c.pid {
					exited = true
					c.pid = 0 // reaped: kill must not hit a reused pid
				}
			}
			return nil
		}()
		if err != nil {
			return err
		}
	}
	e.Note("%d of %d targets ended with a clean ESRCH; %d pages reported after munmap (must be 0)", esrch, e.Epochs, afterUnmap)
	if esrch != e.Epochs {
		return fmt.Errorf("%d of %d targets ended with ESRCH", esrch, e.Epochs)
	}
	return nil
}
