package scenario

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"unsafe"

	"golang.org/x/sys/unix"

	"ldtlab/guest/tracker"
)

// HugePage is the PMD size on x86-64.
const HugePage = 2 << 20

// Kind says how a segment of the working set is mapped.
type Kind int

const (
	Anon    Kind = iota // private anonymous, MADV_NOHUGEPAGE (4 KiB PTEs)
	AnonTHP             // private anonymous, MADV_HUGEPAGE
	File                // MAP_SHARED over Segment.FD
	// Foreign is a mapping the scenario did not make with Map (a ring the
	// kernel mapped and writes itself): its pages carry no stamps, are not
	// verified, and count as written only when the scenario says so.
	Foreign
)

// Segment is one mapping inside the working set. Its pages have the
// logical ids [FirstID, FirstID+Pages); Off is its current page offset
// inside the tracked range (mremap changes it).
type Segment struct {
	Name    string
	Kind    Kind
	Off     int
	Pages   int
	FirstID int
	FD      int
}

// Bytes is the segment's memory at its current place.
func (s *Segment) Bytes(ws *Workset) []byte {
	return ws.mem[s.Off*PageSize : (s.Off+s.Pages)*PageSize]
}

type pageState struct {
	seg  *Segment
	want uint64 // stamp the page must hold
	gen  uint64 // writes so far
}

type stampInfo struct {
	id  int
	gen uint64
}

// Workset is the tracked memory of a scenario and its oracle: one
// contiguous, 2 MiB aligned range (a PROT_NONE reservation with segments
// mapped into it), so every tracker can be opened on a single range —
// soft-dirty's clear is process-wide, so several ranges would make it
// forget writes. It knows every page's expected content and which logical
// pages were written since the last collection.
type Workset struct {
	seed    uint64
	res     []byte // the whole reservation, alignment slack included
	mem     []byte // the tracked, aligned range
	Base    uintptr
	Segs    []*Segment
	pages   []pageState
	written map[int]bool
	hints   map[int]string // page offset -> why an extra report is legitimate
	history map[uint64]stampInfo
}

// NewWorkset reserves pages of address space (2 MiB aligned) for
// segments. The reservation stays PROT_NONE where no segment is mapped.
func NewWorkset(seed uint64, pages int) (*Workset, error) {
	size := pages * PageSize
	res, err := unix.Mmap(-1, 0, size+HugePage, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("reserve %d pages: %w", pages, err)
	}
	start := uintptr(unsafe.Pointer(&res[0]))
	off := int((HugePage - start%HugePage) % HugePage)
	ws := &Workset{
		seed:    seed,
		res:     res,
		mem:     res[off : off+size],
		written: map[int]bool{},
		hints:   map[int]string{},
		history: map[uint64]stampInfo{},
	}
	ws.Base = uintptr(unsafe.Pointer(&ws.mem[0]))
	return ws, nil
}

// NewWorksetBelow reserves pages of address space that end exactly at
// top (MAP_FIXED_NOREPLACE: it fails with EEXIST when something is mapped
// there) and tracks them together with the above bytes mapped at top
// already: a mapping the kernel placed and that cannot be moved (an
// io_uring ring), to be declared with Adopt. top is given as the slice
// that starts there. The range is page aligned, not 2 MiB aligned.
func NewWorksetBelow(seed uint64, pages int, top []byte, above int) (*Workset, error) {
	size := pages * PageSize
	at := unsafe.Add(unsafe.Pointer(&top[0]), -size)
	p, err := unix.MmapPtr(-1, 0, at, uintptr(size), unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE|unix.MAP_FIXED_NOREPLACE)
	if err != nil {
		return nil, fmt.Errorf("reserve %d pages below %p: %w", pages, &top[0], err)
	}
	if p != at {
		// A kernel without MAP_FIXED_NOREPLACE treats it as a hint.
		unix.MunmapPtr(p, uintptr(size))
		return nil, fmt.Errorf("reserve %d pages below %p: got %p: %w", pages, &top[0], p, unix.EEXIST)
	}
	ws := &Workset{
		seed:    seed,
		res:     unsafe.Slice((*byte)(p), size),
		mem:     unsafe.Slice((*byte)(p), size+above),
		written: map[int]bool{},
		hints:   map[int]string{},
		history: map[uint64]stampInfo{},
	}
	ws.Base = uintptr(p)
	return ws, nil
}

// Adopt declares n pages at page offset off, mapped by the caller, as a
// Foreign segment.
func (ws *Workset) Adopt(name string, off, n int) (*Segment, error) {
	if off < 0 || n <= 0 || off+n > ws.Len() {
		return nil, fmt.Errorf("segment %s [%d,%d) outside the working set of %d pages", name, off, off+n, ws.Len())
	}
	s := &Segment{Name: name, Kind: Foreign, Off: off, Pages: n, FirstID: len(ws.pages), FD: -1}
	for range n {
		ws.pages = append(ws.pages, pageState{seg: s})
	}
	ws.Segs = append(ws.Segs, s)
	return s, nil
}

// Unadopt forgets a Foreign segment whose mapping is gone: nothing is
// mapped there any more and the range is left as a hole (the tracked
// range keeps its extent).
func (ws *Workset) Unadopt(s *Segment) {
	ws.Segs = slices.DeleteFunc(ws.Segs, func(x *Segment) bool { return x == s })
}

// End is the first address after the tracked range.
func (ws *Workset) End() uintptr { return ws.Base + uintptr(len(ws.mem)) }

// Len is the tracked range in pages.
func (ws *Workset) Len() int { return len(ws.mem) / PageSize }

// Mem is the tracked range.
func (ws *Workset) Mem() []byte { return ws.mem }

// Close unmaps everything.
func (ws *Workset) Close() error {
	var errs []error
	for _, s := range ws.Segs {
		if s.FD > 0 {
			errs = append(errs, unix.Close(s.FD))
		}
	}
	errs = append(errs, unix.Munmap(ws.res))
	return errors.Join(errs...)
}

// Map maps a segment of n pages at page offset off. File segments map fd
// (its first n pages) shared; the caller keeps fd open until Close.
func (ws *Workset) Map(name string, kind Kind, off, n, fd int) (*Segment, error) {
	if off < 0 || n <= 0 || off+n > ws.Len() {
		return nil, fmt.Errorf("segment %s [%d,%d) outside the working set of %d pages", name, off, off+n, ws.Len())
	}
	s := &Segment{Name: name, Kind: kind, Off: off, Pages: n, FirstID: len(ws.pages), FD: -1}
	flags := unix.MAP_FIXED
	mfd := -1
	if kind == File {
		flags |= unix.MAP_SHARED
		mfd = fd
		s.FD = fd
	} else {
		flags |= unix.MAP_PRIVATE | unix.MAP_ANONYMOUS
	}
	b := ws.mem[off*PageSize : (off+n)*PageSize]
	if _, err := unix.MmapPtr(mfd, 0, unsafe.Pointer(&b[0]), uintptr(len(b)), unix.PROT_READ|unix.PROT_WRITE, flags); err != nil {
		return nil, fmt.Errorf("map segment %s: %w", name, err)
	}
	switch kind {
	case Anon:
		// 4 KiB PTEs keep page-granular scenarios page granular.
		_ = unix.Madvise(b, unix.MADV_NOHUGEPAGE)
	case AnonTHP:
		if err := unix.Madvise(b, unix.MADV_HUGEPAGE); err != nil {
			return nil, fmt.Errorf("segment %s MADV_HUGEPAGE: %w", name, err)
		}
	}
	for range n {
		ws.pages = append(ws.pages, pageState{seg: s})
	}
	ws.Segs = append(ws.Segs, s)
	return s, nil
}

// IDs is the number of logical pages.
func (ws *Workset) IDs() int { return len(ws.pages) }

// Off is the current page offset of logical page id.
func (ws *Workset) Off(id int) int {
	p := ws.pages[id]
	return p.seg.Off + id - p.seg.FirstID
}

// Addr is the current address of logical page id.
func (ws *Workset) Addr(id int) uintptr { return ws.Base + uintptr(ws.Off(id))*PageSize }

// Page is the memory of logical page id.
func (ws *Workset) Page(id int) []byte {
	o := ws.Off(id) * PageSize
	return ws.mem[o : o+PageSize : o+PageSize]
}

// Want is the stamp logical page id must hold.
func (ws *Workset) Want(id int) uint64 { return ws.pages[id].want }

// next advances page id to its next generation and returns the stamp.
func (ws *Workset) next(id int) uint64 {
	p := &ws.pages[id]
	p.gen++
	s := StampFor(ws.seed, id, p.gen)
	ws.history[s] = stampInfo{id, p.gen}
	return s
}

// Write writes the next generation of page id with the CPU.
func (ws *Workset) Write(id int) {
	s := ws.next(id)
	Fill(ws.Page(id), s)
	ws.pages[id].want = s
	ws.written[id] = true
}

// WriteShared writes a stamp common to many pages (KSM merges them). The
// stamp is still a new generation for the oracle's history.
func (ws *Workset) WriteShared(id int, s uint64) {
	ws.pages[id].gen++
	ws.history[s] = stampInfo{-1, 0}
	Fill(ws.Page(id), s)
	ws.pages[id].want = s
	ws.written[id] = true
}

// WriteWith writes the next generation of page id through fn (a kernel
// path: process_vm_writev, /proc/PID/mem, O_DIRECT...). fn gets the page's
// address and its new content; the page counts as written only if fn
// succeeds.
func (ws *Workset) WriteWith(id int, fn func(addr uintptr, data []byte) error) error {
	p := ws.pages[id]
	s := ws.next(id)
	if err := fn(ws.Addr(id), Content(s)); err != nil {
		ws.pages[id] = p
		return err
	}
	ws.pages[id].want = s
	ws.written[id] = true
	return nil
}

// Expect records content that changed without a write the trackers are
// meant to see (MADV_DONTNEED zeroes a page, for instance).
func (ws *Workset) Expect(id int, s uint64) { ws.pages[id].want = s }

// MarkWritten records a write made elsewhere (another process wrote the
// page with the stamp ws.Want(id) after Expect).
func (ws *Workset) MarkWritten(id int) { ws.written[id] = true }

// NextStamp advances page id's generation without writing, for writes the
// scenario performs itself (another process, a file): the caller writes
// the returned stamp and then calls Expect and MarkWritten.
func (ws *Workset) NextStamp(id int) uint64 { return ws.next(id) }

// Hint classifies extra reports of the pages of a segment-relative range
// this epoch: a tracker reporting them although they were not written is
// legitimate for reason (e.g. soft-dirty on a new VMA).
func (ws *Workset) Hint(off, n int, reason string) {
	for o := off; o < off+n; o++ {
		if _, ok := ws.hints[o]; !ok {
			ws.hints[o] = reason
		}
	}
}

// Written returns the pages written since the last EndEpoch, as addresses.
func (ws *Workset) Written() tracker.Set {
	s := tracker.Set{}
	for id := range ws.written {
		s.Add(ws.Addr(id))
	}
	return s
}

// WrittenCount is the number of pages written this epoch.
func (ws *Workset) WrittenCount() int { return len(ws.written) }

// EpochStat is the oracle's verdict on one collection.
type EpochStat struct {
	Written    int
	Reported   int
	Missed     []uintptr
	Extra      int
	Classified map[string]int
	// ReportedOffs are the page offsets reported, for LDT/soft-dirty
	// comparisons between runs at different addresses.
	ReportedOffs []int
}

// Judge compares a collection's regions with the pages written since the
// last Judge and starts a new epoch.
func (ws *Workset) Judge(rs []tracker.Region) EpochStat {
	reported := tracker.NewSet(rs...)
	truth := ws.Written()
	missed, extra := tracker.Diff(reported, truth)
	st := EpochStat{
		Written:    truth.Len(),
		Reported:   reported.Len(),
		Missed:     missed.Sorted(),
		Extra:      extra.Len(),
		Classified: map[string]int{},
	}
	for _, p := range reported.Sorted() {
		if p >= ws.Base && p < ws.End() {
			st.ReportedOffs = append(st.ReportedOffs, int((p-ws.Base)/PageSize))
		}
	}
	for p := range extra {
		st.Classified[ws.classify(p, truth)]++
	}
	clear(ws.written)
	clear(ws.hints)
	return st
}

// classify says why a tracker may legitimately have reported page p,
// which was not written this epoch.
func (ws *Workset) classify(p uintptr, truth tracker.Set) string {
	if p < ws.Base || p >= ws.End() {
		return "outside-range"
	}
	off := int((p - ws.Base) / PageSize)
	if r, ok := ws.hints[off]; ok {
		return r
	}
	if s := ws.segAt(off); s == nil {
		return "unmapped-reservation"
	} else if s.Kind == AnonTHP {
		// A PMD-mapped THP is tracked at 2 MiB granularity.
		blk := p &^ (HugePage - 1)
		for q := blk; q < blk+HugePage; q += PageSize {
			if truth.Has(q) {
				return "thp-pmd-granularity"
			}
		}
	}
	return "unclassified"
}

func (ws *Workset) segAt(off int) *Segment {
	for _, s := range ws.Segs {
		if off >= s.Off && off < s.Off+s.Pages {
			return s
		}
	}
	return nil
}

// Corruption is one page whose content is not the last written stamp.
type Corruption struct {
	ID   int
	Addr uintptr
	Want uint64
	What string
}

func (c Corruption) String() string {
	return fmt.Sprintf("page %d at %#x: %s", c.ID, c.Addr, c.What)
}

// describe explains what page b holds instead of stamp want.
func (ws *Workset) describe(id int, b []byte) string {
	h := Header(b)
	want := ws.pages[id]
	switch {
	case isZero(b):
		return fmt.Sprintf("all zeros, want generation %d (data lost)", want.gen)
	case h == want.want:
		return "right header, wrong body (torn or partial write)"
	}
	if si, ok := ws.history[h]; ok && Matches(b, h) {
		if si.id == id {
			return fmt.Sprintf("stale generation %d, want %d (a newer write was lost)", si.gen, want.gen)
		}
		return fmt.Sprintf("content of page %d generation %d, want generation %d of this page", si.id, si.gen, want.gen)
	}
	return fmt.Sprintf("unrecognised content (header %#x), want generation %d", h, want.gen)
}

// Verify checks every logical page against its expected content, reading
// each page with read (nil: the CPU, through this process's mapping).
// Reading swaps pages in, which several scenarios rely on.
func (ws *Workset) Verify(read func(addr uintptr, buf []byte) error) ([]Corruption, error) {
	var out []Corruption
	buf := make([]byte, PageSize)
	for id := range ws.pages {
		if ws.pages[id].seg.Kind == Foreign {
			continue
		}
		b := ws.Page(id)
		if read != nil {
			if err := read(ws.Addr(id), buf); err != nil {
				return out, fmt.Errorf("read page %d at %#x: %w", id, ws.Addr(id), err)
			}
			b = buf
		}
		if !Matches(b, ws.pages[id].want) {
			out = append(out, Corruption{ID: id, Addr: ws.Addr(id), Want: ws.pages[id].want, What: ws.describe(id, b)})
		}
	}
	return out, nil
}

// VerifyFile checks the file behind segment s page by page with pread on
// fd (the caller opens it, e.g. with O_DIRECT or after dropping caches).
func (ws *Workset) VerifyFile(s *Segment, f *os.File) ([]Corruption, error) {
	var out []Corruption
	buf, err := unix.Mmap(-1, 0, PageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, err
	}
	defer unix.Munmap(buf)
	for i := range s.Pages {
		id := s.FirstID + i
		if _, err := f.ReadAt(buf, int64(i*PageSize)); err != nil {
			return out, fmt.Errorf("read file page %d: %w", i, err)
		}
		if !Matches(buf, ws.pages[id].want) {
			out = append(out, Corruption{ID: id, Addr: ws.Addr(id), Want: ws.pages[id].want, What: "on disk: " + ws.describe(id, buf)})
		}
	}
	return out, nil
}

// Move records that segment s now starts at page offset off (after an
// mremap the caller performed).
func (ws *Workset) Move(s *Segment, off int) { s.Off = off }

// Pick returns k distinct logical ids from [first, first+n), sorted, drawn
// with r — the scenario's seeded choice of pages to write.
func Pick(r interface{ IntN(int) int }, first, n, k int) []int {
	k = min(k, n)
	seen := map[int]bool{}
	out := make([]int, 0, k)
	for len(out) < k {
		id := first + r.IntN(n)
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}
