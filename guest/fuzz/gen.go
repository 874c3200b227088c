package fuzz

import (
	"math/rand/v2"
	"slices"
)

// Families group the vocabulary. Each sequence enables a random subset of
// them (swarm testing: a sequence without, say, any pinning operation of
// its own is what it takes to see a pin taken by another process), so
// combinations the weights alone would rarely draw come up often.
var Families = []string{"gup", "dio", "pin", "xpin", "madv", "layout", "fork", "ksm", "numa", "cotrack", "ring"}

type weighted struct {
	w  float64
	op string
}

// vocabulary: family → operations with weights. write, read, collect and
// sleep are always on.
var vocabulary = map[string][]weighted{
	"":        {{16, OpWrite}, {2, OpRead}, {10, OpCollect}, {1, OpSleep}},
	"gup":     {{4, OpPVM}, {3, OpProcMem}},
	"dio":     {{3, OpODirect}, {2, OpURead}, {2, OpAIORead}},
	"pin":     {{3, OpUReg}, {7, OpUReadFix}, {1, OpUUnreg}},
	"xpin":    {{3, OpXPin}, {7, OpXWrite}, {1, OpXUnpin}},
	"madv":    {{9, OpMadvise}},
	"layout":  {{3, OpMprotect}, {1, OpMremap}, {1, OpRemap}, {1, OpMsync}},
	"fork":    {{3, OpFork}, {1, OpForkExit}},
	"ksm":     {{2, OpKSM}},
	"numa":    {{3, OpMigrate}, {1.5, OpNUMA}, {1, OpSpin}, {0.5, OpCompact}},
	"cotrack": {{5, OpClearRef}, {3, OpUffdWP}, {2, OpPMScan}},
	"ring":    {{5, OpUNop}, {3, OpAIORead}},
}

// Generate draws sequence number seed: the same seed, the same sequence.
func Generate(seed uint64) *Sequence {
	r := rand.New(rand.NewPCG(seed, seed^0x6675_7a7a))
	s := &Sequence{Seed: seed}
	g := &gen{r: r, s: s, registered: -1, xpinned: -1}
	g.regions()
	on := map[string]bool{"": true}
	g.on = on
	for enabled := 0; enabled < 2; {
		for _, f := range Families {
			if !on[f] && r.IntN(5) < 3 {
				on[f] = true
				enabled++
			}
		}
	}
	// Each family's weight is scaled for this sequence too (0.25× to 2×):
	// a sequence with few plain writes is dense in everything else.
	var table []weighted
	for _, f := range append([]string{""}, Families...) {
		if !on[f] {
			continue
		}
		scale := 0.25 + 1.75*r.Float64()
		for _, w := range vocabulary[f] {
			if w.op == OpCollect {
				table = append(table, w) // collections keep their rate
				continue
			}
			table = append(table, weighted{w.w * scale, w.op})
		}
	}
	total := 0.0
	for _, w := range table {
		total += w.w
	}
	// Programs register their buffers when they start (io_uring fixed
	// buffers, a peer's shared pin): half the time the pin comes first.
	if on["pin"] && r.IntN(2) == 0 {
		g.draw(OpUReg)
	}
	if on["xpin"] && r.IntN(2) == 0 {
		g.draw(OpXPin)
	}
	n := 8 + r.IntN(28)
	for len(s.Ops) < n {
		x := r.Float64() * total
		var op string
		for _, w := range table {
			if x -= w.w; x < 0 {
				op = w.op
				break
			}
		}
		if op == "" {
			op = table[len(table)-1].op
		}
		g.draw(op)
	}
	g.khugepaged(seed)
	g.udmabufs(seed)
	g.reattach(seed)
	return s
}

// udmabufs adds, to a third of the sequences with a memfd region, one to
// three udmabuf writes (pins no mm holds, issue 19 finding 2's udmabuf
// case), half of them held across the next collection. From a stream of
// its own, as khugepaged: the sequences drawn before it stay the same
// apart from these.
func (g *gen) udmabufs(seed uint64) {
	r := rand.New(rand.NewPCG(seed^0x7564_6d61_6266, seed))
	memfds := g.memoryRegions(func(s RegionSpec) bool { return s.Kind == KMemfd })
	if len(memfds) == 0 || r.IntN(3) != 0 {
		return
	}
	for k := 1 + r.IntN(3); k > 0; k-- {
		i := memfds[r.IntN(len(memfds))]
		pages := g.s.Regions[i].Pages
		n := 1 + r.IntN(min(16, pages))
		o := Op{Op: OpUdmabuf, R: i, P: r.IntN(pages - n + 1), N: n, V: r.Uint64()}
		if r.IntN(2) == 0 {
			o.Arg = "hold"
		}
		g.s.Ops = slices.Insert(g.s.Ops, r.IntN(len(g.s.Ops)+1), o)
	}
}

// reattach stops and restarts the tracker in a fifth of the sequences: a
// checkpointer that attaches to a running process meets pins, mappings
// and zapped pages made while nobody tracked it. Half the time the
// detach comes right before the sequence's first pin by another
// process. From a stream of its own, as khugepaged.
func (g *gen) reattach(seed uint64) {
	r := rand.New(rand.NewPCG(seed^0x6174_7461_6368, seed))
	if len(g.s.Ops) == 0 || r.IntN(5) != 0 {
		return
	}
	at := r.IntN(len(g.s.Ops))
	if r.IntN(2) == 0 {
		if i := slices.IndexFunc(g.s.Ops, func(o Op) bool { return o.Op == OpXPin }); i >= 0 {
			at = i
		}
	}
	g.s.Ops = slices.Insert(g.s.Ops, at, Op{Op: OpDetach, R: -1})
	then := at + 1 + r.IntN(len(g.s.Ops)-at)
	g.s.Ops = slices.Insert(g.s.Ops, then, Op{Op: OpAttach, R: -1})
}

// khugepaged adds, to a third of the sequences with a PMD THP region,
// khugepaged's own passes (collapse, and the retract of a PTE-mapped
// shmem THP: collapse_pte_mapped_thp without a PMD), each after a
// pte-map that leaves a THP mapped by PTEs and, half the time, a write
// into it. These draws come from a stream of their own: every sequence
// the generator drew before they existed stays the same apart from them.
func (g *gen) khugepaged(seed uint64) {
	r := rand.New(rand.NewPCG(seed^0x6b68_7567_6570, seed))
	huge := g.memoryRegions(func(s RegionSpec) bool { return s.THP == "pmd" })
	if len(huge) == 0 || r.IntN(3) != 0 {
		return
	}
	for k := 1 + r.IntN(2); k > 0; k-- {
		i := huge[r.IntN(len(huge))]
		block := 512 * r.IntN(g.s.Regions[i].Pages/512)
		ops := []Op{{Op: OpPTEMap, R: i, P: block, N: 512}}
		if r.IntN(2) == 0 {
			ops = append(ops, Op{Op: OpWrite, R: i, P: block + r.IntN(512), N: 1, V: r.Uint64(), Arg: "word"})
		}
		at := r.IntN(len(g.s.Ops) + 1)
		g.s.Ops = slices.Insert(g.s.Ops, at, ops...)
		then := at + len(ops) + r.IntN(len(g.s.Ops)-at-len(ops)+1)
		g.s.Ops = slices.Insert(g.s.Ops, then, Op{Op: OpKhugepaged, R: -1})
	}
}

type gen struct {
	r          *rand.Rand
	s          *Sequence
	registered int
	xpinned    int
	forked     bool
	numaOn     bool
	on         map[string]bool
}

func (g *gen) regions() {
	r := g.r
	n := 1 + r.IntN(3)
	mthp := ""
	rings := map[string]bool{}
	for len(g.s.Regions) < n {
		var spec RegionSpec
		switch x := r.IntN(21); {
		case x < 3:
			spec = RegionSpec{Kind: KAnon, Pages: 16 + r.IntN(49)}
		case x < 8:
			spec = RegionSpec{Kind: KAnon, Pages: 512, THP: "pmd"}
		case x < 9:
			if mthp == "" {
				mthp = MTHPSizes[r.IntN(len(MTHPSizes))]
			}
			spec = RegionSpec{Kind: KAnon, Pages: 64, THP: mthp}
		case x < 10:
			spec = RegionSpec{Kind: KSharedAnon, Pages: 32}
		case x < 14:
			spec = RegionSpec{Kind: KMemfd, Pages: []int{32, 512, 512}[r.IntN(3)]}
		case x < 15:
			spec = RegionSpec{Kind: KMemfd, Pages: 512, THP: "pmd"}
		case x < 16:
			spec = RegionSpec{Kind: KFile, Pages: 32}
		case x < 18:
			spec = RegionSpec{Kind: KUringRing}
		default:
			spec = RegionSpec{Kind: KAIORing}
		}
		if spec.Ring() {
			if rings[spec.Kind] {
				continue
			}
			rings[spec.Kind] = true
		}
		g.s.Regions = append(g.s.Regions, spec)
	}
	if len(g.memoryRegions(nil)) == 0 {
		g.s.Regions = append(g.s.Regions, RegionSpec{Kind: KAnon, Pages: 32})
	}
}

// memoryRegions lists the non-ring regions that ok accepts (nil: all).
func (g *gen) memoryRegions(ok func(RegionSpec) bool) []int {
	var out []int
	for i, r := range g.s.Regions {
		if !r.Ring() && (ok == nil || ok(r)) {
			out = append(out, i)
		}
	}
	return out
}

func (g *gen) pick(ok func(RegionSpec) bool) int {
	rs := g.memoryRegions(ok)
	if len(rs) == 0 {
		return -1
	}
	return rs[g.r.IntN(len(rs))]
}

// pages draws a run of pages of region i: now and then all of it.
func (g *gen) pages(i int) (int, int) {
	n := g.s.Regions[i].Pages
	if g.r.IntN(7) == 0 {
		return 0, n
	}
	k := 1 + g.r.IntN(min(8, n))
	return g.r.IntN(n - k + 1), k
}

// hugeRange: the whole region or one aligned 2 MiB of it.
func (g *gen) hugeRange(i int) (int, int) {
	n := g.s.Regions[i].Pages
	if n < 512 || g.r.IntN(2) == 0 {
		return 0, n
	}
	return 512 * g.r.IntN(n/512), 512
}

func pinnable(r RegionSpec) bool {
	return r.Kind == KAnon || r.Kind == KSharedAnon || r.Kind == KMemfd
}

func (g *gen) add(o Op) { g.s.Ops = append(g.s.Ops, o) }

func (g *gen) draw(op string) {
	r := g.r
	switch op {
	case OpWrite:
		i := g.pick(nil)
		p, n := g.pages(i)
		g.add(Op{Op: op, R: i, P: p, N: n, V: r.Uint64(), Arg: []string{"byte", "word", "word", "page", "page", "threads"}[r.IntN(6)]})
	case OpRead:
		i := g.pick(nil)
		p, n := g.pages(i)
		g.add(Op{Op: op, R: i, P: p, N: n})
	case OpSleep:
		g.add(Op{Op: op, R: -1, N: 50 + r.IntN(450)})
	case OpCollect:
		// A co-tracker in the same process (a soft-dirty user such as
		// CRIU) clears on its own cadence, often right before ours.
		if g.on["cotrack"] && r.IntN(3) == 0 {
			g.add(Op{Op: OpClearRef, R: -1})
		}
		o := Op{Op: op, R: -1, Clear: r.IntN(7) != 0}
		if r.IntN(2) == 0 {
			o.R = r.IntN(len(g.s.Regions))
		}
		g.add(o)
	case OpPVM, OpProcMem:
		i := g.pick(nil)
		p, n := g.pages(i)
		g.add(Op{Op: op, R: i, P: p, N: min(n, 8), V: r.Uint64()})
	case OpODirect, OpURead, OpAIORead:
		i := g.pick(nil)
		p, n := g.pages(i)
		o := Op{Op: op, R: i, P: p, N: min(n, 16), Off: r.IntN(dataPages)}
		if op != OpODirect && r.IntN(2) == 0 {
			o.Arg = "direct"
		}
		g.add(o)
	case OpUReg:
		// Pins on huge pages first: a THP is one entry for 512 pages.
		i := g.pick(func(s RegionSpec) bool { return pinnable(s) && s.THP == "pmd" })
		if i < 0 || g.r.IntN(3) == 0 {
			i = g.pick(pinnable)
		}
		if i >= 0 {
			g.registered = i
			g.add(Op{Op: op, R: i})
		}
	case OpUReadFix:
		if g.registered < 0 {
			g.draw(OpUReg)
			if g.registered < 0 {
				return
			}
		}
		p, n := g.pages(g.registered)
		o := Op{Op: op, R: -1, P: p, N: min(n, 16), Off: r.IntN(dataPages)}
		if r.IntN(2) == 0 {
			o.Arg = "direct"
		}
		g.add(o)
	case OpUUnreg:
		if g.registered >= 0 {
			g.registered = -1
			g.add(Op{Op: op, R: -1})
		}
	case OpXPin:
		if i := g.pick(func(s RegionSpec) bool { return s.Kind == KMemfd }); i >= 0 {
			g.xpinned = i
			g.add(Op{Op: op, R: i})
		}
	case OpXWrite:
		if g.xpinned < 0 {
			g.draw(OpXPin)
			if g.xpinned < 0 {
				return
			}
		}
		p, n := g.pages(g.xpinned)
		o := Op{Op: op, R: -1, P: p, N: min(n, 16), Off: r.IntN(dataPages)}
		if r.IntN(2) == 0 {
			o.Arg = "direct"
		}
		g.add(o)
	case OpXUnpin:
		if g.xpinned >= 0 {
			g.xpinned = -1
			g.add(Op{Op: op, R: -1})
		}
	case OpMadvise:
		i := g.pick(nil)
		spec := g.s.Regions[i]
		advs := []weighted{{2, "dontneed"}, {1, "cold"}, {3, "pageout"}, {4, "collapse"}, {1, "hugepage"}, {1, "nohugepage"}, {2, "populate-write"}}
		if spec.Kind == KAnon {
			advs = append(advs, weighted{3, "free"}, weighted{1, "wipeonfork"}, weighted{0.5, "keeponfork"}, weighted{0.5, "unmergeable"})
		}
		adv := choose(r, advs)
		var p, n int
		if adv == "collapse" || adv == "hugepage" || adv == "nohugepage" {
			p, n = g.hugeRange(i)
		} else {
			p, n = g.pages(i)
		}
		g.add(Op{Op: op, R: i, P: p, N: n, Arg: adv})
	case OpMprotect:
		i := g.pick(nil)
		p, n := g.pages(i)
		g.add(Op{Op: op, R: i, P: p, N: n, Arg: choose(r, []weighted{{2, "r"}, {1, "none"}, {3, "rw"}})})
	case OpMremap:
		i := g.pick(nil)
		shift := 0
		if r.IntN(2) == 0 {
			shift = r.IntN(512)
		}
		g.add(Op{Op: op, R: i, P: shift})
	case OpRemap:
		g.add(Op{Op: op, R: g.pick(nil)})
	case OpMsync:
		if i := g.pick(func(s RegionSpec) bool { return s.Kind == KFile }); i >= 0 {
			p, n := g.pages(i)
			g.add(Op{Op: op, R: i, P: p, N: n})
		}
	case OpFork:
		o := Op{Op: op, R: -1, V: r.Uint64()}
		for k := 1 + r.IntN(6); k > 0; k-- {
			i := g.pick(nil)
			o.W = append(o.W, PageRef{i, r.IntN(g.s.Regions[i].Pages)})
		}
		if r.IntN(5) < 2 {
			o.Arg = "keep"
			g.forked = true
		}
		g.add(o)
	case OpForkExit:
		if g.forked {
			g.forked = false
			g.add(Op{Op: op, R: -1})
		}
	case OpKSM:
		if i := g.pick(func(s RegionSpec) bool { return s.Kind == KAnon }); i >= 0 {
			n := 2 + g.r.IntN(7)
			g.add(Op{Op: op, R: i, P: g.r.IntN(g.s.Regions[i].Pages - n + 1), N: n})
		}
	case OpMigrate:
		i := g.pick(nil)
		p, n := g.pages(i)
		g.add(Op{Op: op, R: i, P: p, N: n, V: r.Uint64()})
	case OpNUMA:
		g.numaOn = !g.numaOn
		arg := "off"
		if g.numaOn {
			arg = "on"
		}
		g.add(Op{Op: op, R: -1, Arg: arg})
	case OpSpin:
		g.add(Op{Op: op, R: -1, N: 100 + r.IntN(500)})
	case OpCompact:
		g.add(Op{Op: op, R: -1})
	case OpClearRef:
		g.add(Op{Op: op, R: -1})
		g.coCollect()
	case OpUffdWP:
		i := g.pick(nil)
		p, n := g.pages(i)
		arg := "on"
		if r.IntN(3) == 0 {
			arg = "off"
		}
		g.add(Op{Op: op, R: i, P: p, N: n, Arg: arg})
		g.coCollect()
	case OpPMScan:
		g.add(Op{Op: op, R: g.pick(nil)})
		g.coCollect()
	case OpUNop:
		// Up to 300 CQEs: past the ring's first page, which the process
		// writes itself (the SQ tail, the CQ head).
		g.add(Op{Op: op, R: -1, N: 1 + r.IntN(300)})
	}
}

// coCollect: a co-tracker's pass is often followed by the tracker's own
// collection (two trackers taking turns, as the coexistence scenario has them).
func (g *gen) coCollect() {
	if g.r.IntN(4) != 0 {
		g.add(Op{Op: OpCollect, R: -1, Clear: true})
	}
}

func choose(r *rand.Rand, ws []weighted) string {
	total := 0.0
	for _, w := range ws {
		total += w.w
	}
	x := r.Float64() * total
	for _, w := range ws {
		if x -= w.w; x < 0 {
			return w.op
		}
	}
	return ws[len(ws)-1].op
}
