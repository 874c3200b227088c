package main

import (
	"errors"
	"fmt"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"ldtlab/guest/ldt"
)

// The mapping the checks attach to and the helpers that compare what
// /dev/ldt reports with what was written.

// mapping is anonymous memory fenced by PROT_NONE guards so it stays one
// VMA of its own.
type mapping struct {
	all  []byte
	mem  []byte
	base uintptr
	n    int
}

func newMapping(pages int) (*mapping, error) {
	all, err := unix.Mmap(-1, 0, (pages+2)*pg, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("mmap: %w", err)
	}
	mem := all[pg : (pages+1)*pg]
	if err := unix.Mprotect(mem, unix.PROT_READ|unix.PROT_WRITE); err != nil {
		unix.Munmap(all)
		return nil, fmt.Errorf("mprotect: %w", err)
	}
	// 4 KiB pages keep the expected regions exact; thp-pmd tests THP.
	if err := unix.Madvise(mem, unix.MADV_NOHUGEPAGE); err != nil {
		unix.Munmap(all)
		return nil, fmt.Errorf("madvise: %w", err)
	}
	return &mapping{all: all, mem: mem, base: uintptr(unsafe.Pointer(&mem[0])), n: pages}, nil
}

func (m *mapping) close()            { unix.Munmap(m.all) }
func (m *mapping) end() uintptr      { return m.base + uintptr(m.n)*pg }
func (m *mapping) addr(p int) uint64 { return uint64(m.base) + uint64(p)*pg }
func (m *mapping) write(pages ...int) {
	for _, p := range pages {
		m.mem[p*pg+p%pg]++
	}
}

// pageRegions builds the expected regions of base from [from,to) page pairs.
func pageRegions(base uint64, pairs ...int) []ldt.Region {
	var out []ldt.Region
	for i := 0; i+1 < len(pairs); i += 2 {
		out = append(out, ldt.Region{Start: base + uint64(pairs[i])*pg, End: base + uint64(pairs[i+1])*pg})
	}
	return out
}

func fmtRegions(base uint64, rs []ldt.Region) string {
	var parts []string
	for _, r := range rs {
		if r.Start >= base && (r.Start-base)%pg == 0 && (r.End-base)%pg == 0 {
			parts = append(parts, fmt.Sprintf("p%d-%d", (r.Start-base)/pg, (r.End-base)/pg))
		} else {
			parts = append(parts, fmt.Sprintf("[%#x,%#x)", r.Start, r.End))
		}
	}
	return "{" + strings.Join(parts, " ") + "}"
}

func sameRegions(a, b []ldt.Region) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// expect collects [start,end) with flags and compares with want exactly.
func expect(f *ldt.File, start, end uintptr, flags ldt.Flags, want []ldt.Region, what string) error {
	got, err := f.CollectAll(start, end, flags)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if !sameRegions(got, want) {
		return fmt.Errorf("%s: got %s, want %s", what, fmtRegions(uint64(start), got), fmtRegions(uint64(start), want))
	}
	return nil
}

func wantErrno(err error, want unix.Errno, what string) error {
	if err == nil {
		return fmt.Errorf("%s: succeeded, want %s", what, unix.ErrnoName(want))
	}
	if !errors.Is(err, want) {
		return fmt.Errorf("%s: got %v, want %s", what, err, unix.ErrnoName(want))
	}
	return nil
}

// withSelf runs a check with /dev/ldt attached to this process and a
// fresh mapping of pages whose state is already cleared; both are gone
// when it returns. It is the preamble of most checks in this process.
func withSelf(pages int, check func(f *ldt.File, m *mapping) error) error {
	f, m, err := selfAttached(pages)
	if err != nil {
		return err
	}
	defer f.Close()
	defer m.close()
	return check(f, m)
}

// attachedSelf opens /dev/ldt attached to this process.
func attachedSelf() (*ldt.File, error) {
	f, err := ldt.Open()
	if err != nil {
		return nil, err
	}
	if err := f.Attach(0); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// selfAttached opens /dev/ldt attached to this process plus a fresh
// mapping whose state is already cleared.
func selfAttached(pages int) (*ldt.File, *mapping, error) {
	f, err := attachedSelf()
	if err != nil {
		return nil, nil, err
	}
	m, err := newMapping(pages)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	if _, err := f.CollectAll(m.base, m.end(), ldt.Clear); err != nil {
		f.Close()
		m.close()
		return nil, nil, fmt.Errorf("initial clear: %w", err)
	}
	return f, m, nil
}
