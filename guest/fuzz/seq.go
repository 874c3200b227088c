// Package fuzz is ldt-fuzz: a model-based search over page states and
// kernel paths. A sequence is a few small regions (private or shared
// anonymous memory, memfd, a file on the data disk, io_uring and AIO ring
// pages; 4 KiB, mTHP or PMD THP) and a list of operations on them (CPU and
// kernel writes, pins taken and dropped, madvise, mprotect, mremap, fork,
// KSM, migration, NUMA balancing, soft-dirty and uffd-wp co-trackers, and
// collections). Every tracker runs the same sequence in a fresh process
// (exec.go) against a ground-truth model of every page (model.go): after
// each collection the reported pages are copied into a shadow, and the
// shadow must equal memory wherever the model says the page is stable;
// memory must equal the model wherever the model knows the content. A
// failure is minimized (Minimize, driver.go) and saved as a replay file.
package fuzz

import (
	"encoding/json"
	"fmt"
	"strings"
)

// Region kinds.
const (
	KAnon       = "anon"        // MAP_PRIVATE|MAP_ANONYMOUS
	KSharedAnon = "shared-anon" // MAP_SHARED|MAP_ANONYMOUS (shmem)
	KMemfd      = "memfd"       // MAP_SHARED of a memfd (shmem)
	KFile       = "file"        // MAP_SHARED of a file on the data disk
	KUringRing  = "uring-ring"  // the io_uring SQ/CQ ring mapping (the kernel posts CQEs)
	KAIORing    = "aio-ring"    // the AIO completion ring (the kernel posts events)
)

// RegionSpec is one region of a sequence.
type RegionSpec struct {
	Kind  string `json:"kind"`
	Pages int    `json:"pages"`
	// THP: "" small pages (MADV_NOHUGEPAGE; shmem small folios), "pmd"
	// (MADV_HUGEPAGE, 2 MiB aligned: a PMD THP), or an anonymous mTHP size
	// ("64kB": hugepages-64kB enabled for the run).
	THP string `json:"thp,omitempty"`
}

// Name is the region's kind and page size, as titles say it.
func (r RegionSpec) Name() string {
	if r.THP != "" {
		return r.Kind + "/" + r.THP
	}
	return r.Kind
}

// Ring tells a region the kernel writes through its own mapping.
func (r RegionSpec) Ring() bool { return r.Kind == KUringRing || r.Kind == KAIORing }

// Shared tells a MAP_SHARED region (its PTEs are zapped, not swapped, on
// reclaim: kmod/README row 2).
func (r RegionSpec) Shared() bool {
	return r.Kind == KSharedAnon || r.Kind == KMemfd || r.Kind == KFile
}

// Op is one operation. Which fields matter depends on Op; every value an
// operation writes is in it (V), so dropping other operations (minimizing)
// never changes what this one does.
type Op struct {
	Op    string    `json:"op"`
	R     int       `json:"r"`             // region index (collect: -1 = every region)
	P     int       `json:"p,omitempty"`   // first page
	N     int       `json:"n,omitempty"`   // pages (or count, milliseconds)
	V     uint64    `json:"v,omitempty"`   // value seed
	Off   int       `json:"off,omitempty"` // data file page offset
	Arg   string    `json:"arg,omitempty"` // advice, protection, mode
	Clear bool      `json:"clear,omitempty"`
	W     []PageRef `json:"w,omitempty"` // fork: pages the child writes
}

// PageRef names a page of a region.
type PageRef struct {
	R int `json:"r"`
	P int `json:"p"`
}

func (o Op) String() string {
	b, _ := json.Marshal(o)
	return string(b)
}

// Operations.
const (
	OpWrite    = "write"    // CPU stores into [P,P+N): Arg byte | word | page | threads
	OpRead     = "read"     // CPU loads (faults pages in)
	OpPVM      = "pvm"      // process_vm_writev 8 bytes into each page (GUP, pins)
	OpProcMem  = "procmem"  // pwrite 8 bytes into each page through /proc/self/mem (FOLL_FORCE)
	OpODirect  = "odirect"  // O_DIRECT pread from the data file into the pages
	OpMadvise  = "madvise"  // Arg: free, dontneed, cold, pageout, collapse, hugepage, nohugepage, populate-write, wipeonfork, keeponfork, unmergeable
	OpMprotect = "mprotect" // Arg: r, none, rw
	OpMremap   = "mremap"   // move the whole region to a free arena slot, shifted by P pages
	OpRemap    = "remap"    // mmap MAP_FIXED over the region: a fresh mapping of the same kind
	OpMsync    = "msync"    // msync(MS_SYNC): writeback cleans the folios (folio_mkclean)
	OpFork     = "fork"     // fork; the child writes W; Arg keep: the child stays alive until fork-exit
	OpForkExit = "fork-exit"
	OpKSM      = "ksm"     // make [P,P+N) identical, MADV_MERGEABLE, let ksmd merge
	OpMigrate  = "migrate" // move_pages [P,P+N) to node V%nodes
	OpNUMA     = "numa"    // Arg on | off: kernel.numa_balancing with a fast scan
	OpSpin     = "spin"    // N ms of CPU reading every region (NUMA hinting faults)
	OpCompact  = "compact" // /proc/sys/vm/compact_memory
	// pte-map: mprotect page P of the THP block [P,P+512) read-only, read
	// every page while the VMA is split (the THP gets mapped by PTEs), and
	// put the protection back (the VMAs merge again).
	OpPTEMap = "pte-map"
	// khugepaged: let khugepaged scan every mm twice, fast (collapse of
	// PTE-mapped THPs, retract of a shmem THP's page table).
	OpKhugepaged = "khugepaged"
	// detach closes the tracker under test; attach opens a new one, which
	// starts from a full copy (a checkpointer that stops, then starts
	// tracking the running process again).
	OpDetach   = "detach"
	OpAttach   = "attach"
	OpSleep    = "sleep" // N ms
	OpClearRef = "clear-refs"
	OpUffdWP   = "uffd-wp" // Arg on | off: UFFDIO_WRITEPROTECT [P,P+N) with a co-tracker's async uffd
	OpPMScan   = "pm-scan" // PAGEMAP_SCAN WP_MATCHING over the region with the co-tracker's uffd
	OpUNop     = "uring-nop"
	OpURead    = "uring-read"       // IORING_OP_READ into [P,P+N) (Arg direct: O_DIRECT)
	OpUReg     = "uring-reg"        // register the region as fixed buffer 0 (FOLL_PIN|FOLL_LONGTERM)
	OpUReadFix = "uring-read-fixed" // IORING_OP_READ_FIXED into buffer 0 at page P
	OpUUnreg   = "uring-unreg"
	OpAIORead  = "aio-read" // io_submit PREAD into [P,P+N) (Arg direct), io_getevents
	OpXPin     = "xpin"     // another process maps the region's object and registers it as its fixed buffer
	OpXWrite   = "xwrite"   // that process's READ_FIXED into page P (written through its pin)
	OpXUnpin   = "xunpin"
	OpUdmabuf  = "udmabuf" // a dma-buf over memfd pages [P,P+N) (memfd_pin_folios: no mm pins them) written through its own mapping; Arg hold: closed after the next collection
	OpCollect  = "collect" // the tracker under test; Clear: collect+clear
)

// Sequence is what ldt-fuzz draws, runs under every tracker and saves as a
// replay file.
type Sequence struct {
	Seed    uint64       `json:"seed"`
	Regions []RegionSpec `json:"regions"`
	Ops     []Op         `json:"ops"`
}

// MTHP is the anonymous mTHP size the sequence enables ("" none).
func (s *Sequence) MTHP() string {
	for _, r := range s.Regions {
		if r.Kind == KAnon && r.THP != "" && r.THP != "pmd" {
			return r.THP
		}
	}
	return ""
}

// Clone copies s deeply.
func (s *Sequence) Clone() *Sequence {
	c := &Sequence{Seed: s.Seed, Regions: append([]RegionSpec(nil), s.Regions...)}
	c.Ops = make([]Op, len(s.Ops))
	for i, o := range s.Ops {
		o.W = append([]PageRef(nil), o.W...)
		c.Ops[i] = o
	}
	return c
}

// Validate checks indices and sizes, so a hand-edited replay file fails
// with a message rather than a crash.
func (s *Sequence) Validate() error {
	if len(s.Regions) == 0 || len(s.Regions) > maxRegions {
		return fmt.Errorf("sequence: %d regions (want 1..%d)", len(s.Regions), maxRegions)
	}
	for i, r := range s.Regions {
		switch r.Kind {
		case KAnon, KSharedAnon, KMemfd, KFile, KUringRing, KAIORing:
		default:
			return fmt.Errorf("sequence: region %d: unknown kind %q", i, r.Kind)
		}
		if !r.Ring() && (r.Pages <= 0 || r.Pages > slotPages) {
			return fmt.Errorf("sequence: region %d: %d pages (want 1..%d)", i, r.Pages, slotPages)
		}
	}
	for i, o := range s.Ops {
		if o.R < -1 || o.R >= len(s.Regions) {
			return fmt.Errorf("sequence: op %d (%s): region %d out of range", i, o.Op, o.R)
		}
		if o.P < 0 || o.N < 0 || o.Off < 0 || o.N > 1<<16 {
			return fmt.Errorf("sequence: op %d (%s): negative or huge page, count or offset", i, o.Op)
		}
		for _, w := range o.W {
			if w.R < 0 || w.R >= len(s.Regions) || w.P < 0 {
				return fmt.Errorf("sequence: op %d (%s): child write to region %d page %d out of range", i, o.Op, w.R, w.P)
			}
		}
	}
	return nil
}

// Describe is the sequence in one line per operation, for reports.
func (s *Sequence) Describe() string {
	var b strings.Builder
	for i, r := range s.Regions {
		if r.Ring() {
			fmt.Fprintf(&b, "r%d: %s (the kernel's ring mapping)\n", i, r.Name())
			continue
		}
		fmt.Fprintf(&b, "r%d: %s, %d pages\n", i, r.Name(), r.Pages)
	}
	for i, o := range s.Ops {
		fmt.Fprintf(&b, "%3d %s\n", i, o.Short())
	}
	return b.String()
}

// Short is an operation in a few words.
func (o Op) Short() string {
	var parts []string
	parts = append(parts, o.Op)
	switch o.Op {
	case OpCollect:
		if o.R >= 0 {
			parts = append(parts, fmt.Sprintf("r%d", o.R))
		} else {
			parts = append(parts, "all")
		}
		if o.Clear {
			parts = append(parts, "+clear")
		}
		return strings.Join(parts, " ")
	case OpNUMA, OpClearRef, OpCompact, OpKhugepaged, OpDetach, OpAttach, OpUNop, OpUUnreg, OpXUnpin, OpForkExit, OpSleep, OpSpin:
		if o.Arg != "" {
			parts = append(parts, o.Arg)
		}
		if o.N > 0 {
			parts = append(parts, fmt.Sprint(o.N))
		}
		return strings.Join(parts, " ")
	}
	if o.Op == OpUReadFix || o.Op == OpXWrite {
		parts = append(parts, fmt.Sprintf("page %d+%d", o.P, max(o.N, 1)))
	} else {
		parts = append(parts, fmt.Sprintf("r%d[%d+%d]", o.R, o.P, max(o.N, 1)))
	}
	if o.Arg != "" {
		parts = append(parts, o.Arg)
	}
	if o.Op == OpFork {
		parts = append(parts, fmt.Sprintf("child writes %d pages", len(o.W)))
	}
	return strings.Join(parts, " ")
}
