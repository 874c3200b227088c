package tracker

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"ldtlab/guest/pagemap"
)

const (
	pmSoftDirty = pagemap.SoftDirty
	pmEntrySize = pagemap.EntrySize
)

// softDirtyBatch is how many pagemap entries one pread fetches (512 KiB);
// a variable so tests can force several batches.
var softDirtyBatch = 64 << 10

// softDirty tracks with the kernel's soft-dirty bit.
//
// Semantics the checks must know about:
//   - Clearing is process-wide: "4" > clear_refs write-protects the whole
//     address space, not just the collected range, so a Collect with clear
//     forgets writes outside [start,end) too. Use one range per tracker.
//   - Collect with clear is a read followed by a clear, not an atomic
//     exchange: a write that lands on a page after its pagemap entry was
//     read as clean and before clear_refs runs is lost. Writers must be
//     stopped (SIGSTOP) or quiesced around collections where that matters.
//   - Soft-dirty over-reports by design (new or merged VMAs, mremap, THP
//     split/collapse, pinned pages; see docs/research dirty-bit-paths.md):
//     holes of a VMA created after the last clear are reported, too.
type softDirty struct {
	pid       int
	pagemap   *pagemap.File
	clearRefs *os.File
	mu        sync.Mutex
	buf       []byte
	last      int          // regions of the last collection (under mu), as in ldt
	calls     atomic.Int64 // preads of pagemap and writes of clear_refs
	ns        atomic.Int64 // inside them
}

// softDirtyWorks reports whether this kernel maintains soft-dirty
// (CONFIG_MEM_SOFT_DIRTY); without it clear_refs accepts "4" and bit 55
// simply never appears, which would look like "nothing written".
var softDirtyWorks = sync.OnceValue(func() error {
	mem, err := unix.Mmap(-1, 0, PageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return fmt.Errorf("probe mmap: %w", err)
	}
	defer unix.Munmap(mem)
	mem[0] = 1 // a freshly written PTE is soft-dirty when the feature exists
	es, err := pagemap.Read(0, uintptr(unsafe.Pointer(&mem[0])), 1)
	if err != nil {
		return fmt.Errorf("probe pagemap: %w", err)
	}
	if !es[0].SoftDirty() {
		return fmt.Errorf("%w: kernel does not maintain soft-dirty (CONFIG_MEM_SOFT_DIRTY off): a written page lacks pagemap bit 55", ErrUnsupported)
	}
	return nil
})

func procDir(pid int) string {
	if pid == 0 {
		return "/proc/self"
	}
	return "/proc/" + strconv.Itoa(pid)
}

func openSoftDirty(name string, pid int, start, end uintptr) (Tracker, error) {
	if err := softDirtyWorks(); err != nil {
		return nil, fmt.Errorf("tracker %s: %w", name, err)
	}
	dir := procDir(pid)
	// pagemap binds the target's mm at open time, so pid reuse cannot
	// redirect reads; clear_refs looks the pid up on every write.
	pm, err := pagemap.Open(pid)
	if err != nil {
		return nil, fmt.Errorf("tracker %s: %w", name, err)
	}
	cr, err := os.OpenFile(dir+"/clear_refs", os.O_WRONLY, 0)
	if err != nil {
		pm.Close()
		return nil, fmt.Errorf("tracker %s: %w", name, err)
	}
	t := &softDirty{pid: pid, pagemap: pm, clearRefs: cr}
	if err := t.clear(); err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
}

func (t *softDirty) Name() string { return "softdirty" }

// Calls counts pagemap preads and clear_refs writes.
func (t *softDirty) Calls() int64 { return t.calls.Load() }

// CallNS is the time spent inside those preads and writes.
func (t *softDirty) CallNS() int64 { return t.ns.Load() }

func (t *softDirty) clear() error {
	t.calls.Add(1)
	t0 := time.Now()
	_, err := t.clearRefs.Write([]byte("4"))
	t.ns.Add(time.Since(t0).Nanoseconds())
	if err != nil {
		return fmt.Errorf("tracker softdirty: clear_refs: %w", err)
	}
	return nil
}

func (t *softDirty) Collect(start, end uintptr, clear bool) ([]Region, error) {
	if err := checkRange(start, end); err != nil {
		return nil, fmt.Errorf("tracker softdirty: %w", err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]Region, 0, t.last)
	defer func() { t.last = len(out) }()
	for cur := start; cur < end; {
		n := min(int((end-cur)/PageSize), softDirtyBatch)
		if cap(t.buf) < n*pmEntrySize {
			t.buf = make([]byte, softDirtyBatch*pmEntrySize)
		}
		b := t.buf[:n*pmEntrySize]
		t.calls.Add(1)
		t0 := time.Now()
		got, err := t.pagemap.ReadRaw(b, cur)
		t.ns.Add(time.Since(t0).Nanoseconds())
		if got < len(b) {
			// pagemap returns 0 once the address space is gone (the
			// target exited): report that like ldt's ESRCH.
			if err == nil || errors.Is(err, io.EOF) {
				err = unix.ESRCH
			}
			return nil, fmt.Errorf("tracker softdirty: pagemap read at %#x: %w", cur, err)
		}
		out = appendSoftDirty(out, b, cur)
		cur += uintptr(n) * PageSize
	}
	if clear {
		if err := t.clear(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// appendSoftDirty turns raw pagemap entries for pages from base on into
// regions, extending the last region of out when it touches.
func appendSoftDirty(out []Region, entries []byte, base uintptr) []Region {
	for i := 0; i+pmEntrySize <= len(entries); i += pmEntrySize {
		if binary.LittleEndian.Uint64(entries[i:])&pmSoftDirty == 0 {
			continue
		}
		p := base + uintptr(i/pmEntrySize)*PageSize
		out = appendMerged(out, Region{p, p + PageSize})
	}
	return out
}

func (t *softDirty) Close() error {
	return errors.Join(t.pagemap.Close(), t.clearRefs.Close())
}
