package stress

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"ldtlab/guest/numa"
	"ldtlab/guest/pagemap"
)

// agitator drives one family of kernel paths until the set stops; it
// returns how many actions it took.
type agitator struct {
	name string
	doc  string
	// why not, if it cannot run here or with this tracker ("" = it can)
	unavailable func(o Options) string
	run         func(s *set, r *rand.Rand) (int, error)
}

var agitators = []agitator{
	{"madvfree", "MADV_FREE a run of pages, then rewrite each (rows 9, 1)", always, agMadvFree},
	{"pageout", "MADV_PAGEOUT a run of pages to swap (rows 1, 3)", needSwap, agPageout},
	{"migrate", "move_pages a run of pages to the other NUMA node (row 4)", needNodes, agMigrate},
	{"uffd-wp", "toggle async uffd write-protection on runs (row 16, deferred TLB flush)", notWithPagemapScan, agUffdWP},
	{"thp-split", "mprotect a sub-range RW->RWX->RW to split huge PMDs (rows 7, 13)", needTHP, agTHPSplit},
	{"thp-collapse", "MADV_COLLAPSE an aligned 2 MiB of the set back into a huge page (collapse_huge_page, row 7)", needTHP, agTHPCollapse},
	{"gup-write", "process_vm_writev into the set from another thread (row 19)", always, agGUPWrite},
	{"procmem", "pwrite to /proc/self/mem: __access_remote_vm re-marks after its copy (row 19, gup_ldt_mark_written)", always, agProcMem},
	{"odirect", "O_DIRECT reads from the data disk into the set: pinned pages written by the device (row 19, pins)", needDataDir, agODirect},
}

// DataDir is where the odirect agitator keeps its file: the guest's data
// disk (a block device, so O_DIRECT reaches the device).
var DataDir = "/mnt/data"

// Agitators lists the names and what each drives.
func Agitators() []string {
	var out []string
	for _, a := range agitators {
		out = append(out, a.name+": "+a.doc)
	}
	return out
}

func pickAgitators(o Options) ([]agitator, error) {
	var out []agitator
	for _, a := range agitators {
		if o.Agitators != nil && !slices.Contains(o.Agitators, a.name) {
			continue
		}
		if why := a.unavailable(o); why != "" {
			if o.Agitators != nil { // asked for by name: say so
				return nil, fmt.Errorf("stress: agitator %s unavailable: %s", a.name, why)
			}
			continue
		}
		out = append(out, a)
	}
	for _, n := range o.Agitators {
		if !slices.ContainsFunc(agitators, func(a agitator) bool { return a.name == n }) {
			return nil, fmt.Errorf("stress: unknown agitator %q", n)
		}
	}
	return out, nil
}

func always(Options) string { return "" }

func needSwap(Options) string {
	b, err := os.ReadFile("/proc/swaps")
	if err != nil || strings.Count(string(b), "\n") < 2 {
		return "no swap device"
	}
	return ""
}

func needNodes(Options) string {
	if numa.Nodes() < 2 {
		return "fewer than 2 NUMA nodes"
	}
	return ""
}

func notWithPagemapScan(o Options) string {
	if o.Tracker == "pagemap-scan" {
		return "the tracker owns the range's uffd-wp registration"
	}
	return ""
}

func needDataDir(Options) string {
	b, err := os.ReadFile("/proc/mounts")
	if err != nil || !strings.Contains(string(b), " "+DataDir+" ") {
		return DataDir + " is not mounted (the guest has no data disk)"
	}
	return ""
}

func needTHP(o Options) string {
	if !o.THP {
		return "THP off for this run"
	}
	return ""
}

// run picks a random run of up to max pages.
func (s *set) run(r *rand.Rand, max int) (first, n int) {
	n = 1 + r.IntN(min(max, s.n))
	first = r.IntN(s.n - n + 1)
	return first, n
}

func (s *set) bytes(first, n int) []byte { return s.mem[first*pg : (first+n)*pg] }

// loop calls step until the set stops, pausing between steps.
func loop(s *set, pause time.Duration, step func() error) (int, error) {
	n := 0
	for !s.stop.Load() {
		if err := step(); err != nil {
			return n, err
		}
		n++
		time.Sleep(pause)
	}
	return n, nil
}

func agMadvFree(s *set, r *rand.Rand) (int, error) {
	return loop(s, time.Millisecond, func() error {
		first, n := s.run(r, 32)
		if err := unix.Madvise(s.bytes(first, n), unix.MADV_FREE); err != nil {
			return fmt.Errorf("MADV_FREE: %w", err)
		}
		// Rewrite: a lazily freed page that is not written again may be
		// discarded, which is the kernel's right, not a lost write.
		for p := first; p < first+n; p++ {
			s.store(p, r.IntN(pg), tagMadvFree<<56|uint64(r.Uint32()))
		}
		s.effect("madvfree", "pages lazily freed, then rewritten", n)
		return nil
	})
}

func agPageout(s *set, r *rand.Rand) (int, error) {
	return loop(s, 5*time.Millisecond, func() error {
		first, n := s.run(r, 64)
		if err := unix.Madvise(s.bytes(first, n), unix.MADV_PAGEOUT); err != nil {
			return fmt.Errorf("MADV_PAGEOUT: %w", err)
		}
		s.effect("pageout", "pages advised out", n)
		// mincore right after: a page reclaim wrote out and freed is not
		// resident (the writers may fault it back in at once).
		s.effect("pageout", "pages not resident right after (swapped out)", n-resident(s.bytes(first, n)))
		return nil
	})
}

func agMigrate(s *set, r *rand.Rand) (int, error) {
	nodes := numa.Nodes()
	return loop(s, 5*time.Millisecond, func() error {
		first, n := s.run(r, 64)
		addrs := make([]uintptr, n)
		for i := range addrs {
			addrs[i] = s.addr(first + i)
		}
		node := r.IntN(nodes)
		// Where the pages are first, so that a page already on the target
		// node is not counted as migrated.
		was, _ := numa.Where(addrs)
		status, err := numa.Move(addrs, node)
		if err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EBUSY) {
			return err
		}
		moved := 0
		for i := range status {
			if int(status[i]) == node && was[i] >= 0 && int(was[i]) != node {
				moved++
			}
		}
		s.effect("migrate", "pages asked to move", n)
		s.effect("migrate", "pages migrated to the other node", moved)
		return nil
	})
}

func agTHPSplit(s *set, r *rand.Rand) (int, error) {
	return loop(s, 5*time.Millisecond, func() error {
		first, n := s.run(r, 8)
		b := s.bytes(first, n)
		if _, fl, err := pagemap.Self(s.addr(first)); err == nil && fl&pagemap.KPFTHP != 0 {
			// A PMD-mapped THP splits there (vmstat thp_split_pmd says
			// how often; a PTE-mapped one is in a THP folio too).
			s.effect("thp-split", "mprotect pairs on pages of a THP folio", 1)
		}
		s.effect("thp-split", "mprotect RW->RWX->RW pairs", 1)
		// Writers never fault: the range stays writable throughout.
		if err := unix.Mprotect(b, unix.PROT_READ|unix.PROT_WRITE|unix.PROT_EXEC); err != nil {
			return fmt.Errorf("mprotect RWX: %w", err)
		}
		if err := unix.Mprotect(b, unix.PROT_READ|unix.PROT_WRITE); err != nil {
			return fmt.Errorf("mprotect RW: %w", err)
		}
		return nil
	})
}

// agTHPCollapse asks for huge pages back under the writers; its actions
// are the collapses the kernel made.
func agTHPCollapse(s *set, r *rand.Rand) (int, error) {
	const madvCollapse = 25
	done := 0
	// The first page of the set on a 2 MiB boundary.
	align := int((2<<20-s.base%(2<<20))%(2<<20)) / pg
	_, err := loop(s, 20*time.Millisecond, func() error {
		if s.n-align < 512 {
			return nil
		}
		first := align + r.IntN((s.n-align)/512)*512
		// Any error is the kernel declining: EINVAL too, which it also
		// returns for swapped-out PTEs and a VMA changed meanwhile.
		if unix.Madvise(s.bytes(first, 512), madvCollapse) == nil {
			done++
			s.effect("thp-collapse", "2 MiB ranges collapsed", 1)
		} else {
			s.effect("thp-collapse", "collapses the kernel declined", 1)
		}
		return nil
	})
	return done, err
}

func agGUPWrite(s *set, r *rand.Rand) (int, error) {
	pid := os.Getpid()
	return loop(s, 100*time.Microsecond, func() error {
		p := r.IntN(s.n)
		v := uint64(tagGUP)<<56 | uint64(r.Uint32())
		local := []unix.Iovec{{Base: (*byte)(unsafe.Pointer(&v)), Len: 8}}
		remote := []unix.RemoteIovec{{Base: s.addr(p) + uintptr(r.IntN(pg/8)*8), Len: 8}}
		if _, err := unix.ProcessVMWritev(pid, local, remote, 0); err != nil {
			return fmt.Errorf("process_vm_writev: %w", err)
		}
		s.effect("gup-write", "pages written through process_vm_writev", 1)
		return nil
	})
}

// odirectFile is where agODirect reads from. The file is written once,
// before the first epoch (prepareODirect): written inside an epoch, the
// 4 MiB of page cache raced compaction, reclaim and the memcg squeeze of
// the other agitators and often never finished in time (odirect acted 0
// times in an 8 s run with every agitator, 150 alone).
func odirectFile() string { return DataDir + "/ldt-stress.dat" }

const odirectSize = 4 << 20

// prepareODirect writes the file of tagged words the O_DIRECT reads copy
// into the set; the caller removes it.
func prepareODirect(r *rand.Rand) error {
	data := make([]byte, odirectSize)
	for i := 0; i < odirectSize; i += 8 {
		*(*uint64)(unsafe.Pointer(&data[i])) = tagODirect<<56 | r.Uint64()>>8
	}
	if err := os.WriteFile(odirectFile(), data, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", odirectFile(), err)
	}
	// On disk before the reads: O_DIRECT must not find dirty page cache.
	f, err := os.Open(odirectFile())
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

func agODirect(s *set, r *rand.Rand) (int, error) {
	const size = odirectSize
	path := odirectFile()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("open %s O_DIRECT: %w", path, err)
	}
	defer unix.Close(fd)
	return loop(s, time.Millisecond, func() error {
		first, n := s.run(r, 16)
		off := int64(r.IntN(size/pg-n+1)) * pg
		// The page cache is bypassed: the block layer pins the pages and
		// the device writes them, so no CPU store sets Dirty.
		if _, err := unix.Pread(fd, s.bytes(first, n), off); err != nil {
			return fmt.Errorf("O_DIRECT pread: %w", err)
		}
		s.effect("odirect", "pinned pages written by the device (O_DIRECT)", n)
		return nil
	})
}

func agProcMem(s *set, r *rand.Rand) (int, error) {
	f, err := os.OpenFile("/proc/self/mem", os.O_RDWR, 0)
	if err != nil {
		return 0, fmt.Errorf("open /proc/self/mem: %w", err)
	}
	defer f.Close()
	var b [8]byte
	return loop(s, 100*time.Microsecond, func() error {
		p := r.IntN(s.n)
		*(*uint64)(unsafe.Pointer(&b[0])) = uint64(tagProcMem)<<56 | uint64(r.Uint32())
		if _, err := f.WriteAt(b[:], int64(s.addr(p))+int64(r.IntN(pg/8)*8)); err != nil {
			return fmt.Errorf("pwrite /proc/self/mem: %w", err)
		}
		s.effect("procmem", "pages written through /proc/self/mem", 1)
		return nil
	})
}

// userfaultfd async write-protection (include/uapi/linux/userfaultfd.h).
const (
	uffdAPI            = 0xAA
	uffdUserModeOnly   = 1
	uffdFeatureWPAsync = 1 << 15
	uffdFeatureWPUnpop = 1 << 13
	uffdRegisterWP     = 1 << 1
	uffdWPModeWP       = 1 << 0
)

func uffdIoctl(fd int, nr, size uintptr, arg unsafe.Pointer) error {
	req := uintptr(3)<<30 | size<<16 | uffdAPI<<8 | nr // _IOWR(0xAA, nr, size)
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg)); e != 0 {
		return e
	}
	return nil
}

func agUffdWP(s *set, r *rand.Rand) (int, error) {
	fd, _, e := unix.Syscall(unix.SYS_USERFAULTFD, unix.O_CLOEXEC|unix.O_NONBLOCK|uffdUserModeOnly, 0, 0)
	if e != 0 {
		return 0, fmt.Errorf("userfaultfd: %w", e)
	}
	defer unix.Close(int(fd))
	api := [3]uint64{uffdAPI, uffdFeatureWPAsync | uffdFeatureWPUnpop, 0}
	if err := uffdIoctl(int(fd), 0x3F, 24, unsafe.Pointer(&api)); err != nil {
		return 0, fmt.Errorf("UFFDIO_API (WP_ASYNC): %w", err)
	}
	reg := [4]uint64{uint64(s.base), uint64(s.n * pg), uffdRegisterWP, 0}
	if err := uffdIoctl(int(fd), 0x00, 32, unsafe.Pointer(&reg)); err != nil {
		return 0, fmt.Errorf("UFFDIO_REGISTER (WP): %w", err)
	}
	defer func() {
		rg := [2]uint64{uint64(s.base), uint64(s.n * pg)}
		uffdIoctl(int(fd), 0x01, 16, unsafe.Pointer(&rg)) // UFFDIO_UNREGISTER
	}()
	return loop(s, time.Millisecond, func() error {
		first, n := s.run(r, 64)
		for _, mode := range []uint64{uffdWPModeWP, 0} {
			wp := [3]uint64{uint64(s.addr(first)), uint64(n * pg), mode}
			err := uffdIoctl(int(fd), 0x06, 24, unsafe.Pointer(&wp))
			if err != nil && !errors.Is(err, unix.EAGAIN) {
				return fmt.Errorf("UFFDIO_WRITEPROTECT: %w", err)
			}
			if err == nil && mode == uffdWPModeWP {
				s.effect("uffd-wp", "pages write-protected, then unprotected", n)
			}
		}
		return nil
	})
}

// resident counts the resident pages of b (mincore).
func resident(b []byte) int {
	vec := make([]byte, (len(b)+pg-1)/pg)
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
		return len(vec) // unknown: count none as paged out
	}
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return n
}

// pageState describes the page at addr for a lost-write report.
func pageState(addr uintptr) string {
	var parts []string
	if e, fl, err := pagemap.Self(addr); err == nil || e != 0 {
		switch {
		case e.Present():
			parts = append(parts, "present")
			if fl&pagemap.KPFTHP != 0 {
				parts = append(parts, "thp")
			}
			if fl&(pagemap.KPFCompoundHead|pagemap.KPFCompoundTail) != 0 {
				parts = append(parts, "large-folio")
			}
		case e.Swapped():
			parts = append(parts, "swapped")
		default:
			parts = append(parts, "not-mapped")
		}
	}
	if st, err := numa.Where([]uintptr{addr}); err == nil && st[0] >= 0 {
		parts = append(parts, fmt.Sprintf("node%d", st[0]))
	}
	return strings.Join(parts, ",")
}
