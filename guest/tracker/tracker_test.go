package tracker

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func TestMergePagesSet(t *testing.T) {
	const P = PageSize
	in := []Region{{5 * P, 6 * P}, {1 * P, 3 * P}, {3 * P, 4 * P}, {2 * P, 3 * P}, {8 * P, 10 * P}, {9 * P, 12 * P}}
	want := []Region{{1 * P, 4 * P}, {5 * P, 6 * P}, {8 * P, 12 * P}}
	assert.Equal(t, want, Merge(in))
	assert.Nil(t, Merge(nil))
	assert.Equal(t, []uintptr{1 * P, 2 * P, 3 * P}, Pages([]Region{{1 * P, 4 * P}}))

	s := NewSet(in...)
	assert.Equal(t, 8, s.Len())
	assert.Equal(t, want, s.Regions())
	assert.True(t, s.Has(2*P+17))
	assert.False(t, s.Has(4*P))

	truth := Set{}
	truth.Add(1*P, 2*P, 7*P+5)
	missed, extra := Diff(NewSet(Region{1 * P, 3 * P}, Region{9 * P, 10 * P}), truth)
	assert.Equal(t, []uintptr{7 * P}, missed.Sorted())
	assert.Equal(t, []uintptr{9 * P}, extra.Sorted())
	assert.True(t, NewSet(want...).Equal(s))
	assert.False(t, truth.Equal(s))
	assert.Equal(t, 12, Region{0, 12 * P}.Pages())
}

func TestAppendSoftDirty(t *testing.T) {
	const base = 0x7f0000000000
	bits := []uint64{
		1 << 63,                 // present, clean
		1<<63 | pmSoftDirty,     // dirty
		1<<62 | pmSoftDirty,     // swapped, dirty
		0,                       // hole
		pmSoftDirty,             // hole in a VM_SOFTDIRTY VMA: reported
		1<<63 | 1<<61 | 1<<56,   // present, file, exclusive: clean
		1<<63 | pmSoftDirty | 5, // dirty with a PFN
	}
	b := make([]byte, 8*len(bits))
	for i, v := range bits {
		binary.LittleEndian.PutUint64(b[8*i:], v)
	}
	got := appendSoftDirty(nil, b, base)
	assert.Equal(t, []Region{{base + PageSize, base + 3*PageSize}, {base + 4*PageSize, base + 5*PageSize}, {base + 6*PageSize, base + 7*PageSize}}, got)
	// A batch boundary in the middle of a run extends the last region.
	got = appendSoftDirty(got, b[8:16], base+7*PageSize)
	assert.Equal(t, Region{base + 6*PageSize, base + 8*PageSize}, got[len(got)-1])
}

// Derived by hand from asm-generic/ioctl.h (dir<<30 | size<<16 | type<<8 | nr):
//
//	PAGEMAP_SCAN        _IOWR('f', 16, 96 B)  = 0xc0606610
//	UFFDIO_API          _IOWR(0xAA, 0x3F, 24) = 0xc018aa3f
//	UFFDIO_REGISTER     _IOWR(0xAA, 0x00, 32) = 0xc020aa00
//	UFFDIO_WRITEPROTECT _IOWR(0xAA, 0x06, 24) = 0xc018aa06
func TestRequestNumbers(t *testing.T) {
	assert.Equal(t, uintptr(0xc0606610), iocPagemapScan)
	assert.Equal(t, uintptr(0xc018aa3f), iocUffdioAPI)
	assert.Equal(t, uintptr(0xc020aa00), iocUffdioRegister)
	assert.Equal(t, uintptr(0xc018aa06), iocUffdioWriteprotect)
	assert.Equal(t, uintptr(24), unsafe.Sizeof(pageRegion{}))
	assert.Equal(t, uintptr(96), unsafe.Sizeof(pmScanArg{}))
	assert.Equal(t, uintptr(32), unsafe.Offsetof(pmScanArg{}.WalkEnd))
	assert.Equal(t, uintptr(72), unsafe.Offsetof(pmScanArg{}.CategoryMask))
	assert.Equal(t, uintptr(88), unsafe.Offsetof(pmScanArg{}.ReturnMask))
}

// The system headers may predate PAGEMAP_SCAN (Debian 12 ships 6.1); the
// fallback is a copy of the 6.12 struct, and the request number then still
// comes from the C preprocessor's _IOWR.
const cProgram = `#include <stdio.h>
#include <stddef.h>
#include <linux/types.h>
#include <linux/ioctl.h>
#include <linux/fs.h>
#include <linux/userfaultfd.h>
#ifndef PAGEMAP_SCAN
struct page_region { __u64 start, end, categories; };
struct pm_scan_arg {
	__u64 size, flags, start, end, walk_end, vec, vec_len, max_pages;
	__u64 category_inverted, category_mask, category_anyof_mask, return_mask;
};
#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#endif
int main(void) {
	printf("pagemap_scan %lu\n", (unsigned long)PAGEMAP_SCAN);
	printf("uffdio_api %lu\n", (unsigned long)UFFDIO_API);
	printf("uffdio_register %lu\n", (unsigned long)UFFDIO_REGISTER);
	printf("uffdio_writeprotect %lu\n", (unsigned long)UFFDIO_WRITEPROTECT);
	printf("sizeof_page_region %zu\n", sizeof(struct page_region));
	printf("sizeof_pm_scan_arg %zu\n", sizeof(struct pm_scan_arg));
	printf("off_return_mask %zu\n", offsetof(struct pm_scan_arg, return_mask));
	printf("sizeof_uffdio_register %zu\n", sizeof(struct uffdio_register));
	printf("uffd_api %llu\n", (unsigned long long)UFFD_API);
	printf("mode_wp %llu\n", (unsigned long long)UFFDIO_REGISTER_MODE_WP);
	return 0;
}
`

func TestRequestNumbersAgainstGCC(t *testing.T) {
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Skip("gcc not installed: only the hand-derived numbers are checked")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "abi.c")
	require.NoError(t, os.WriteFile(src, []byte(cProgram), 0o644))
	out, err := exec.Command(gcc, "-o", filepath.Join(dir, "abi"), src).CombinedOutput()
	if err != nil && strings.Contains(string(out), "No such file") {
		t.Skipf("kernel headers missing: %s", out)
	}
	require.NoError(t, err, "gcc: %s", out)
	out, err = exec.Command(filepath.Join(dir, "abi")).Output()
	require.NoError(t, err)
	got := map[string]uint64{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		k, v, _ := strings.Cut(line, " ")
		n, err := strconv.ParseUint(v, 10, 64)
		require.NoError(t, err, line)
		got[k] = n
	}
	assert.Equal(t, map[string]uint64{
		"pagemap_scan":           uint64(iocPagemapScan),
		"uffdio_api":             uint64(iocUffdioAPI),
		"uffdio_register":        uint64(iocUffdioRegister),
		"uffdio_writeprotect":    uint64(iocUffdioWriteprotect),
		"sizeof_page_region":     uint64(unsafe.Sizeof(pageRegion{})),
		"sizeof_pm_scan_arg":     uint64(unsafe.Sizeof(pmScanArg{})),
		"off_return_mask":        uint64(unsafe.Offsetof(pmScanArg{}.ReturnMask)),
		"sizeof_uffdio_register": uint64(unsafe.Sizeof(uffdioRegister{})),
		"uffd_api":               uffdAPI,
		"mode_wp":                uffdRegisterModeWP,
	}, got)
}

func TestOpenErrors(t *testing.T) {
	_, err := Open("nope", 0, 0, PageSize)
	assert.ErrorContains(t, err, "unknown tracker")
	_, err = Open("ldt", 0, 1, PageSize)
	assert.ErrorContains(t, err, "page aligned")
	_, err = Open("softdirty", 0, 2*PageSize, PageSize)
	assert.ErrorContains(t, err, "inverted")

	_, err = Open("pagemap-scan", 1, 0, PageSize)
	require.Error(t, err)
	assert.ErrorIs(t, err, ErrUnsupported)
	assert.ErrorContains(t, err, "userfaultfd registered from inside the tracked process")
	assert.Equal(t, []string{"ldt", "naive", "softdirty", "pagemap-scan"}, Names())
	for _, n := range Names() {
		assert.Contains(t, trackers, n)
	}
}

// region is an anonymous mapping fenced by PROT_NONE guard pages, so no
// later mapping of the Go runtime can merge into its VMA (a merge would
// make soft-dirty legitimately report the whole VMA).
type region struct {
	all  []byte
	mem  []byte
	base uintptr
	n    int
}

func newRegion(t *testing.T, pages int) *region {
	all, err := unix.Mmap(-1, 0, (pages+2)*PageSize, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	require.NoError(t, err)
	t.Cleanup(func() { unix.Munmap(all) })
	mem := all[PageSize : (pages+1)*PageSize]
	require.NoError(t, unix.Mprotect(mem, unix.PROT_READ|unix.PROT_WRITE))
	// 4 KiB pages keep the expectations exact; THP is the guest's business.
	require.NoError(t, unix.Madvise(mem, unix.MADV_NOHUGEPAGE))
	return &region{all: all, mem: mem, base: uintptr(unsafe.Pointer(&mem[0])), n: pages}
}

func (r *region) end() uintptr       { return r.base + uintptr(r.n)*PageSize }
func (r *region) addr(p int) uintptr { return r.base + uintptr(p)*PageSize }
func (r *region) write(pages ...int) {
	for _, p := range pages {
		r.mem[p*PageSize+p%PageSize]++
	}
	runtime.KeepAlive(r.mem)
}
func (r *region) set(pages ...int) Set {
	s := Set{}
	for _, p := range pages {
		s.Add(r.addr(p))
	}
	return s
}

func openOrSkip(t *testing.T, name string, start, end uintptr) Tracker {
	tr, err := Open(name, 0, start, end)
	if errors.Is(err, ErrUnsupported) {
		t.Skipf("%s unavailable here: %v", name, err)
	}
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, tr.Close()) })
	require.Equal(t, name, tr.Name())
	return tr
}

// expect collects and compares with the pages written. No tracker may miss
// a page; in these workloads none of soft-dirty's documented reasons to
// over-report arises (fenced VMA, no mremap/THP/fork), so extras fail too.
func expect(t *testing.T, tr Tracker, r *region, start, end uintptr, clear bool, want Set, what string) {
	t.Helper()
	got, err := tr.Collect(start, end, clear)
	require.NoError(t, err, what)
	for i := 1; i < len(got); i++ {
		require.Less(t, got[i-1].End, got[i].Start, "%s: regions must be sorted and merged: %v", what, got)
	}
	missed, extra := Diff(NewSet(got...), want)
	assert.Empty(t, pagesOf(r, missed), "%s: missed pages", what)
	assert.Empty(t, pagesOf(r, extra), "%s: extra pages", what)
}

func pagesOf(r *region, s Set) []string {
	var out []string
	for _, p := range s.Sorted() {
		out = append(out, fmt.Sprintf("page %d", int(int64(p-r.base)/PageSize)))
	}
	return out
}

func TestTrackers(t *testing.T) {
	for _, name := range Names() {
		t.Run(name, func(t *testing.T) {
			const npages = 96
			r := newRegion(t, npages)
			r.write(seq(0, 48)...) // half populated before tracking, half never touched
			tr := openOrSkip(t, name, r.base, r.end())
			all := func(clear bool, want Set, what string) {
				t.Helper()
				expect(t, tr, r, r.base, r.end(), clear, want, what)
			}

			all(false, Set{}, "nothing written since Open")
			w := []int{1, 2, 3, 10, 47, 48, 60, 95}
			r.write(w...)
			all(false, r.set(w...), "written pages")
			all(false, r.set(w...), "collect without clear only reads")
			all(true, r.set(w...), "collect+clear")
			all(false, Set{}, "nothing after clear")

			for _, p := range []int{5, 70} {
				sink += r.mem[p*PageSize]
			}
			runtime.KeepAlive(r.mem)
			all(false, Set{}, "reads are not writes")

			r.write(2, 50)
			all(true, r.set(2, 50), "only the new writes")

			r.write(20, 30)
			expect(t, tr, r, r.addr(16), r.addr(24), false, r.set(20), "sub-range")
			all(true, r.set(20, 30), "whole range after a sub-range read")

			// Writes the kernel makes on our behalf (row 19 of the map).
			buf := []byte{0x5a}
			n, err := unix.ProcessVMWritev(os.Getpid(),
				[]unix.Iovec{{Base: &buf[0], Len: 1}},
				[]unix.RemoteIovec{{Base: r.addr(33) + 7, Len: 1}}, 0)
			require.NoError(t, err)
			require.Equal(t, 1, n)
			mem, err := os.OpenFile("/proc/self/mem", os.O_RDWR, 0)
			require.NoError(t, err)
			_, err = mem.WriteAt(buf, int64(r.addr(34)+9))
			mem.Close()
			require.NoError(t, err)
			require.Equal(t, byte(0x5a), r.mem[33*PageSize+7])
			if name == "naive" {
				// The negative control is expected to miss these; the
				// checks assert that, here it is only shown.
				got, err := tr.Collect(r.base, r.end(), true)
				require.NoError(t, err)
				t.Logf("naive after kernel writes to pages 33, 34: %v", pagesOf(r, NewSet(got...)))
			} else {
				all(true, r.set(33, 34), "process_vm_writev and /proc/self/mem writes")
			}
			all(false, Set{}, "clean at the end")
		})
	}
}

// sink keeps reads that only fault pages in from being optimised away.
var sink byte

func seq(from, to int) []int {
	var out []int
	for i := from; i < to; i++ {
		out = append(out, i)
	}
	return out
}

// TestTrackersManyRegions forces every tracker through its resumption path
// (tiny buffers) with more regions than one buffer holds, and a long run
// that crosses batch boundaries.
func TestTrackersManyRegions(t *testing.T) {
	defer func(a, b int) { scanBatch, softDirtyBatch = a, b }(scanBatch, softDirtyBatch)
	scanBatch, softDirtyBatch = 7, 100
	for _, name := range Names() {
		t.Run(name, func(t *testing.T) {
			const npages = 2048
			r := newRegion(t, npages)
			tr := openOrSkip(t, name, r.base, r.end())
			if lt, ok := tr.(*ldtTracker); ok {
				lt.f.SetBatch(7)
			}
			var w []int
			for p := 0; p < 1000; p += 2 {
				w = append(w, p)
			}
			w = append(w, seq(1100, 1400)...)
			w = append(w, npages-1)
			r.write(w...)
			cc, ok := tr.(CallCounter)
			require.True(t, ok, "%s counts its system calls", name)
			before := cc.Calls()
			got, err := tr.Collect(r.base, r.end(), true)
			require.NoError(t, err)
			assert.Len(t, got, 500+1+1)
			if name == "softdirty" {
				// One pread per 100 entries, then the clear_refs write.
				assert.Equal(t, int64((npages+99)/100+1), cc.Calls()-before)
			} else {
				// At most 7 regions per call.
				assert.GreaterOrEqual(t, cc.Calls()-before, int64((502+6)/7))
			}
			missed, extra := Diff(NewSet(got...), r.set(w...))
			assert.Empty(t, pagesOf(r, missed), "missed")
			assert.Empty(t, pagesOf(r, extra), "extra")
			got, err = tr.Collect(r.base, r.end(), false)
			require.NoError(t, err)
			assert.Empty(t, got)
		})
	}
}

func TestMutantsAreKnownButNotListed(t *testing.T) {
	for _, m := range Mutants() {
		assert.True(t, Known(m), m)
		assert.NotContains(t, Names(), m, "mutants stay out of the default list")
	}
	for _, n := range Names() {
		assert.True(t, Known(n), n)
	}
	assert.False(t, Known("nope"))
}
