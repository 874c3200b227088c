package fuzz

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"ldtlab/guest/numa"
	"ldtlab/guest/pagemap"
	"ldtlab/guest/tracker"
	"ldtlab/guest/udmabuf"
)

// Arena layout: regions live in 4 MiB slots of one PROT_NONE reservation
// (2 MiB aligned, so PMD THPs can form); slots past maxRegions receive
// mremap'd regions.
const (
	maxRegions = 4
	slotPages  = 1024
	nSlots     = 16
	dataPages  = 4096 // the data file: 16 MiB
)

// ExecConfig is one run of a sequence under one tracker.
type ExecConfig struct {
	Tracker  string
	DataFile string // the data file (dataWord content), on a block device
	DataDir  string // where file regions are created
	// Self is the program to exec for the pinning helper (default
	// /proc/self/exe).
	Self string
}

// ExecResult is what one run found.
type ExecResult struct {
	Tracker string `json:"tracker"`
	NA      string `json:"na,omitempty"` // why the tracker cannot run this sequence
	Losses  []Loss `json:"losses,omitempty"`
	// Quiet: pages reported by the last collection, made right after
	// another with nothing written in between (must be 0).
	Quiet       int    `json:"quiet_reported"`
	QuietSample string `json:"quiet_sample,omitempty"`
	// QuietPinLag: pages the quiet collection reported that a direct
	// read targeted (see region.dio): counted, not a finding.
	QuietPinLag int            `json:"quiet_pin_lag,omitempty"`
	Collections int            `json:"collections"`
	Checked     int            `json:"pages_checked"`
	Reported    int            `json:"pages_reported"`
	OpsDone     map[string]int `json:"ops_done,omitempty"`   // operations that did what they say
	OpsFailed   map[string]int `json:"ops_failed,omitempty"` // refused by the kernel (EINVAL, EBUSY...)
	Facts       []string       `json:"facts,omitempty"`
	Error       string         `json:"error,omitempty"`
	TookMS      int64          `json:"took_ms"`
	// TimeMS is where the time went: setup, each operation, final.
	TimeMS map[string]int64 `json:"time_ms,omitempty"`
}

func (r *ExecResult) fact(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	if !slices.Contains(r.Facts, s) && len(r.Facts) < 64 {
		r.Facts = append(r.Facts, s)
	}
}

// Lost counts lost pages and corrupted pages.
func (r *ExecResult) Lost() (lost, corrupted int) {
	for _, l := range r.Losses {
		if l.Kind == "corrupted" {
			corrupted++
		} else {
			lost++
		}
	}
	return
}

// region is one region at run time.
type region struct {
	idx    int
	spec   RegionSpec
	base   uintptr
	n      int
	fd     int // memfd or file, -1
	path   string
	prot   []int
	model  []byte
	shadow []byte
	st     []pageState
	uffd   bool // registered with the co-tracker's uffd
	noUffd bool // registration refused
	// dio: pages a direct read (O_DIRECT, AIO or io_uring with O_DIRECT)
	// targeted. The block layer may drop its pins after the completion
	// the program waited for (bio_check_pages_dirty() defers the unpin
	// of pages it must dirty to a workqueue), so a tracker's pin rule may
	// report them once more as late as the quiet collection.
	dio map[int]bool
}

func (r *region) end() uintptr { return r.base + uintptr(r.n)*pg }

func (r *region) mem() []byte { return bytesAt(r.base, r.n*pg) }

func (r *region) page(p int) []byte { return r.mem()[p*pg : (p+1)*pg] }

func (r *region) writable(p int) bool { return r.prot[p]&unix.PROT_WRITE != 0 }

// touch loads a byte of every readable page of [p,p+n): a read fault
// where a page is not mapped. The sum goes to readSink, or the compiler
// drops the loads.
func (r *region) touch(p, n int) {
	m := r.mem()
	var sink byte
	for q := p; q < p+n; q++ {
		if r.prot[q]&unix.PROT_READ != 0 {
			sink += m[q*pg]
		}
	}
	readSink += sink
}

// executor runs one sequence under one tracker in this process.
type executor struct {
	cfg     ExecConfig
	seq     *Sequence
	res     *ExecResult
	arena   uintptr
	regions []*region
	under   *underTest
	uring   *uring
	aio     *aioCtx
	dataFd  int
	dataDio int
	procMem *os.File
	pm      *pagemap.File
	helper  *xhelper
	dmabufs []*udmabuf.Buf // udmabuf holds: closed after the next collection
	child   *forkChild
	uffd    int
	restore []func()
	numaOn  bool
	moves   int
	regIdx  int // the region registered as io_uring fixed buffer 0
	// regGone: the registered region was mapped anew (remap of anonymous
	// memory): the buffer pins pages no mapping of the process shows.
	regGone bool
	buf     []byte
}

// Exec runs seq under cfg.Tracker. It must run in a fresh process: pins
// leave MMF_HAS_PINNED on the address space for good, and soft-dirty's
// clear is process-wide.
func Exec(seq *Sequence, cfg ExecConfig) *ExecResult {
	start := time.Now()
	res := &ExecResult{Tracker: cfg.Tracker, OpsDone: map[string]int{}, OpsFailed: map[string]int{}, TimeMS: map[string]int64{}}
	defer func() { res.TookMS = time.Since(start).Milliseconds() }()
	if err := seq.Validate(); err != nil {
		res.Error = err.Error()
		return res
	}
	if why := NotFor(cfg.Tracker, seq); why != "" {
		res.NA = why
		return res
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if cfg.Self == "" {
		cfg.Self = "/proc/self/exe"
	}
	e := &executor{cfg: cfg, seq: seq, res: res, dataFd: -1, dataDio: -1, uffd: -1, regIdx: -1, buf: make([]byte, pg)}
	defer e.teardown()
	t0 := time.Now()
	if err := e.setup(); err != nil {
		if errors.Is(err, tracker.ErrUnsupported) {
			// A vanilla kernel has no /dev/ldt: the tracker is N/A there.
			res.NA = err.Error()
			return res
		}
		res.Error = "setup: " + err.Error()
		return res
	}
	res.TimeMS["setup"] += time.Since(t0).Milliseconds()
	for i, op := range seq.Ops {
		t0 = time.Now()
		if err := e.do(i, op); err != nil {
			res.Error = fmt.Sprintf("op %d (%s): %v", i, op.Short(), err)
			return res
		}
		res.TimeMS[op.Op] += time.Since(t0).Milliseconds()
	}
	t0 = time.Now()
	if err := e.final(); err != nil {
		res.Error = "final collection: " + err.Error()
	}
	res.TimeMS["final"] += time.Since(t0).Milliseconds()
	return res
}

// NotFor says why tracker cannot run seq ("" = it can).
func NotFor(tr string, seq *Sequence) string {
	switch tr {
	case "pagemap-scan":
		for i, r := range seq.Regions {
			switch r.Kind {
			case KFile:
				return fmt.Sprintf("region %d is a file mapping: userfaultfd write-protection needs anonymous or shmem memory", i)
			case KUringRing, KAIORing:
				return fmt.Sprintf("region %d is a kernel ring mapping: userfaultfd cannot register it", i)
			}
		}
		for _, o := range seq.Ops {
			switch o.Op {
			case OpMremap, OpRemap:
				return "the sequence moves or replaces a mapping: its userfaultfd registration does not follow"
			case OpUffdWP, OpPMScan:
				return "the sequence uses userfaultfd write-protection itself: the tracker owns it"
			}
		}
	case "softdirty":
		for _, o := range seq.Ops {
			if o.Op == OpClearRef {
				return "the sequence clears soft-dirty itself (clear_refs): the tracker owns it"
			}
		}
	case "ldt", "naive":
	default:
		if !tracker.Known(tr) {
			return "unknown tracker " + tr
		}
	}
	return ""
}

func (e *executor) setup() error {
	a, err := unix.Mmap(-1, 0, (nSlots+1)*slotPages*pg, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return fmt.Errorf("reserving the arena: %w", err)
	}
	// Align to 2 MiB inside the reservation (one slot of slack).
	e.arena = (uintptr(unsafe.Pointer(&a[0])) + (2<<20 - 1)) &^ (2<<20 - 1)
	e.procMem, err = os.OpenFile("/proc/self/mem", os.O_RDWR, 0)
	if err != nil {
		return err
	}
	if e.pm, err = pagemap.Open(0); err != nil {
		return err
	}
	if e.dataFd, err = unix.Open(e.cfg.DataFile, unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
		return fmt.Errorf("open %s: %w", e.cfg.DataFile, err)
	}
	if e.dataDio, err = unix.Open(e.cfg.DataFile, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_DIRECT, 0); err != nil {
		// Not on a block device (a unit test's tmpfs): direct reads fail.
		e.res.fact("no O_DIRECT on %s: %v", e.cfg.DataFile, err)
		e.dataDio = -1
	}
	if err := e.knobs(); err != nil {
		return err
	}
	t0 := time.Now()
	for i, spec := range e.seq.Regions {
		r, err := e.newRegion(i, spec)
		if err != nil {
			return fmt.Errorf("region %d (%s): %w", i, spec.Name(), err)
		}
		e.regions = append(e.regions, r)
	}
	e.res.TimeMS["setup: regions"] += time.Since(t0).Milliseconds()
	t0 = time.Now()
	for _, r := range e.regions {
		e.describe(r)
	}
	e.res.TimeMS["setup: describe"] += time.Since(t0).Milliseconds()
	t0 = time.Now()
	if e.under, err = openUnder(e.cfg.Tracker, e.regions); err != nil {
		return err
	}
	defer func() { e.res.TimeMS["setup: tracker"] += time.Since(t0).Milliseconds() }()
	// Everything up to here is history: collect it away, then the shadow
	// and the model start as memory is now.
	if _, err := e.under.collect(e.regions, true); err != nil {
		return fmt.Errorf("initial collection: %w", err)
	}
	for _, r := range e.regions {
		m := r.mem()
		copy(r.shadow, m)
		copy(r.model, m)
		for p := range r.st {
			r.st[p] = pageState{known: !r.spec.Ring()}
		}
	}
	return nil
}

// knobs sets what the sequence's regions need for the run; the driver
// restores every knob after each run as well (a crashed run included).
func (e *executor) knobs() error {
	if m := e.seq.MTHP(); m != "" {
		if err := e.knob("/sys/kernel/mm/transparent_hugepage/hugepages-"+m+"/enabled", "always"); err != nil {
			return err
		}
	}
	for _, r := range e.seq.Regions {
		if (r.Kind == KMemfd || r.Kind == KSharedAnon) && r.THP == "pmd" {
			if err := e.knob("/sys/kernel/mm/transparent_hugepage/shmem_enabled", "advise"); err != nil {
				return err
			}
			break
		}
	}
	return nil
}

func (e *executor) knob(path, val string) error {
	restore, err := SetKnob(path, val)
	if err != nil {
		return err
	}
	e.restore = append(e.restore, restore)
	return nil
}

func (e *executor) slot(i int) uintptr { return e.arena + uintptr(i)*slotPages*pg }

func (e *executor) newRegion(i int, spec RegionSpec) (*region, error) {
	r := &region{idx: i, spec: spec, fd: -1, n: spec.Pages}
	switch spec.Kind {
	case KUringRing:
		if err := e.needUring(); err != nil {
			return nil, err
		}
		base, n := e.uring.ringRange()
		r.base, r.n = base, (n+pg-1)/pg
	case KAIORing:
		if err := e.needAIO(); err != nil {
			return nil, err
		}
		n, err := mappingSize(uintptr(e.aio.id))
		if err != nil {
			return nil, err
		}
		r.base, r.n = uintptr(e.aio.id), n/pg
	default:
		r.base = e.slot(i)
		if err := e.mapRegion(r, true); err != nil {
			return nil, err
		}
	}
	r.prot = make([]int, r.n)
	for p := range r.prot {
		r.prot[p] = unix.PROT_READ | unix.PROT_WRITE
	}
	r.model, r.shadow, r.st = make([]byte, r.n*pg), make([]byte, r.n*pg), make([]pageState, r.n)
	if !spec.Ring() {
		// Populate: every page has content (and a THP forms where asked).
		m := r.mem()
		for p := 0; p < r.n; p++ {
			for w := 0; w < pg/8; w++ {
				*(*uint64)(unsafe.Pointer(&m[p*pg+w*8])) = initWord(i, p, w)
			}
		}
	}
	return r, nil
}

// mapRegion maps r at r.base (MAP_FIXED); first creates its object.
func (e *executor) mapRegion(r *region, first bool) error {
	flags := unix.MAP_FIXED
	fd := -1
	switch r.spec.Kind {
	case KAnon:
		flags |= unix.MAP_PRIVATE | unix.MAP_ANONYMOUS
	case KSharedAnon:
		flags |= unix.MAP_SHARED | unix.MAP_ANONYMOUS
	case KMemfd, KFile:
		if first {
			var err error
			if r.spec.Kind == KMemfd {
				// Sealable: a udmabuf needs F_SEAL_SHRINK (below).
				r.fd, err = unix.MemfdCreate(fmt.Sprintf("ldt-fuzz-r%d", r.idx), unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
			} else {
				r.path = filepath.Join(e.cfg.DataDir, fmt.Sprintf("ldt-fuzz-%d-r%d", os.Getpid(), r.idx))
				r.fd, err = unix.Open(r.path, unix.O_RDWR|unix.O_CREAT|unix.O_TRUNC|unix.O_CLOEXEC, 0o600)
			}
			if err != nil {
				return err
			}
			if err := unix.Ftruncate(r.fd, int64(r.n)*pg); err != nil {
				return err
			}
			if r.spec.Kind == KMemfd {
				if _, err := unix.FcntlInt(uintptr(r.fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK); err != nil {
					return fmt.Errorf("sealing the memfd against shrinking: %w", err)
				}
			}
		}
		flags |= unix.MAP_SHARED
		fd = r.fd
	}
	addr, _, errno := unix.Syscall6(unix.SYS_MMAP, r.base, uintptr(r.n)*pg, unix.PROT_READ|unix.PROT_WRITE, uintptr(flags), uintptr(fd), 0)
	if errno != 0 {
		return fmt.Errorf("mmap: %w", errno)
	}
	if addr != r.base {
		return fmt.Errorf("mmap MAP_FIXED at %#x gave %#x", r.base, addr)
	}
	// Small pages: anonymous memory is told MADV_NOHUGEPAGE; shmem has
	// small folios by shmem_enabled (never, as the lab leaves it) and must
	// stay collapsible (MADV_NOHUGEPAGE would refuse MADV_COLLAPSE).
	advice := -1
	switch {
	case r.spec.THP == "pmd":
		advice = unix.MADV_HUGEPAGE
	case r.spec.THP == "" && r.spec.Kind == KAnon:
		advice = unix.MADV_NOHUGEPAGE
	}
	if advice >= 0 {
		if err := unix.Madvise(r.mem(), advice); err != nil {
			return fmt.Errorf("madvise: %w", err)
		}
	}
	r.uffd, r.noUffd = false, false
	return nil
}

// describe records what the region really is (THP formed or not).
func (e *executor) describe(r *region) {
	if r.spec.THP == "" || r.spec.Ring() {
		return
	}
	thp, large := 0, 0
	ents, err := e.pm.Read(r.base, r.n)
	if err != nil {
		return
	}
	kf, err := os.Open("/proc/kpageflags")
	if err != nil {
		return
	}
	defer kf.Close()
	var b [8]byte
	for _, en := range ents {
		if !en.Present() {
			continue
		}
		if _, err := kf.ReadAt(b[:], int64(en.PFN())*8); err == nil {
			fl := binary.LittleEndian.Uint64(b[:])
			if fl&pagemap.KPFTHP != 0 {
				thp++
			}
			if fl&(pagemap.KPFCompoundHead|pagemap.KPFCompoundTail) != 0 {
				large++
			}
		}
	}
	e.res.fact("r%d (%s): %d of %d pages in THPs, %d in large folios at setup", r.idx, r.spec.Name(), thp, r.n, large)
}

func mappingSize(addr uintptr) (int, error) {
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		lo, hi, ok := strings.Cut(f[0], "-")
		if !ok {
			continue
		}
		a, _ := strconv.ParseUint(lo, 16, 64)
		z, _ := strconv.ParseUint(hi, 16, 64)
		if uintptr(a) == addr {
			return int(z - a), nil
		}
	}
	return 0, fmt.Errorf("no mapping at %#x in /proc/self/maps", addr)
}

func (e *executor) needUring() error {
	if e.uring != nil {
		return nil
	}
	u, err := newUring(8, 512)
	if err != nil {
		return err
	}
	e.uring = u
	return nil
}

func (e *executor) needAIO() error {
	if e.aio != nil {
		return nil
	}
	a, err := newAIO(512)
	if err != nil {
		return err
	}
	e.aio = a
	return nil
}

// ringEvent marks every page of the ring regions of kind as written by
// the kernel.
func (e *executor) ringEvent(i int, kind string) {
	for _, r := range e.regions {
		if r.spec.Kind == kind {
			for p := range r.st {
				r.st[p].add(i, "ring")
				r.st[p].known = false
			}
		}
	}
}

func (e *executor) done(op string) { e.res.OpsDone[op]++ }

func (e *executor) failed(op string, err error) {
	e.res.OpsFailed[op]++
	var errno unix.Errno
	if errors.As(err, &errno) {
		e.res.fact("%s: %s", op, errno.Error())
	}
}

// pages clamps [p, p+n) to the region.
func (r *region) pages(p, n int) (int, int) {
	n = max(n, 1)
	if p >= r.n {
		return 0, 0
	}
	return p, min(n, r.n-p)
}

func (e *executor) region(o Op) *region {
	if o.R < 0 || o.R >= len(e.regions) {
		return nil
	}
	return e.regions[o.R]
}

// do runs one operation; an error ends the run (a tracker failure, a
// broken invariant of the lab), a refusal by the kernel does not.
func (e *executor) do(i int, o Op) error {
	r := e.region(o)
	switch o.Op {
	case OpCollect:
		return e.collect(i, o)
	case OpClearRef:
		if err := os.WriteFile("/proc/self/clear_refs", []byte("4"), 0); err != nil {
			e.failed(o.Op, err)
		} else {
			e.done(o.Op)
		}
		return nil
	case OpNUMA:
		e.numa(o.Arg == "on")
		return nil
	case OpCompact:
		if err := os.WriteFile("/proc/sys/vm/compact_memory", []byte("1"), 0); err != nil {
			e.failed(o.Op, err)
		} else {
			e.done(o.Op)
		}
		return nil
	case OpKhugepaged:
		e.khugepaged()
		return nil
	case OpDetach:
		e.detach()
		return nil
	case OpAttach:
		return e.attach()
	case OpSleep:
		time.Sleep(time.Duration(min(o.N, 2000)) * time.Millisecond)
		return nil
	case OpSpin:
		e.spin(time.Duration(min(o.N, 2000)) * time.Millisecond)
		return nil
	case OpUNop:
		if err := e.needUring(); err != nil {
			e.failed(o.Op, err)
			return nil
		}
		if err := e.uring.nops(max(1, min(o.N, 1024))); err != nil {
			e.failed(o.Op, err)
		} else {
			e.done(o.Op)
		}
		e.ringEvent(i, KUringRing)
		return nil
	case OpUUnreg:
		if e.uring != nil && e.uring.registered {
			if err := e.uring.unregister(); err != nil {
				return err
			}
			e.done(o.Op)
		}
		return nil
	case OpXUnpin:
		if e.helper != nil {
			e.helper.stop()
			e.helper = nil
			e.done(o.Op)
		}
		return nil
	case OpXWrite:
		return e.xwrite(i, o)
	case OpUReadFix:
		return e.readFixed(i, o)
	case OpForkExit:
		if e.child != nil {
			e.child.stop()
			e.child = nil
			e.done(o.Op)
		}
		return nil
	case OpFork:
		return e.fork(i, o)
	}
	if r == nil || r.spec.Ring() {
		return nil // an op on a region that is not there: nothing to do
	}
	p, n := r.pages(o.P, o.N)
	if n == 0 {
		return nil
	}
	switch o.Op {
	case OpWrite:
		e.write(i, r, p, n, o)
	case OpRead:
		r.touch(p, n)
		e.done(o.Op)
	case OpPVM, OpProcMem:
		e.gupWrite(i, r, p, n, o)
	case OpODirect, OpURead, OpAIORead:
		e.fileRead(i, r, p, n, o)
	case OpMadvise:
		e.madvise(i, r, p, n, o)
	case OpMprotect:
		e.mprotect(r, p, n, o)
	case OpPTEMap:
		e.pteMap(r, p, n)
	case OpMremap:
		return e.mremap(r, o)
	case OpRemap:
		return e.remap(r)
	case OpMsync:
		if err := unix.Msync(r.mem()[p*pg:(p+n)*pg], unix.MS_SYNC); err != nil {
			e.failed(o.Op, err)
		} else {
			e.done(o.Op)
		}
	case OpKSM:
		e.ksm(i, r, p, n)
	case OpMigrate:
		e.migrate(r, p, n, o)
	case OpUffdWP:
		e.uffdWP(r, p, n, o.Arg == "on")
	case OpPMScan:
		e.pmScan(r)
	case OpUReg:
		if err := e.needUring(); err != nil {
			e.failed(o.Op, err)
			return nil
		}
		if err := e.uring.register(r.base, r.n*pg); err != nil {
			e.failed(o.Op, err)
			return nil
		}
		e.regIdx, e.regGone = r.idx, false
		e.done(o.Op)
	case OpXPin:
		return e.xpin(r)
	case OpUdmabuf:
		e.udmabufWrite(i, r, p, n, o)
	default:
		return fmt.Errorf("unknown operation %q", o.Op)
	}
	return nil
}

// write: CPU stores. A lazily freed page is always written whole, so its
// content does not depend on whether the kernel discarded it first.
func (e *executor) write(i int, r *region, p, n int, o Op) {
	var todo []int
	for q := p; q < p+n; q++ {
		if r.writable(q) {
			todo = append(todo, q)
		}
	}
	if len(todo) == 0 {
		return
	}
	m := r.mem()
	one := func(q int) {
		switch {
		case o.Arg == "word" && !r.st[q].lazy:
			*(*uint64)(unsafe.Pointer(&m[q*pg+wordOf(o.V, q)*8])) = wordVal(o.V, q)
		case o.Arg == "byte" && !r.st[q].lazy:
			m[q*pg+int(o.V>>8)%pg] = byte(o.V) | 1
		default:
			pp := m[q*pg : (q+1)*pg]
			for w := 0; w < pg/8; w++ {
				*(*uint64)(unsafe.Pointer(&pp[w*8])) = fillWord(o.V, q, w)
			}
		}
	}
	if o.Arg == "threads" && len(todo) > 1 {
		var wg sync.WaitGroup
		k := min(3, len(todo))
		for t := 0; t < k; t++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
				for j := t; j < len(todo); j += k {
					one(todo[j])
				}
			}()
		}
		wg.Wait()
	} else {
		for _, q := range todo {
			one(q)
		}
	}
	for _, q := range todo {
		st := &r.st[q]
		mp := r.model[q*pg : (q+1)*pg]
		switch {
		case o.Arg == "word" && !st.lazy:
			putWord(mp, wordOf(o.V, q), wordVal(o.V, q))
		case o.Arg == "byte" && !st.lazy:
			mp[int(o.V>>8)%pg] = byte(o.V) | 1
		default:
			fillPage(mp, o.V, q)
			st.known = true
		}
		st.lazy = false
		st.add(i, "cpu")
	}
	e.done(o.Op)
}

// wroteWord records in the model that operation i's writer src stored v
// into word w of page q.
func (r *region) wroteWord(i, q, w int, v uint64, src string) {
	st := &r.st[q]
	if st.lazy {
		// Discarded or not: the rest of the page is unknown.
		st.lazy, st.known = false, false
		st.add(i, "lazyfree")
	}
	putWord(r.model[q*pg:], w, v)
	st.add(i, src)
}

func putWord(b []byte, w int, v uint64) {
	*(*uint64)(unsafe.Pointer(&b[w*8])) = v
}

// gupWrite: the kernel writes 8 bytes into each page on the process's
// behalf: process_vm_writev (pin_user_pages_remote) or /proc/self/mem
// (FOLL_FORCE: it writes even where the process may not).
func (e *executor) gupWrite(i int, r *region, p, n int, o Op) {
	did := 0
	for q := p; q < p+n; q++ {
		v := wordVal(o.V, q)
		w := wordOf(o.V, q)
		addr := r.base + uintptr(q)*pg + uintptr(w)*8
		var err error
		if o.Op == OpPVM {
			local := []unix.Iovec{{Base: (*byte)(unsafe.Pointer(&v)), Len: 8}}
			remote := []unix.RemoteIovec{{Base: addr, Len: 8}}
			_, err = unix.ProcessVMWritev(os.Getpid(), local, remote, 0)
		} else {
			var b [8]byte
			*(*uint64)(unsafe.Pointer(&b[0])) = v
			_, err = e.procMem.WriteAt(b[:], int64(addr))
		}
		if err != nil {
			e.failed(o.Op, err)
			continue
		}
		did++
		r.wroteWord(i, q, w, v, o.Op)
	}
	if did > 0 {
		e.done(o.Op)
	}
}

// fileRead: the kernel reads the data file into the pages: O_DIRECT
// pread (the block layer pins them), io_uring READ, AIO PREAD.
func (e *executor) fileRead(i int, r *region, p, n int, o Op) {
	fd := e.dataFd
	if o.Op == OpODirect || o.Arg == "direct" {
		fd = e.dataDio
		if r.dio == nil {
			r.dio = map[int]bool{}
		}
		for q := p; q < p+n; q++ {
			r.dio[q] = true
		}
	}
	off := int64(o.Off%(dataPages-n+1)) * pg
	addr := r.base + uintptr(p)*pg
	var got int
	var err error
	switch o.Op {
	case OpODirect:
		got, err = unix.Pread(fd, r.mem()[p*pg:(p+n)*pg], off)
	case OpURead:
		if err = e.needUring(); err == nil {
			got, err = e.uring.read(fd, addr, n*pg, off)
		}
		e.ringEvent(i, KUringRing)
	case OpAIORead:
		if err = e.needAIO(); err == nil {
			got, err = e.aio.pread(fd, addr, n*pg, off)
		}
		e.ringEvent(i, KAIORing)
	}
	if err != nil {
		e.failed(o.Op, err)
		// A failed read may still have written part (O_DIRECT can fail
		// with EFAULT after some of its bios landed): adopt what is
		// there, and owe a report for it — unless another writer (a fork
		// child on shared memory) changed the page since the last report:
		// then a change cannot be blamed on the read.
		for q := p; q < p+n; q++ {
			r.st[q].known = false
			if !r.st[q].external() {
				r.st[q].add(i, o.Op+"-failed")
			}
		}
		return
	}
	for q := p; q < p+got/pg; q++ {
		dataPage(r.model[q*pg:(q+1)*pg], off+int64(q-p)*pg)
		st := &r.st[q]
		st.lazy, st.known = false, true
		st.add(i, o.Op)
	}
	if got%pg != 0 {
		q := p + got/pg
		r.st[q].known = false
		r.st[q].add(i, o.Op)
	}
	e.done(o.Op)
}

// readFixed: io_uring READ_FIXED into the registered buffer: the kernel
// writes through the pin (bvec), not through the process's page tables.
func (e *executor) readFixed(i int, o Op) error {
	if e.uring == nil || !e.uring.registered || e.regIdx < 0 || e.regIdx >= len(e.regions) {
		return nil
	}
	r := e.regions[e.regIdx]
	p, n := r.pages(o.P, o.N)
	if n == 0 || uintptr(p+n)*pg > e.uring.regLen {
		return nil
	}
	fd := e.dataFd
	if o.Arg == "direct" {
		fd = e.dataDio
	}
	off := int64(o.Off%(dataPages-n+1)) * pg
	// The buffer is addressed as registered, wherever the region moved since.
	got, err := e.uring.readFixed(fd, e.uring.regAddr+uintptr(p)*pg, n*pg, off)
	e.ringEvent(i, KUringRing)
	if err != nil {
		e.failed(o.Op, err)
		return nil
	}
	if e.regGone {
		// Written into pages the process no longer maps: not its data.
		e.done(o.Op + " (into pages no longer mapped)")
		return nil
	}
	e.pinWrite(i, r, p, (got+pg-1)/pg, o.Op)
	e.done(o.Op)
	return nil
}

// pinWrite records a write through a pin into [p, p+n): where it lands
// (the page still mapped there, or one the process no longer maps) is
// observed at the next check, not predicted.
func (e *executor) pinWrite(i int, r *region, p, n int, src string) {
	for q := p; q < p+n && q < r.n; q++ {
		st := &r.st[q]
		if st.lazy {
			st.lazy = false
			st.add(i, "lazyfree")
		}
		st.known = false
		st.add(i, src)
		if !r.writable(q) {
			st.pinRO = true
		}
	}
}

func (e *executor) madvise(i int, r *region, p, n int, o Op) {
	adv, ok := advices[o.Arg]
	if !ok {
		e.failed(o.Op+" "+o.Arg, fmt.Errorf("unknown advice"))
		return
	}
	b := r.mem()[p*pg : (p+n)*pg]
	if err := unix.Madvise(b, adv); err != nil {
		e.failed(o.Op+" "+o.Arg, err)
		return
	}
	e.done(o.Op + " " + o.Arg)
	switch o.Arg {
	case "dontneed", "pageout", "cold", "free", "wipeonfork", "keeponfork", "unmergeable":
		e.zapBlocks(r, p, n, false)
	}
	for q := p; q < p+n; q++ {
		st := &r.st[q]
		switch o.Arg {
		case "free":
			if r.spec.Kind == KAnon {
				st.lazy = true
				st.reset()
			}
		case "dontneed":
			if r.spec.Kind == KAnon {
				clear(r.model[q*pg : (q+1)*pg])
				clear(r.shadow[q*pg : (q+1)*pg])
				*st = pageState{known: true}
			} else if st.pending() {
				st.zapped = true
			}
		case "pageout":
			if r.spec.Shared() && st.pending() {
				st.zapped = true
			}
		case "populate-write":
			if st.lazy {
				st.lazy, st.known = false, false
				st.add(i, "lazyfree")
			}
		case "collapse":
			// A write already lost to a zap is the zap's (shared-zap);
			// only a write still in an entry is the collapse's to keep.
			if r.spec.Shared() && st.pending() && !st.zapped {
				st.coll = true
			}
		}
	}
	if o.Arg == "collapse" {
		e.res.fact("collapse r%d [%d+%d] succeeded", r.idx, p, n)
	}
	if o.Arg == "pageout" {
		// What reclaim did: pages no longer resident right after (swapped
		// out, or written back and dropped from the page cache). mincore
		// faults nothing in.
		vec := make([]byte, n)
		if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), uintptr(unsafe.Pointer(&vec[0]))); errno == 0 {
			out := 0
			for _, v := range vec {
				out += int(1 - v&1)
			}
			e.res.OpsDone["madvise pageout (pages not resident right after)"] += out
		}
	}
}

var advices = map[string]int{
	"free": unix.MADV_FREE, "dontneed": unix.MADV_DONTNEED, "cold": unix.MADV_COLD, "pageout": unix.MADV_PAGEOUT,
	"collapse": unix.MADV_COLLAPSE, "hugepage": unix.MADV_HUGEPAGE, "nohugepage": unix.MADV_NOHUGEPAGE,
	"populate-write": unix.MADV_POPULATE_WRITE, "wipeonfork": unix.MADV_WIPEONFORK, "keeponfork": unix.MADV_KEEPONFORK,
	"unmergeable": unix.MADV_UNMERGEABLE,
}

// Advices lists the madvise arguments.
func Advices() []string {
	out := make([]string, 0, len(advices))
	for k := range advices {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func (e *executor) mprotect(r *region, p, n int, o Op) {
	prot := unix.PROT_READ | unix.PROT_WRITE
	switch o.Arg {
	case "r":
		prot = unix.PROT_READ
	case "none":
		prot = unix.PROT_NONE
	}
	if err := unix.Mprotect(r.mem()[p*pg:(p+n)*pg], prot); err != nil {
		e.failed(o.Op, err)
		return
	}
	e.done(o.Op + " " + o.Arg)
	for q := p; q < p+n; q++ {
		r.prot[q] = prot
		if prot&unix.PROT_WRITE == 0 {
			for _, ev := range r.st[q].events {
				if sourceClass[ev.Src] == classPin {
					r.st[q].pinRO = true
				}
			}
		}
	}
	e.zapBlocks(r, p, n, false)
}

func (e *executor) mremap(r *region, o Op) error {
	if e.moves >= nSlots-maxRegions {
		e.failed(o.Op, fmt.Errorf("no free arena slot left"))
		return nil
	}
	slot := maxRegions + e.moves
	e.moves++
	shift := uintptr(o.P%512) * pg
	dst := e.slot(slot) + shift
	old := r.base
	size := uintptr(r.n) * pg
	addr, _, errno := unix.Syscall6(unix.SYS_MREMAP, old, size, size, unix.MREMAP_MAYMOVE|unix.MREMAP_FIXED, dst, 0)
	if errno != 0 {
		e.failed(o.Op, errno)
		return nil
	}
	if addr != dst {
		return fmt.Errorf("mremap to %#x gave %#x", dst, addr)
	}
	// Fill the hole again so nothing else is mapped into the arena.
	if _, _, errno := unix.Syscall6(unix.SYS_MMAP, old, size, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_FIXED_NOREPLACE|unix.MAP_NORESERVE, ^uintptr(0), 0); errno != 0 {
		return fmt.Errorf("re-reserving %#x after mremap: %w", old, errno)
	}
	r.base = dst
	r.uffd, r.noUffd = false, false
	if shift%(2<<20) != 0 {
		e.zapBlocks(r, 0, r.n, true)
	}
	e.done(o.Op)
	return nil
}

// zapBlocks: an operation on [p, p+n) of a shared region mapped with PMD
// THPs splits the PMDs it covers in part (always, if all is set: uffd-wp
// splits a file PMD whatever the range), and a shmem PMD split zaps the
// whole PMD (kmod/README row 7): every pending write in those 2 MiB blocks
// loses its tracker state.
func (e *executor) zapBlocks(r *region, p, n int, all bool) {
	if !r.spec.Shared() || r.spec.THP != "pmd" {
		return
	}
	start := r.base + uintptr(p)*pg
	end := start + uintptr(n)*pg
	if !all && start%(2<<20) == 0 && end%(2<<20) == 0 {
		return
	}
	lo := start &^ (2<<20 - 1)
	hi := (end + 2<<20 - 1) &^ (2<<20 - 1)
	for q := 0; q < r.n; q++ {
		a := r.base + uintptr(q)*pg
		if a >= lo && a < hi && r.st[q].pending() {
			r.st[q].zapped = true
		}
	}
}

// remap maps the region afresh over itself (munmap + MAP_FIXED in one
// call): private memory starts over at zero, a shared object keeps its
// content. A new mapping is copied whole by a consumer, so the shadow
// takes memory as it is.
func (e *executor) remap(r *region) error {
	if err := e.mapRegion(r, false); err != nil {
		e.failed(OpRemap, err)
		return nil
	}
	for q := range r.prot {
		r.prot[q] = unix.PROT_READ | unix.PROT_WRITE
		r.st[q] = pageState{known: r.st[q].known}
	}
	if r.spec.Kind == KAnon || r.spec.Kind == KSharedAnon {
		clear(r.model)
		for q := range r.st {
			r.st[q].known = true
		}
		// New anonymous memory: a fixed buffer registered over the old
		// mapping still pins its pages, which nothing maps any more.
		// (A file or memfd maps the same page cache again.)
		if e.regIdx == r.idx {
			e.regGone = true
		}
	}
	if err := e.readAll(r, r.shadow); err != nil {
		return err
	}
	e.done(OpRemap)
	return nil
}

func (e *executor) migrate(r *region, p, n int, o Op) {
	nodes := numa.Nodes()
	if nodes < 2 {
		e.failed(o.Op, fmt.Errorf("one NUMA node"))
		return
	}
	addrs := make([]uintptr, n)
	for k := range addrs {
		addrs[k] = r.base + uintptr(p+k)*pg
	}
	node := int(o.V % uint64(nodes))
	status, err := numa.Move(addrs, node)
	if err != nil {
		e.failed(o.Op, err)
		return
	}
	moved := 0
	for _, s := range status {
		if int(s) == node {
			moved++
		}
	}
	e.res.OpsDone["migrate (pages now on the target node)"] += moved
	e.done(o.Op)
}

func (e *executor) numa(on bool) {
	if _, err := os.Stat("/proc/sys/kernel/numa_balancing"); err != nil {
		e.failed(OpNUMA, err)
		return
	}
	if on && !e.numaOn {
		for _, k := range [][2]string{{"scan_delay_ms", "0"}, {"scan_period_min_ms", "10"}, {"scan_period_max_ms", "100"}, {"scan_size_mb", "1024"}} {
			path := "/sys/kernel/debug/sched/numa_balancing/" + k[0]
			if _, err := os.Stat(path); err != nil {
				path = "/proc/sys/kernel/numa_balancing_" + k[0]
			}
			if err := e.knob(path, k[1]); err != nil {
				e.failed(OpNUMA, err)
				return
			}
		}
		if err := e.knob("/proc/sys/kernel/numa_balancing", "1"); err != nil {
			e.failed(OpNUMA, err)
			return
		}
		e.numaOn = true
		e.done("numa on")
	} else if !on && e.numaOn {
		os.WriteFile("/proc/sys/kernel/numa_balancing", []byte("0"), 0)
		e.numaOn = false
		e.done("numa off")
	}
}

// spin keeps the CPU in user space reading every region: NUMA balancing
// scans (task_numa_work) and hinting faults happen meanwhile.
func (e *executor) spin(d time.Duration) {
	before := vmstat("numa_hint_faults")
	for t0 := time.Now(); time.Since(t0) < d; {
		for _, r := range e.regions {
			if !r.spec.Ring() {
				r.touch(0, r.n)
			}
		}
	}
	if d := vmstat("numa_hint_faults") - before; d > 0 {
		e.res.OpsDone["spin (NUMA hinting faults)"] += int(d)
	}
	e.done(OpSpin)
}

func vmstat(name string) int64 {
	b, _ := os.ReadFile("/proc/vmstat")
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == name {
			v, _ := strconv.ParseInt(f[1], 10, 64)
			return v
		}
	}
	return 0
}

// ksm makes [p, p+n) copies of page p, marks the region mergeable and
// gives ksmd up to a second to merge them.
func (e *executor) ksm(i int, r *region, p, n int) {
	if r.spec.Kind != KAnon || n < 2 {
		return
	}
	m := r.mem()
	for q := p + 1; q < p+n; q++ {
		if !r.writable(q) || !r.writable(p) || r.st[p].lazy {
			continue
		}
		copy(m[q*pg:(q+1)*pg], m[p*pg:(p+1)*pg])
		copy(r.model[q*pg:(q+1)*pg], r.model[p*pg:(p+1)*pg])
		r.st[q].known, r.st[q].lazy = r.st[p].known, false
		r.st[q].add(i, "cpu")
	}
	if err := unix.Madvise(r.mem(), unix.MADV_MERGEABLE); err != nil {
		e.failed(OpKSM, err)
		return
	}
	for _, k := range [][2]string{{"pages_to_scan", "5000"}, {"sleep_millisecs", "0"}, {"run", "1"}} {
		if err := e.knob("/sys/kernel/mm/ksm/"+k[0], k[1]); err != nil {
			e.failed(OpKSM, err)
			return
		}
	}
	before := selfKSM()
	merged := 0
	for t0 := time.Now(); time.Since(t0) < time.Second; time.Sleep(20 * time.Millisecond) {
		if merged = selfKSM() - before; merged > 0 {
			break
		}
	}
	if merged > 0 {
		e.res.OpsDone["ksm (pages merged)"] += merged
		for q := p; q < p+n; q++ {
			if r.st[q].pending() {
				r.st[q].ksm = true
			}
		}
	}
	e.done(OpKSM)
}

func selfKSM() int {
	b, err := os.ReadFile("/proc/self/ksm_merging_pages")
	if err != nil {
		return 0
	}
	v, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return v
}

// collect runs the tracker under test and checks what it reported.
func (e *executor) collect(i int, o Op) error {
	if e.under == nil {
		e.done(o.Op + " (detached: nothing to collect)")
		return nil
	}
	rs := e.regions
	if o.R >= 0 && !(e.under.name == "softdirty" && o.Clear) {
		// (soft-dirty's clear is process-wide: it collects every region.)
		rs = []*region{e.regions[o.R]}
	}
	e.unmappedPins(rs)
	got, err := e.under.collect(rs, o.Clear)
	if err != nil {
		return err
	}
	e.res.Collections++
	for _, r := range rs {
		if err := e.copyReported(r, got[r.idx]); err != nil {
			return err
		}
	}
	for _, r := range rs {
		if err := e.check(i, r, false); err != nil {
			return err
		}
	}
	e.dropUdmabufs()
	return nil
}

// unmappedPins: a write through a pin into a shared page the process
// does not map (its PTE zapped before the write) leaves no entry a
// tracker could report: the shared-zap class (kmod/README row 2).
func (e *executor) unmappedPins(rs []*region) {
	for _, r := range rs {
		if !r.spec.Shared() {
			continue
		}
		ents, err := e.pm.Read(r.base, r.n)
		if err != nil {
			continue
		}
		for q := range r.st {
			st := &r.st[q]
			if ents[q].Present() {
				continue
			}
			for _, ev := range st.events {
				if sourceClass[ev.Src] == classPin {
					st.zapped = true
				}
			}
		}
	}
}

// copyReported copies every reported page into the shadow, as an
// incremental checkpoint would; the page's pending writes are accounted for.
func (e *executor) copyReported(r *region, rep []tracker.Region) error {
	for _, rg := range rep {
		for a := rg.Start; a < rg.End; a += pg {
			q := int((a - r.base) / pg)
			if err := e.readPage(r, q, r.shadow[q*pg:(q+1)*pg]); err != nil {
				return err
			}
			r.st[q].reset()
			e.res.Reported++
		}
	}
	return nil
}

// readPage reads page q as it is now: directly where the process may
// read, through /proc/self/mem (FOLL_FORCE) where it may not.
func (e *executor) readPage(r *region, q int, dst []byte) error {
	if r.prot[q]&unix.PROT_READ != 0 {
		copy(dst, r.page(q))
		return nil
	}
	if _, err := e.procMem.ReadAt(dst, int64(r.base+uintptr(q)*pg)); err != nil {
		return fmt.Errorf("reading r%d page %d through /proc/self/mem: %w", r.idx, q, err)
	}
	return nil
}

func (e *executor) readAll(r *region, dst []byte) error {
	for q := 0; q < r.n; q++ {
		if err := e.readPage(r, q, dst[q*pg:(q+1)*pg]); err != nil {
			return err
		}
	}
	return nil
}

// check compares every stable page of r that the process has mapped (all
// of them when final) with the shadow and the model.
func (e *executor) check(i int, r *region, final bool) error {
	ents, err := e.pm.Read(r.base, r.n)
	if err != nil {
		return err
	}
	for q := 0; q < r.n; q++ {
		st := &r.st[q]
		if st.lazy || (!final && !ents[q].Present()) {
			continue
		}
		if err := e.readPage(r, q, e.buf); err != nil {
			return err
		}
		e.res.Checked++
		mp := r.model[q*pg : (q+1)*pg]
		if st.known && !bytes.Equal(e.buf, mp) {
			e.loss(i, r, q, "corrupted", st, fmt.Sprintf("memory differs from the model: %s", firstDiff(mp, e.buf)))
		}
		copy(mp, e.buf)
		st.known = true
		sp := r.shadow[q*pg : (q+1)*pg]
		if !bytes.Equal(e.buf, sp) {
			if st.pending() {
				e.loss(i, r, q, "lost", st, "memory differs from the shadow: a write was not reported: "+firstDiff(sp, e.buf))
			}
			copy(sp, e.buf)
		}
		st.reset()
	}
	return nil
}

func firstDiff(want, got []byte) string {
	for w := 0; w+8 <= len(want); w += 8 {
		a := *(*uint64)(unsafe.Pointer(&want[w]))
		b := *(*uint64)(unsafe.Pointer(&got[w]))
		if a != b {
			return fmt.Sprintf("word %d: %#x, expected %#x", w/8, b, a)
		}
	}
	return "equal"
}

func (e *executor) loss(i int, r *region, q int, kind string, st *pageState, detail string) {
	srcs, desc := sources(st.events)
	l := Loss{Kind: kind, After: i, Region: r.idx, RKind: r.spec.Name(), Page: q, Sources: srcs, Events: desc, Detail: detail}
	if kind == "lost" {
		l.Gap = gapFor(e.under.name, r.spec, st, srcs)
	}
	l.State = e.pageState(r, q)
	if len(e.res.Losses) < 64 {
		e.res.Losses = append(e.res.Losses, l)
	}
}

func (e *executor) pageState(r *region, q int) string {
	addr := r.base + uintptr(q)*pg
	var parts []string
	if ents, err := e.pm.Read(addr, 1); err == nil {
		switch en := ents[0]; {
		case en.Present():
			parts = append(parts, "present")
			if fl, err := pagemap.PageFlags(en.PFN()); err == nil {
				if fl&pagemap.KPFTHP != 0 {
					parts = append(parts, "thp")
				} else if fl&(pagemap.KPFCompoundHead|pagemap.KPFCompoundTail) != 0 {
					parts = append(parts, "large-folio")
				}
			}
		case en.Swapped():
			parts = append(parts, "swapped")
		default:
			parts = append(parts, "not-mapped")
		}
	}
	parts = append(parts, "prot="+protName(r.prot[q]))
	return strings.Join(parts, ",")
}

func protName(p int) string {
	switch p {
	case unix.PROT_READ | unix.PROT_WRITE:
		return "rw"
	case unix.PROT_READ:
		return "r"
	case unix.PROT_NONE:
		return "none"
	}
	return strconv.Itoa(p)
}

// final ends every run the same way: the children and helpers go, a
// collection checks everything (reading pages not mapped too), every pin
// is dropped, another collection (what was pinned is reported once more),
// and a last one right after it must report nothing (the quiet epoch).
func (e *executor) final() error {
	if e.child != nil {
		e.child.stop()
		e.child = nil
	}
	if e.numaOn {
		e.numa(false)
	}
	// ksmd and NUMA scanning stop before the last collections (their
	// changes are not writes; KSM's replace_page drops uffd-wp, which
	// pagemap-scan would report as written).
	for k := len(e.restore) - 1; k >= 0; k-- {
		e.restore[k]()
	}
	e.restore = nil
	// A run that ends detached attaches again: the end's checks need a
	// tracker.
	if err := e.attach(); err != nil {
		return err
	}
	n := len(e.seq.Ops)
	if err := e.collectCheck(n, true); err != nil {
		return err
	}
	e.dropUdmabufs()
	if e.helper != nil {
		e.helper.stop()
		e.helper = nil
	}
	if e.uring != nil && e.uring.registered {
		if err := e.uring.unregister(); err != nil {
			return err
		}
	}
	if err := e.collectCheck(n, true); err != nil {
		return err
	}
	got, err := e.under.collect(e.regions, true)
	if err != nil {
		return err
	}
	e.res.Collections++
	for _, r := range e.regions {
		if r.spec.Ring() {
			continue // the kernel's rings may be reported on every collection
		}
		for _, rg := range got[r.idx] {
			if e.collapsedBlock(r, rg) {
				continue
			}
			first, end := int((rg.Start-r.base)/pg), int((rg.End-r.base)/pg)
			quiet := 0
			for q := first; q < end; q++ {
				if r.dio[q] {
					e.res.QuietPinLag++
				} else {
					quiet++
				}
			}
			e.res.Quiet += quiet
			if quiet > 0 && e.res.QuietSample == "" {
				e.res.QuietSample = fmt.Sprintf("r%d (%s) pages [%d,%d)", r.idx, r.spec.Name(), first, end)
			}
		}
	}
	return nil
}

func (e *executor) collectCheck(i int, final bool) error {
	e.unmappedPins(e.regions)
	got, err := e.under.collect(e.regions, true)
	if err != nil {
		return err
	}
	e.res.Collections++
	for _, r := range e.regions {
		if err := e.copyReported(r, got[r.idx]); err != nil {
			return err
		}
	}
	for _, r := range e.regions {
		if err := e.check(i, r, final); err != nil {
			return err
		}
	}
	return nil
}

// collapsedBlock: khugepaged may collapse a THP region in the background
// between the last two collections; anonymous collapse installs a dirty
// PMD (kmod/README row 8), a documented false positive.
func (e *executor) collapsedBlock(r *region, rg tracker.Region) bool {
	if r.spec.THP != "pmd" || (rg.Start)%(2<<20) != 0 || rg.Pages()%512 != 0 {
		return false
	}
	_, fl, err := pagemap.Self(rg.Start)
	return err == nil && fl&pagemap.KPFTHP != 0
}

func (e *executor) teardown() {
	if e.child != nil {
		e.child.stop()
	}
	e.dropUdmabufs()
	if e.helper != nil {
		e.helper.stop()
	}
	if e.under != nil {
		e.under.close()
	}
	if e.uring != nil {
		e.uring.close()
	}
	e.aio.close()
	if e.uffd >= 0 {
		unix.Close(e.uffd)
	}
	for k := len(e.restore) - 1; k >= 0; k-- {
		e.restore[k]()
	}
	for _, r := range e.regions {
		if r.path != "" {
			os.Remove(r.path)
		}
		if r.fd >= 0 {
			unix.Close(r.fd)
		}
	}
	for _, fd := range []int{e.dataFd, e.dataDio} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	if e.procMem != nil {
		e.procMem.Close()
	}
	if e.pm != nil {
		e.pm.Close()
	}
}
