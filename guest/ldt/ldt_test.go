package ldt

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// Derived by hand from asm-generic/ioctl.h:
//
//	_IOW('L', 0x40, __s32)  = 1<<30 | 4<<16  | 0x4c<<8 | 0x40 = 0x40044c40
//	_IOWR('L', 0x41, 72 B)  = 3<<30 | 72<<16 | 0x4c<<8 | 0x41 = 0xc0484c41
//	_IOWR('L', 0x41, 56 B)  = 3<<30 | 56<<16 | 0x4c<<8 | 0x41 = 0xc0384c41 (VER0)
const (
	handAttach      = 0x40044c40
	handCollect     = 0xc0484c41
	handCollectVer0 = 0xc0384c41
)

func TestRequestNumbersByHand(t *testing.T) {
	assert.Equal(t, uintptr(handAttach), IocAttach)
	assert.Equal(t, uintptr(handCollect), IocCollect)
	assert.Equal(t, uintptr(handCollectVer0), IocCollectVer0)
	assert.Equal(t, uintptr(72), unsafe.Sizeof(CollectArg{}))
	assert.Equal(t, uintptr(SizeofCollectArgVer0), unsafe.Offsetof(CollectArg{}.Visited))
	assert.Equal(t, uintptr(16), unsafe.Sizeof(Region{}))
	assert.Equal(t, uintptr(32), unsafe.Offsetof(CollectArg{}.WalkEnd))
	assert.Equal(t, uintptr(48), unsafe.Offsetof(CollectArg{}.VecLen))
	assert.Equal(t, Flags(1), Clear)
	assert.Equal(t, Flags(2), Naive)
	// Well-known requests as a check of the encoder itself.
	assert.Equal(t, uintptr(unix.FS_IOC_GETFLAGS), IOR('f', 1, 8))
	assert.Equal(t, uintptr(unix.TUNSETIFF), IOW('T', 202, 4))
	assert.Panics(t, func() { IOC(IOCRead, 'x', 1, 1<<14) })
}

// cProgram prints what the C compiler makes of the ABI in the project's
// header.
const cProgram = `#include <stdio.h>
#include <stddef.h>
#include <linux/types.h>
#include <linux/ioctl.h>
#include <linux/ldt.h>
int main(void) {
	printf("attach %lu\n", (unsigned long)LDT_IOC_ATTACH);
	printf("collect %lu\n", (unsigned long)LDT_IOC_COLLECT);
	printf("collect_ver0 %lu\n", (unsigned long)LDT_IOC_COLLECT_VER0);
	printf("size_ver0 %lu\n", (unsigned long)LDT_COLLECT_SIZE_VER0);
	printf("sizeof_collect %zu\n", sizeof(struct ldt_collect));
	printf("sizeof_region %zu\n", sizeof(struct ldt_region));
	printf("off_size %zu\n", offsetof(struct ldt_collect, size));
	printf("off_flags %zu\n", offsetof(struct ldt_collect, flags));
	printf("off_start %zu\n", offsetof(struct ldt_collect, start));
	printf("off_end %zu\n", offsetof(struct ldt_collect, end));
	printf("off_walk_end %zu\n", offsetof(struct ldt_collect, walk_end));
	printf("off_vec %zu\n", offsetof(struct ldt_collect, vec));
	printf("off_vec_len %zu\n", offsetof(struct ldt_collect, vec_len));
	printf("off_visited %zu\n", offsetof(struct ldt_collect, visited));
	printf("off_changed %zu\n", offsetof(struct ldt_collect, changed));
	printf("off_region_end %zu\n", offsetof(struct ldt_region, end));
	printf("clear %llu\n", (unsigned long long)LDT_CLEAR);
	printf("naive %llu\n", (unsigned long long)LDT_NAIVE);
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
	args := []string{"-o", filepath.Join(dir, "abi"), src, "-I", "../../kmod/include/uapi"}
	out, err := exec.Command(gcc, args...).CombinedOutput()
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
	var c CollectArg
	want := map[string]uint64{
		"attach":         uint64(IocAttach),
		"collect":        uint64(IocCollect),
		"collect_ver0":   uint64(IocCollectVer0),
		"size_ver0":      SizeofCollectArgVer0,
		"off_visited":    uint64(unsafe.Offsetof(c.Visited)),
		"off_changed":    uint64(unsafe.Offsetof(c.Changed)),
		"sizeof_collect": uint64(unsafe.Sizeof(c)),
		"sizeof_region":  uint64(unsafe.Sizeof(Region{})),
		"off_size":       uint64(unsafe.Offsetof(c.Size)),
		"off_flags":      uint64(unsafe.Offsetof(c.Flags)),
		"off_start":      uint64(unsafe.Offsetof(c.Start)),
		"off_end":        uint64(unsafe.Offsetof(c.End)),
		"off_walk_end":   uint64(unsafe.Offsetof(c.WalkEnd)),
		"off_vec":        uint64(unsafe.Offsetof(c.Vec)),
		"off_vec_len":    uint64(unsafe.Offsetof(c.VecLen)),
		"off_region_end": uint64(unsafe.Offsetof(Region{}.End)),
		"clear":          uint64(Clear),
		"naive":          uint64(Naive),
	}
	assert.Equal(t, want, got)
	assert.Equal(t, uint64(handAttach), got["attach"])
	assert.Equal(t, uint64(handCollect), got["collect"])
}

func TestErrorKeepsErrno(t *testing.T) {
	err := error(&Error{Op: "attach", Err: unix.EPERM})
	assert.True(t, errors.Is(err, unix.EPERM))
	assert.False(t, errors.Is(err, unix.ESRCH))
	var errno unix.Errno
	require.True(t, errors.As(fmt.Errorf("wrapped: %w", err), &errno))
	assert.Equal(t, unix.EPERM, errno)
	assert.Contains(t, err.Error(), "ptrace-attach")

	cases := []struct {
		op    string
		errno unix.Errno
		want  string
	}{
		{"open", unix.ENOENT, "not running an LDT kernel"},
		{"attach", unix.ESRCH, "no such process"},
		{"attach", unix.EBUSY, "already attached"},
		{"collect", unix.EINVAL, "unaligned"},
		{"collect", unix.EFAULT, "bad vec"},
		{"collect", unix.ENXIO, "not attached"},
		{"collect", unix.ESRCH, "address space is gone"},
		{"collect", unix.EIO, ""},
	}
	for _, c := range cases {
		assert.Contains(t, Meaning(c.op, c.errno), c.want, "%s %v", c.op, c.errno)
		if c.want == "" {
			assert.Empty(t, Meaning(c.op, c.errno))
		}
	}
	assert.Empty(t, Meaning("collect", errors.New("not an errno")))
}

// /dev/null rejects unknown ioctls with ENOTTY: this runs the real system
// call path, pointer passing and error wrapping on any kernel.
func TestRealIoctlPathOnDevNull(t *testing.T) {
	nf, err := os.OpenFile("/dev/null", os.O_RDWR, 0)
	require.NoError(t, err)
	f, err := NewFile(nf)
	require.NoError(t, err)
	defer f.Close()

	err = f.Attach(0)
	assert.True(t, errors.Is(err, unix.ENOTTY), "%v", err)
	var le *Error
	require.True(t, errors.As(err, &le))
	assert.Equal(t, "attach", le.Op)

	_, _, err = f.Collect(0, 4096, Clear, make([]Region, 1))
	assert.True(t, errors.Is(err, unix.ENOTTY), "%v", err)
	_, err = f.CollectAll(0, 4096, 0)
	assert.True(t, errors.Is(err, unix.ENOTTY), "%v", err)

	require.NoError(t, f.Close())
	_, _, err = f.Collect(0, 4096, 0, make([]Region, 1))
	assert.True(t, errors.Is(err, os.ErrClosed), "%v", err)
}

func TestOpenMissingDevice(t *testing.T) {
	if _, err := os.Stat(DevicePath); err == nil {
		t.Skip(DevicePath + " exists: LDT kernel")
	}
	_, err := Open()
	require.Error(t, err)
	assert.True(t, errors.Is(err, fs.ErrNotExist), "%v", err)
	assert.Contains(t, err.Error(), "not running an LDT kernel")
}

const pg = 4096

// fakeKernel serves COLLECT from a set of dirty pages. It merges adjacent
// pages and stops when vec is full at the first page that does not fit,
// or, with splitRuns, after every 3 pages even inside a run (a legal but
// less tidy kernel) so CollectAll's merging across resumptions is tested.
type fakeKernel struct {
	dirty     map[uint64]bool
	splitRuns bool
	calls     int
	stuck     bool // report walk_end == start: a kernel bug
	old       bool // a series before 0026: no counts, only the 56-byte call
}

func (k *fakeKernel) ioctl(req uintptr, arg unsafe.Pointer) (uintptr, error) {
	size := uint64(SizeofCollectArg)
	switch {
	case req == IocCollectVer0:
		size = SizeofCollectArgVer0
	case req != IocCollect || k.old:
		return 0, unix.ENOTTY
	}
	a := (*CollectArg)(arg)
	if a.Size == 0 {
		return 0, unix.EINVAL // ArgSize's probe
	}
	k.calls++
	if a.Size != size || a.VecLen == 0 || a.Start > a.End || a.Start%pg != 0 || a.End%pg != 0 {
		return 0, unix.EINVAL
	}
	if k.stuck {
		a.WalkEnd = a.Start
		return 0, nil
	}
	// Reinterpret the u64 as the pointer it carries; the caller's buffer
	// is alive for the duration of the call.
	vec := unsafe.Slice((*Region)(*(*unsafe.Pointer)(unsafe.Pointer(&a.Vec))), a.VecLen)
	n, run := 0, 0
	var visited, changed uint64
	defer func() {
		if size == SizeofCollectArg {
			a.Visited, a.Changed = visited, changed
		}
	}()
	for p := a.Start; p < a.End; p += pg {
		visited++
		if !k.dirty[p] {
			run = 0
			continue
		}
		if n > 0 && vec[n-1].End == p && !(k.splitRuns && run == 3) {
			vec[n-1].End = p + pg
			run++
		} else {
			if uint64(n) == a.VecLen {
				a.WalkEnd = p
				return uintptr(n), nil
			}
			vec[n] = Region{p, p + pg}
			n++
			run = 1
		}
		if a.Flags&uint64(Clear) != 0 {
			delete(k.dirty, p)
			changed++
		}
	}
	a.WalkEnd = a.End
	return uintptr(n), nil
}

func fakeFile(k *fakeKernel) *File {
	return &File{batch: defaultBatch, ioctlHook: k.ioctl}
}

func TestCollectAllResumes(t *testing.T) {
	for _, split := range []bool{false, true} {
		t.Run(fmt.Sprintf("splitRuns=%v", split), func(t *testing.T) {
			k := &fakeKernel{dirty: map[uint64]bool{}, splitRuns: split}
			var want []Region
			// Runs of 1..7 pages separated by gaps.
			for i, p := 0, uint64(0x10000); i < 40; i++ {
				l := uint64(i%7 + 1)
				for j := uint64(0); j < l; j++ {
					k.dirty[p+j*pg] = true
				}
				want = append(want, Region{p, p + l*pg})
				p += (l + 2) * pg
			}
			f := fakeFile(k)
			f.SetBatch(1)
			got, err := f.CollectAll(0x10000, 0x10000+4096*pg, 0)
			require.NoError(t, err)
			assert.Equal(t, want, got)
			assert.GreaterOrEqual(t, k.calls, 40)
			assert.Equal(t, int64(k.calls), f.Calls(), "Calls counts every ioctl the loop issued")

			got, err = f.CollectAll(0x10000, 0x10000+4096*pg, Clear)
			require.NoError(t, err)
			assert.Equal(t, want, got)
			got, err = f.CollectAll(0x10000, 0x10000+4096*pg, 0)
			require.NoError(t, err)
			assert.Empty(t, got)
		})
	}
}

// The counts of 0026 are summed per file; a kernel without them still
// collects through the 56-byte call and says it has no counts.
func TestEntriesAndOlderKernels(t *testing.T) {
	for _, old := range []bool{false, true} {
		t.Run(fmt.Sprintf("old=%v", old), func(t *testing.T) {
			k := &fakeKernel{dirty: map[uint64]bool{2 * pg: true, 3 * pg: true, 9 * pg: true}, old: old}
			f := fakeFile(k)
			got, err := f.CollectAll(0, 16*pg, Clear)
			require.NoError(t, err)
			assert.Equal(t, []Region{{2 * pg, 4 * pg}, {9 * pg, 10 * pg}}, got)
			visited, changed, ok := f.Entries()
			assert.Equal(t, !old, ok)
			if old {
				assert.Equal(t, uint64(SizeofCollectArgVer0), f.ArgSize())
				assert.Zero(t, visited+changed)
			} else {
				assert.Equal(t, []int64{16, 3}, []int64{visited, changed})
			}
			assert.Equal(t, int64(1), f.Calls(), "the probe is not counted")
		})
	}
}

func TestCollectAllDetectsNoProgress(t *testing.T) {
	f := fakeFile(&fakeKernel{stuck: true})
	_, err := f.CollectAll(0, 16*pg, 0)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "walk_end")
}

func TestCollectPassesArgumentsThrough(t *testing.T) {
	f := fakeFile(&fakeKernel{dirty: map[uint64]bool{3 * pg: true}})
	_, _, err := f.Collect(0, 16*pg, 0, nil)
	assert.True(t, errors.Is(err, unix.EINVAL), "vec_len 0 must reach the kernel: %v", err)
	vec := make([]Region, 2)
	n, we, err := f.Collect(0, 16*pg, 0, vec)
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	assert.Equal(t, uintptr(16*pg), we)
	assert.Equal(t, Region{3 * pg, 4 * pg}, vec[0])
}

// TestDevice runs on an LDT kernel only (the guest); the full interface
// checks are in cmd/ldt-selftest.
func TestDevice(t *testing.T) {
	f, err := Open()
	if errors.Is(err, fs.ErrNotExist) {
		t.Skip(DevicePath + " absent: needs the LDT kernel (runs in the guest)")
	}
	require.NoError(t, err)
	defer f.Close()

	const npages = 16
	mem, err := unix.Mmap(-1, 0, npages*pg, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	require.NoError(t, err)
	defer unix.Munmap(mem)
	base := uintptr(unsafe.Pointer(&mem[0]))
	end := base + npages*pg

	_, err = f.CollectAll(base, end, 0)
	assert.True(t, errors.Is(err, unix.ENXIO), "before attach: %v", err)
	require.NoError(t, f.Attach(0))
	_, err = f.CollectAll(base, end, Clear)
	require.NoError(t, err)

	for _, p := range []int{1, 2, 7} {
		mem[p*pg] = 1
	}
	runtime.KeepAlive(mem)
	got, err := f.CollectAll(base, end, Clear)
	require.NoError(t, err)
	sort.Slice(got, func(i, j int) bool { return got[i].Start < got[j].Start })
	b := uint64(base)
	assert.Equal(t, []Region{{b + pg, b + 3*pg}, {b + 7*pg, b + 8*pg}}, got)
	got, err = f.CollectAll(base, end, 0)
	require.NoError(t, err)
	assert.Empty(t, got)
}
