package scenario

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

func init() {
	register(&Scenario{
		Name:  "writeback",
		Paths: "10 (S2), writeback (S1)",
		Doc: "MAP_SHARED file on the ext2 data disk: write, msync(MS_SYNC) (folio_mkclean write-protects and cleans the PTE), " +
			"collect; the file is checked on disk with O_DIRECT each epoch and after dropping caches at the end.",
		Naive: MissPages,
		Run:   staged(runWriteback),
	})
	register(&Scenario{
		Name:  "kernel-writes",
		Paths: "19 (S2)",
		Doc: "writes the kernel makes through GUP into present, writable, clean pages: process_vm_writev, pwrite to " +
			"/proc/PID/mem, O_DIRECT read into the tracked buffer. The hardware D bit is never set.",
		Naive: MissPages,
		Run:   staged(runKernelWrites),
	})
}

// dataFile creates an n-page file in the data directory, on a block
// device file system so that writeback and O_DIRECT really happen.
func dataFile(e *Env, name string, n int) (*os.File, string, error) {
	dir := e.DataDir
	if dir == "" {
		dir = DefaultDataDir
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return nil, "", Skipf("data directory %s: %v (the guest mounts the ldtdata disk there)", dir, err)
	}
	if st.Type == unix.TMPFS_MAGIC || st.Type == unix.RAMFS_MAGIC {
		return nil, "", Skipf("data directory %s is on tmpfs/ramfs: no block device writeback there", dir)
	}
	path := filepath.Join(dir, fmt.Sprintf("ldt-check-%s-%d", name, os.Getpid()))
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, "", err
	}
	if err := f.Truncate(int64(n * PageSize)); err != nil {
		f.Close()
		os.Remove(path)
		return nil, "", err
	}
	return f, path, nil
}

// verifyDisk checks the file's on-disk content with O_DIRECT (which
// writes dirty page cache back first and then bypasses it).
func verifyDisk(e *Env, ws *Workset, seg *Segment, path string) error {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		e.Note("O_DIRECT open of %s failed (%v): read through the page cache instead", path, err)
		if f, err = os.Open(path); err != nil {
			return err
		}
	}
	defer f.Close()
	cs, err := ws.VerifyFile(seg, f)
	e.AddCorrupt(cs)
	return err
}

func runWriteback(e *Scene) (err error) {
	const n = 96
	f, path, err := dataFile(e.Env, "writeback", n)
	if err != nil {
		return err
	}
	e.closeAtEnd(func() error { return os.Remove(path) })
	// The workset and the tracker are closed by hand: the final check
	// reads the disk after the mapping is gone.
	ws, err := NewWorkset(e.Seed, n)
	if err != nil {
		f.Close()
		return err
	}
	closed := false
	defer func() {
		if !closed {
			ws.Close()
		}
	}()
	fd, err := unix.Dup(int(f.Fd()))
	f.Close()
	if err != nil {
		return err
	}
	seg, err := ws.Map("file", File, 0, n, fd)
	if err != nil {
		unix.Close(fd)
		return err
	}
	for id := range n {
		ws.Write(id)
	}
	if err := unix.Msync(seg.Bytes(ws), unix.MS_SYNC); err != nil {
		return err
	}
	t, err := e.Track(ws)
	if err != nil {
		return err
	}
	defer t.Close()
	ws.Judge(nil)
	for range e.Epochs {
		for _, id := range Pick(e.Rand, 0, n, n/3) {
			ws.Write(id)
		}
		// Writeback cleans and write-protects the PTEs before the
		// collection sees them.
		if err := unix.Msync(seg.Bytes(ws), unix.MS_SYNC); err != nil {
			return fmt.Errorf("msync: %w", err)
		}
		if _, err := e.Collect(ws, t); err != nil {
			return err
		}
		if err := e.Verify(ws); err != nil {
			return err
		}
		if err := verifyDisk(e.Env, ws, seg, path); err != nil {
			return err
		}
	}
	if err := e.Quiet(ws, t); err != nil {
		return err
	}
	// The final word is the disk after the mapping is gone and the page
	// cache dropped.
	t.Close()
	closed = true
	if err := ws.Close(); err != nil {
		return err
	}
	if err := dropCaches(); err != nil {
		e.Note("drop_caches: %v (verified through O_DIRECT only)", err)
	}
	return verifyDisk(e.Env, ws, seg, path)
}

// gupWriter writes a page's new content through one of the kernel's
// write-on-behalf paths.
type gupWriter struct {
	name  string
	write func(addr uintptr, data []byte) error
}

func gupWriters(e *Env, ws *Workset, n int) ([]gupWriter, func(), error) {
	pid := os.Getpid()
	mem, err := os.OpenFile("/proc/"+strconv.Itoa(pid)+"/mem", os.O_RDWR, 0)
	if err != nil {
		return nil, nil, err
	}
	cleanups := []func(){func() { mem.Close() }}
	cleanup := func() {
		for _, c := range cleanups {
			c()
		}
	}
	ws2 := []gupWriter{
		{"process_vm_writev", func(addr uintptr, data []byte) error {
			local := []unix.Iovec{{Base: &data[0]}}
			local[0].SetLen(len(data))
			remote := []unix.RemoteIovec{{Base: addr, Len: len(data)}}
			got, err := unix.ProcessVMWritev(pid, local, remote, 0)
			if err == nil && got != len(data) {
				err = fmt.Errorf("short process_vm_writev: %d", got)
			}
			return err
		}},
		{"pwrite /proc/PID/mem", func(addr uintptr, data []byte) error {
			_, err := mem.WriteAt(data, int64(addr))
			return err
		}},
	}
	f, path, err := dataFile(e, "odirect", n)
	if err != nil {
		// The scenario claims the O_DIRECT path: without it, skip.
		cleanup()
		return nil, nil, err
	}
	f.Close()
	df, err := os.OpenFile(path, os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		os.Remove(path)
		cleanup()
		return nil, nil, Skipf("no O_DIRECT writer: open %s with O_DIRECT: %v", path, err)
	}
	bounce, err := unix.Mmap(-1, 0, PageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		df.Close()
		cleanup()
		return nil, nil, err
	}
	cleanups = append(cleanups, func() { df.Close(); os.Remove(path); unix.Munmap(bounce) })
	ws2 = append(ws2, gupWriter{"O_DIRECT read", func(addr uintptr, data []byte) error {
		// The file slot gets the content first (O_DIRECT needs an
		// aligned buffer), then a direct read DMA-copies it into the
		// tracked page, pinned with FOLL_WRITE.
		copy(bounce, data)
		slot := int64((addr - ws.Base) / PageSize * PageSize)
		if _, err := df.WriteAt(bounce, slot); err != nil {
			return fmt.Errorf("O_DIRECT write: %w", err)
		}
		o := addr - ws.Base
		dst := ws.mem[o : o+PageSize]
		got, err := df.ReadAt(dst, slot)
		if err == nil && got != PageSize {
			err = fmt.Errorf("short O_DIRECT read: %d", got)
		}
		return err
	}})
	return ws2, cleanup, nil
}

func runKernelWrites(e *Scene) error {
	const n = 96
	ws, _, t, err := e.Populate(Anon, n)
	if err != nil {
		return err
	}
	writers, cleanup, err := gupWriters(e.Env, ws, n)
	if err != nil {
		return err
	}
	e.closeAtEnd(func() error { cleanup(); return nil })
	counts := make([]int, len(writers))
	var direct []int
	// A direct-I/O read dirties the user pages at submission and, at
	// completion, re-dirties any that were cleaned meanwhile from a
	// workqueue (block/bio.c bio_check_pages_dirty): such a page may be
	// reported once more in the next epoch, without a new write.
	hintDirect := func() {
		for _, id := range direct {
			ws.Hint(ws.Off(id), 1, "o_direct-deferred-redirty")
		}
		direct = direct[:0]
	}
	for range e.Epochs {
		for i, id := range Pick(e.Rand, 0, n, n/2) {
			w := i % len(writers)
			if err := ws.WriteWith(id, writers[w].write); err != nil {
				return fmt.Errorf("%s into page %d: %w", writers[w].name, id, err)
			}
			counts[w]++
			if writers[w].name == "O_DIRECT read" {
				direct = append(direct, id)
			}
		}
		if _, err := e.Collect(ws, t); err != nil {
			return err
		}
		hintDirect()
		if err := e.Verify(ws); err != nil {
			return err
		}
	}
	// Let deferred re-dirtying finish before the quiet epoch.
	time.Sleep(200 * time.Millisecond)
	if err := e.Quiet(ws, t); err != nil {
		return err
	}
	for i, w := range writers {
		e.Note("%s wrote %d pages", w.name, counts[i])
		if counts[i] == 0 {
			return Skipf("%s wrote no page: its path was not exercised", w.name)
		}
	}
	return nil
}
