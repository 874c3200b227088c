package fuzz

import (
	"slices"
	"testing"
)

// The generator must keep drawing, on its own, the orders of operations
// that reach issue 19's lost writes often enough for a 30-minute TCG run
// (make fuzz-teeth) to hit each several times. The recipes are rough
// (the kernel decides the rest: a THP formed, a collapse done).
func TestGeneratorReachesKnownRecipes(t *testing.T) {
	N := 2000
	var thp, spin, coll, ring int
	ownPin := map[string]bool{OpUReg: true, OpPVM: true, OpODirect: true}
	for i := 0; i < N; i++ {
		s := Generate(SeqSeed(99, i))
		// pinned-thp
		// registered (GUP marks the PMD), clear_refs write-protects it,
		// a collection clears it, then a write through the pin.
		reg, stage := -1, 0
		hit := false
		for _, o := range s.Ops {
			switch o.Op {
			case OpUReg:
				if s.Regions[o.R].THP == "pmd" && s.Regions[o.R].Kind == KAnon {
					reg = o.R
				} else {
					reg = -1
				}
				stage = 0
			case OpUUnreg:
				reg = -1
			case OpClearRef:
				if reg >= 0 {
					stage = 1
				}
			case OpCollect:
				if stage == 1 && o.Clear && (o.R < 0 || o.R == reg) {
					stage = 2
				}
			case OpWrite, OpPVM, OpProcMem, OpODirect, OpURead, OpAIORead, OpMprotect, OpMadvise:
				if o.R == reg {
					stage = 0
				}
			case OpUReadFix:
				if stage == 2 {
					hit = true
				}
			}
		}
		if hit {
			thp++
		}
		// shared-pin
		pinned, hit2, xw := false, false, false
		for _, o := range s.Ops {
			if ownPin[o.Op] || ((o.Op == OpURead || o.Op == OpAIORead) && o.Arg == "direct") {
				pinned = true
			}
			if o.Op == OpXWrite {
				xw = true
			}
			if o.Op == OpCollect && xw && !pinned {
				hit2 = true
			}
		}
		if xw && !pinned {
			hit2 = true
		}
		if hit2 {
			spin++
		}
		// collapse
		w := map[int]bool{}
		for _, o := range s.Ops {
			if o.R >= 0 && (s.Regions[o.R].Kind == KMemfd || s.Regions[o.R].Kind == KSharedAnon) && s.Regions[o.R].THP == "" {
				switch {
				case o.Op == OpWrite:
					w[o.R] = true
				case o.Op == OpCollect:
					w = map[int]bool{}
				case o.Op == OpMadvise && o.Arg == "collapse" && w[o.R] && s.Regions[o.R].Pages >= 512:
					coll++
					w = map[int]bool{}
				}
			}
			if o.Op == OpCollect && o.R < 0 {
				w = map[int]bool{}
			}
		}
		// ring
		hasU, hasA := false, false
		for _, r := range s.Regions {
			hasU = hasU || r.Kind == KUringRing
			hasA = hasA || r.Kind == KAIORing
		}
		for _, o := range s.Ops {
			if (hasU && (o.Op == OpUNop || o.Op == OpURead || o.Op == OpUReadFix)) || (hasA && o.Op == OpAIORead) {
				ring++
				break
			}
		}
	}
	t.Logf("of %d: pinned-thp %d, shared-pin %d, collapse %d, ring %d", N, thp, spin, coll, ring)
	for name, c := range map[string][2]int{"pinned-thp": {thp, N / 200}, "shared-pin": {spin, N / 50}, "shmem-collapse": {coll, N / 100}, "ring": {ring, N / 10}} {
		if c[0] < c[1] {
			t.Errorf("%s: %d of %d sequences, want at least %d", name, c[0], N, c[1])
		}
	}
}

// khugepaged's retract (0023's fix) needs a shared THP region mapped by
// PTEs, a write into it, and a khugepaged pass before a clearing
// collection: the generator must draw that order on its own.
func TestGeneratorReachesRetract(t *testing.T) {
	N, hits, passes := 4000, 0, 0
	for i := 0; i < N; i++ {
		s := Generate(SeqSeed(7, i))
		mapped, written := map[int]bool{}, map[int]bool{}
		hit := false
		for _, o := range s.Ops {
			switch {
			case o.Op == OpKhugepaged:
				passes++
				for r := range written {
					if mapped[r] {
						hit = true
					}
				}
			case o.Op == OpPTEMap && s.Regions[o.R].Shared():
				mapped[o.R] = true
			case o.Op == OpWrite && mapped[o.R]:
				written[o.R] = true
			case o.Op == OpCollect && o.Clear:
				written = map[int]bool{}
			case o.Op == OpRemap || o.Op == OpMremap:
				delete(mapped, o.R)
			}
		}
		if hit {
			hits++
		}
	}
	t.Logf("of %d: %d khugepaged passes, %d retract recipes", N, passes, hits)
	if hits < N/400 {
		t.Errorf("retract recipe in %d of %d sequences, want at least %d", hits, N, N/400)
	}
}

// A detach always comes before its attach, in about a fifth of the
// sequences, and half of those detach right before another process's pin.
func TestGeneratorReattach(t *testing.T) {
	N, with, beforePin := 2000, 0, 0
	for i := 0; i < N; i++ {
		s := Generate(SeqSeed(5, i))
		d := slices.IndexFunc(s.Ops, func(o Op) bool { return o.Op == OpDetach })
		a := slices.IndexFunc(s.Ops, func(o Op) bool { return o.Op == OpAttach })
		if (d < 0) != (a < 0) || a >= 0 && a <= d {
			t.Fatalf("sequence %d: detach at %d, attach at %d", i, d, a)
		}
		if d >= 0 {
			with++
			if s.Ops[d+1].Op == OpXPin {
				beforePin++
			}
		}
	}
	t.Logf("of %d: %d reattach, %d of them right before an xpin", N, with, beforePin)
	if with < N/8 || with > N/3 || beforePin < with/8 {
		t.Errorf("%d of %d sequences reattach (%d before a pin), want about a fifth", with, N, beforePin)
	}
}
