package bench

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"ldtlab/guest/tracker"
)

const (
	pageSize = tracker.PageSize
	hugeSize = 2 << 20
)

// mapping is a private anonymous region aligned to 2 MiB (so THP can back
// all of it), populated before any tracker sees it: the figures measure
// tracking, not first-touch allocation.
type mapping struct {
	mem []byte
}

func (m *mapping) start() uintptr { return uintptr(unsafe.Pointer(&m.mem[0])) }
func (m *mapping) end() uintptr   { return m.start() + uintptr(len(m.mem)) }
func (m *mapping) pages() int     { return len(m.mem) / pageSize }

// newMapping maps size bytes (a multiple of 2 MiB), with THP asked for or
// refused by madvise, and writes every page once.
func newMapping(size int, thp bool) (*mapping, error) {
	// Raw pointers: x/sys's Mmap/Munmap track whole mappings and refuse
	// to unmap the trimmed slack.
	rawp, err := unix.MmapPtr(-1, 0, nil, uintptr(size+hugeSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("mmap %d MiB: %w", size>>20, err)
	}
	base := uintptr(rawp)
	skip := (hugeSize - base%hugeSize) % hugeSize
	// Trim the slack so the VMA is exactly the aligned region.
	if skip > 0 {
		if err := unix.MunmapPtr(rawp, skip); err != nil {
			return nil, fmt.Errorf("munmap head: %w", err)
		}
	}
	if tail := uintptr(hugeSize) - skip; tail > 0 {
		if err := unix.MunmapPtr(unsafe.Add(rawp, skip+uintptr(size)), tail); err != nil {
			return nil, fmt.Errorf("munmap tail: %w", err)
		}
	}
	m := &mapping{mem: unsafe.Slice((*byte)(unsafe.Add(rawp, skip)), size)}
	advice := unix.MADV_NOHUGEPAGE
	if thp {
		advice = unix.MADV_HUGEPAGE
	}
	if err := unix.Madvise(m.mem, advice); err != nil {
		m.close()
		return nil, fmt.Errorf("madvise: %w", err)
	}
	for p := 0; p < size; p += pageSize {
		m.mem[p] = 1
	}
	return m, nil
}

func (m *mapping) close() {
	if m.mem != nil {
		unix.MunmapPtr(unsafe.Pointer(&m.mem[0]), uintptr(len(m.mem)))
		m.mem = nil
	}
}

// hugeKB is AnonHugePages of the mapping's VMA from /proc/self/smaps.
func (m *mapping) hugeKB() int {
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		return -1
	}
	defer f.Close()
	want := fmt.Sprintf("%x-", m.start())
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := sc.Text()
		// A VMA header starts with "lo-hi", attribute lines with "Name:".
		if f, _, _ := strings.Cut(l, " "); !strings.HasSuffix(f, ":") {
			in = strings.HasPrefix(l, want)
			continue
		}
		if v, ok := strings.CutPrefix(l, "AnonHugePages:"); ok && in {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return n
		}
	}
	return -1
}

// src is the 4 KiB a full-page write copies.
var src = func() []byte {
	b := make([]byte, pageSize)
	for i := range b {
		b[i] = byte(i*7 + 3)
	}
	return b
}()

// writePages writes n bytes (4096 or 1) to every step-th page of m.
func writePages(m *mapping, n, step int, v byte) int {
	count := 0
	for p := 0; p < len(m.mem); p += step * pageSize {
		if n >= pageSize {
			copy(m.mem[p:p+pageSize], src)
		} else {
			m.mem[p] = v
		}
		count++
	}
	return count
}

// writePagesLoop writes all 4096 B of every page of m with a plain loop of
// 8-byte stores (Go does not vectorise it): the other baseline of figure 1.
func writePagesLoop(m *mapping, v byte) int {
	count := 0
	for p := 0; p < len(m.mem); p += pageSize {
		w := (*[pageSize / 8]uint64)(unsafe.Pointer(&m.mem[p]))
		for i := range w {
			w[i] = uint64(i) | uint64(v)<<56
		}
		count++
	}
	return count
}

var sink uint64

// readBandwidth measures sequential reads of a 64 MiB buffer (best of 5),
// in bytes per second: the speed of walking a page table at best.
func readBandwidth(mib int) (float64, error) {
	m, err := newMapping(mib<<20, false)
	if err != nil {
		return 0, err
	}
	defer m.close()
	words := unsafe.Slice((*uint64)(unsafe.Pointer(&m.mem[0])), len(m.mem)/8)
	best := time.Duration(1 << 62)
	for r := 0; r < 5; r++ {
		t := time.Now()
		var s uint64
		for i := 0; i < len(words); i += 4 {
			s += words[i] + words[i+1] + words[i+2] + words[i+3]
		}
		sink += s
		best = min(best, time.Since(t))
	}
	return float64(len(m.mem)) / best.Seconds(), nil
}

// openTracker arms a tracker on m; "none" gives nil.
func openTracker(name string, m *mapping) (tracker.Tracker, error) {
	if name == "none" {
		return nil, nil
	}
	return tracker.Open(name, 0, m.start(), m.end())
}

// collected is one counted collect-and-clear.
type collected struct {
	pages, regions int
	ns             int64
	syscalls       int64
	syscallNS      int64 // inside those system calls (-1: not known)
	// visited and changed are the page table entries the kernel decided on
	// and rewrote (-1: the tracker or kernel does not count them).
	visited, changed int64
	counts           Counts
}

// collect collects and clears m, timed, with the kernel's counters and the
// tracker's system calls around it; a nil tracker ("none") collects nothing.
func collect(t tracker.Tracker, m *mapping) (collected, error) {
	var c collected
	if t == nil {
		return c, nil
	}
	cc, _ := t.(tracker.CallCounter)
	ct, _ := t.(tracker.CallTimer)
	ec, _ := t.(tracker.EntryCounter)
	var calls, callNS, visited, changed int64
	if cc != nil {
		calls = cc.Calls()
	}
	if ec != nil {
		visited, changed, _ = ec.Entries()
	}
	if ct != nil {
		callNS = ct.CallNS()
	}
	c0 := counters(0)
	st := time.Now()
	rs, err := t.Collect(m.start(), m.end(), true)
	c.ns = time.Since(st).Nanoseconds()
	c.counts = counters(0).since(c0)
	if cc != nil {
		c.syscalls = cc.Calls() - calls
	}
	c.syscallNS = -1
	if ct != nil {
		c.syscallNS = ct.CallNS() - callNS
	}
	c.visited, c.changed = -1, -1
	if ec != nil {
		if v, ch, ok := ec.Entries(); ok {
			c.visited, c.changed = v-visited, ch-changed
		}
	}
	if err != nil {
		return c, err
	}
	c.regions = len(rs)
	for _, r := range rs {
		c.pages += r.Pages()
	}
	return c, nil
}

// THPSetting is the kernel's transparent_hugepage mode, e.g. "[madvise]".
func THPSetting() string {
	b, _ := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled")
	s := strings.TrimSpace(string(b))
	if i := strings.IndexByte(s, '['); i >= 0 {
		if j := strings.IndexByte(s[i:], ']'); j > 0 {
			return s[i+1 : i+j]
		}
	}
	return s
}
