package scenario

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"ldtlab/guest/tracker"
)

func init() {
	register(&Scenario{
		Name:  "concurrency",
		Paths: "collection vs concurrent writes, TLB flush",
		Doc: "one writer thread pinned to every vCPU stamps its own pages while collections run in a loop; each write " +
			"is bracketed by the collection counter, so the oracle knows exactly which collections may report it.",
		Naive: Nothing,
		NotFor: map[string]string{
			"softdirty": "soft-dirty's collection is a pagemap read followed by a separate clear_refs: a write landing between the two is lost by design, so it cannot be collected under concurrent writers",
		},
		Run: staged(runConcurrency),
	})
}

// A write's window: the collection counter E is odd (2j-1) while
// collection j runs and even (2j) after it. A write that read E=a before
// and E=b after can be reported by collections j in [a/2+1, (b+1)/2+1]
// and must be reported by one of them — exact whatever the interleaving.
type concWrite struct {
	id   int32
	a, b int32
}

func winLo(a int32) int { return int(a)/2 + 1 }
func winHi(b int32) int { return int(b+1)/2 + 1 }

func runConcurrency(e *Scene) error {
	writers := max(runtime.NumCPU(), 2)
	n := 128 * writers
	ws, _, t, err := e.Populate(Anon, n)
	if err != nil {
		return err
	}
	var E atomic.Int32
	logs := make([][]concWrite, writers)
	last := make([]uint64, n)
	for id := range n {
		last[id] = ws.Want(id)
	}
	var corrupt []Corruption
	var mu sync.Mutex
	seeds := make([]uint64, writers)
	for w := range seeds {
		seeds[w] = e.Rand.Uint64()
	}
	writer := func(ctx context.Context, w int, seed uint64) {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		_ = pinCPU(w % runtime.NumCPU())
		r := splitmix(seed)
		gen := make(map[int]uint64)
		for done := ctx.Done(); ; {
			select {
			case <-done:
				return
			default:
			}
			r = splitmix(r)
			// Writer w owns the pages id ≡ w (mod writers): the last
			// stamp of each is well defined.
			id := w + int(r%uint64(n/writers))*writers
			page := ws.Page(id)
			if !Matches(page, last[id]) {
				mu.Lock()
				corrupt = append(corrupt, Corruption{ID: id, Addr: ws.Addr(id), Want: last[id], What: "changed under its only writer"})
				mu.Unlock()
			}
			gen[id]++
			s := StampFor(seed, id, gen[id])
			a := E.Load()
			Fill(page, s)
			// A locked RMW: the stores above are globally visible
			// before b is read (x86 may otherwise order a later load
			// before an earlier store).
			b := E.Add(0)
			last[id] = s
			logs[w] = append(logs[w], concWrite{int32(id), a, b})
		}
	}
	// One agitator for all writers, so that they stop together.
	stopWriters := e.Go("writers", func(ctx context.Context) error {
		var wg sync.WaitGroup
		for w, seed := range seeds {
			wg.Go(func() { writer(ctx, w, seed) })
		}
		wg.Wait()
		return nil
	})
	J := e.Epochs + 1 // the last collection runs after the writers stopped
	reports := make([]tracker.Set, J+1)
	collect := func(j int) error {
		E.Store(int32(2*j - 1))
		rs, err := t.Collect(ws.Base, ws.End(), true)
		E.Store(int32(2 * j))
		reports[j] = tracker.NewSet(rs...)
		return err
	}
	var cerr error
	for j := 1; j < J && cerr == nil; j++ {
		time.Sleep(time.Duration(1+e.Rand.IntN(4)) * time.Millisecond)
		cerr = collect(j)
	}
	_ = stopWriters() // the writers return no error
	if cerr != nil {
		return cerr
	}
	if err := collect(J); err != nil {
		return err
	}
	// The writers stopped: one more collection must be empty.
	if err := e.QuietOnly(ws.Base, ws.End(), t); err != nil {
		return err
	}
	// Judge every write against its window.
	covers := make([]tracker.Set, J+1)
	for j := range covers {
		covers[j] = tracker.Set{}
	}
	missed := make([][]uintptr, J+1)
	total := 0
	for _, log := range logs {
		total += len(log)
		for _, w := range log {
			addr := ws.Addr(int(w.id))
			lo, hi := winLo(w.a), min(winHi(w.b), J)
			ok := false
			for j := lo; j <= hi; j++ {
				covers[j].Add(addr)
				ok = ok || reports[j].Has(addr)
			}
			if !ok {
				missed[hi] = append(missed[hi], addr)
			}
		}
	}
	for j := 1; j <= J; j++ {
		_, extra := tracker.Diff(reports[j], covers[j])
		st := EpochStat{Written: covers[j].Len(), Reported: reports[j].Len(), Missed: missed[j],
			Extra: extra.Len(), Classified: map[string]int{}}
		if extra.Len() > 0 {
			st.Classified["unclassified"] = extra.Len()
		}
		e.Record(st)
	}
	for id := range n {
		ws.Expect(id, last[id])
	}
	e.AddCorrupt(corrupt)
	e.Note("%d writers, %d writes, %d collections", writers, total, J)
	if total == 0 {
		return fmt.Errorf("the writers wrote nothing")
	}
	return e.Verify(ws)
}
