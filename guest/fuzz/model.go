package fuzz

import (
	"encoding/binary"
	"fmt"
	"slices"
	"sort"
	"strings"

	"ldtlab/guest/result"
)

const pg = 4096

// Who wrote a page, for the oracle: own writes (the tracked process's
// CPU, and the kernel on its behalf through GUP or its own syscalls) must
// be reported; writes through a long-term pin must be too (LDT's pin
// rule); ring pages are written by the kernel through its own mapping;
// external writes (another process through its own mapping, the kernel
// discarding a lazily freed page) are not the tracked mm's and are not
// expected in any report. A read that failed may have written part of
// its range, through GUP (an own write every tracker sees: GUP faults a
// write-protected entry in, LDT marks it), or nothing: it is owed a
// report, but it neither explains nor rules out another writer's loss.
const (
	classOwn      = "own"
	classPin      = "pin"
	classRing     = "ring"
	classExternal = "external"
	classMaybe    = "maybe"
)

var sourceClass = map[string]string{
	"cpu":               classOwn,
	"pvm":               classOwn,
	"procmem":           classOwn,
	"odirect":           classOwn,
	"uring-read":        classOwn,
	"aio-read":          classOwn,
	"odirect-failed":    classMaybe,
	"uring-read-failed": classMaybe,
	"aio-read-failed":   classMaybe,
	"uring-read-fixed":  classPin,
	"xwrite":            classPin,
	"udmabuf":           classPin,
	"ring":              classRing,
	"fork-child":        classExternal,
	"lazyfree":          classExternal,
}

// event is one write into a page since the tracker last reported it.
type event struct {
	Op  int    `json:"op"`
	Src string `json:"src"`
}

// pageState is the model's view of one page.
type pageState struct {
	known  bool // the model knows the content (else: adopt memory at the next check)
	lazy   bool // MADV_FREE'd and not rewritten: the kernel may discard it; not checked
	events []event
	// Why a reference tracker (or LDT's documented limits) may have lost
	// the pending writes; cleared with the events.
	zapped bool // a shared mapping's PTE was zapped (DONTNEED, PAGEOUT, a shmem THP split): kmod/README rows 2, 7
	ksm    bool // merged by KSM with writes pending (soft-dirty's known gap)
	pinRO  bool // written through a pin while the process had the page mapped read-only
	coll   bool // a shmem collapse with writes pending (soft-dirty: the same zap)
}

func (s *pageState) pending() bool {
	for _, e := range s.events {
		if sourceClass[e.Src] != classExternal {
			return true
		}
	}
	return false
}

// external: a writer outside the tracked mm changed the page since it
// was last reported.
func (s *pageState) external() bool {
	for _, e := range s.events {
		if sourceClass[e.Src] == classExternal && e.Src != "lazyfree" {
			return true
		}
	}
	return false
}

func (s *pageState) reset() {
	s.events = nil
	s.zapped, s.ksm, s.pinRO, s.coll = false, false, false, false
}

func (s *pageState) add(op int, src string) {
	if len(s.events) < 16 {
		s.events = append(s.events, event{op, src})
	}
}

// Loss is a page whose memory differs from the shadow after a collection
// that did not report it (or whose memory differs from the model).
type Loss struct {
	Kind    string   `json:"kind"` // lost | corrupted
	After   int      `json:"after_op"`
	Region  int      `json:"region"`
	RKind   string   `json:"region_kind"`
	Page    int      `json:"page"`
	Sources []string `json:"sources,omitempty"` // who wrote what was lost
	Events  []string `json:"events,omitempty"`  // "op#N src"
	Gap     string   `json:"gap,omitempty"`     // known-gap class, "" if none
	State   string   `json:"state,omitempty"`   // pagemap/kpageflags facts at detection
	Detail  string   `json:"detail,omitempty"`
}

func (l Loss) String() string {
	s := fmt.Sprintf("%s r%d(%s) page %d after op %d", l.Kind, l.Region, l.RKind, l.Page, l.After)
	if len(l.Sources) > 0 {
		s += " sources " + strings.Join(l.Sources, ",")
	}
	if l.Gap != "" {
		s += " [known gap " + l.Gap + "]"
	}
	if l.State != "" {
		s += " (" + l.State + ")"
	}
	return s
}

// sources lists the non-external writers of the pending events.
func sources(evs []event) (srcs, desc []string) {
	for _, e := range evs {
		desc = append(desc, fmt.Sprintf("op#%d %s", e.Op, e.Src))
		if sourceClass[e.Src] != classExternal && !slices.Contains(srcs, e.Src) {
			srcs = append(srcs, e.Src)
		}
	}
	sort.Strings(srcs)
	return srcs, desc
}

// gapFor classifies a lost page against the documented gaps of tracker
// (guest/result.FuzzGaps decides which class excuses which tracker): ""
// is a finding.
func gapFor(tracker string, spec RegionSpec, st *pageState, srcs []string) string {
	// all: every source that surely wrote is of class (failed reads,
	// which may have written nothing, are left out), and one did.
	all := func(class string) bool {
		n := 0
		for _, s := range srcs {
			switch sourceClass[s] {
			case classMaybe:
			case class:
				n++
			default:
				return false
			}
		}
		return n > 0
	}
	for _, c := range []struct {
		class string
		holds bool
		// alone: when it holds, this class decides and no later one is
		// asked. A collapse over a write no zap had taken (coll is only
		// set then) and no zap since: the series keeps such writes (0014),
		// so for ldt that loss is a finding, not the shared-zap gap. A zap
		// after the collapse may have lost it: that stays excused below.
		alone bool
	}{
		// (Writes through a pin alone are the pin classes' to judge: a
		// tracker that never sees them loses them, collapse or not.)
		{GapShmemCollapse, spec.Shared() && st.coll && !st.zapped && !all(classPin), true},
		{GapSharedZap, spec.Shared() && st.zapped, false},
		{GapPinReadOnly, all(classPin) && st.pinRO, false},
		{GapKSM, st.ksm, false},
		{GapPinWrite, all(classPin), false},
		{GapRing, all(classRing), false},
		{GapShmemCollapse, spec.Shared() && st.coll, false},
	} {
		if !c.holds {
			continue
		}
		if result.FuzzGap(c.class, tracker) != "" {
			return c.class
		}
		if c.alone {
			return ""
		}
	}
	return ""
}

// Known-gap classes (guest/result.FuzzGaps explains each).
const (
	GapSharedZap     = "shared-zap"
	GapPinReadOnly   = "pin-readonly"
	GapPinWrite      = "pin-write"
	GapKSM           = "ksm"
	GapRing          = "ring"
	GapShmemCollapse = "shmem-collapse"
)

// Content patterns: every value a sequence writes is derived from its
// op's V, the page and the word, so the model can compute it.

// initWord is the content a region starts with.
func initWord(r, p, w int) uint64 {
	return 0x11<<56 | uint64(r)<<48 | uint64(p)<<16 | uint64(w)
}

// dataWord is the data file's content at byte offset off (8-aligned).
func dataWord(off int64) uint64 {
	return 0xd1<<56 | uint64(off>>3)*0x9e3779b97f4a7c15>>8
}

// fillWord is word w of a page filled by a write of value v.
func fillWord(v uint64, p, w int) uint64 {
	return (v ^ uint64(p)<<32 ^ uint64(w)*0x9e3779b97f4a7c15) | 1
}

func fillPage(b []byte, v uint64, p int) {
	for w := 0; w < pg/8; w++ {
		binary.LittleEndian.PutUint64(b[w*8:], fillWord(v, p, w))
	}
}

func dataPage(b []byte, off int64) {
	for w := 0; w < pg/8; w++ {
		binary.LittleEndian.PutUint64(b[w*8:], dataWord(off+int64(w*8)))
	}
}

// wordOf picks the word a one-word write of v into page i of an op lands in.
func wordOf(v uint64, i int) int { return int((v>>3)+uint64(i)*7) % (pg / 8) }

// wordVal is the value of that word.
func wordVal(v uint64, i int) uint64 { return v ^ uint64(i+1)*0x100000001b3 | 1<<63 }
