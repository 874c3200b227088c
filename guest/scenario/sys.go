package scenario

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"ldtlab/guest/pagemap"
)

// countSwapped counts the pages of b that are swapped out.
func countSwapped(b []byte) (swapped, present int, err error) {
	es, err := pagemap.Read(0, uintptr(unsafe.Pointer(&b[0])), len(b)/PageSize)
	if err != nil {
		return 0, 0, err
	}
	for _, e := range es {
		switch {
		case e.Swapped():
			swapped++
		case e.Present():
			present++
		}
	}
	return swapped, present, nil
}

// pinCPU moves the calling (locked) thread to cpu.
func pinCPU(cpu int) error {
	var set unix.CPUSet
	set.Set(cpu)
	return unix.SchedSetaffinity(0, &set)
}

// unpin lets the calling thread run on every CPU again.
func unpin() {
	var set unix.CPUSet
	for i := range runtime.NumCPU() {
		set.Set(i)
	}
	_ = unix.SchedSetaffinity(0, &set)
}

// pageout swaps out the pages of b with MADV_PAGEOUT and checks pagemap
// that they went: a page still sitting in another CPU's LRU batch is not
// isolated, so it retries from every CPU in turn. It returns how many
// pages are swapped out afterwards. The caller's goroutine must be locked
// to its thread.
func pageout(b []byte) (int, error) {
	n := len(b) / PageSize
	defer unpin()
	var swapped int
	for try := range 4 {
		for cpu := range runtime.NumCPU() {
			if err := pinCPU(cpu); err != nil {
				return 0, err
			}
			if err := unix.Madvise(b, unix.MADV_PAGEOUT); err != nil {
				return 0, fmt.Errorf("MADV_PAGEOUT: %w", err)
			}
		}
		var err error
		if swapped, _, err = countSwapped(b); err != nil {
			return 0, err
		}
		if swapped == n {
			break
		}
		time.Sleep(time.Duration(10*(try+1)) * time.Millisecond)
	}
	return swapped, nil
}

// SwapDev is one line of /proc/swaps.
type SwapDev struct {
	Name     string
	Prio     int
	SizeKB   int
	UsedKB   int
	IsZram   bool
	Priority int
}

// swaps parses /proc/swaps.
func swaps() ([]SwapDev, error) {
	f, err := os.Open("/proc/swaps")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []SwapDev
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 5 {
			continue
		}
		size, _ := strconv.Atoi(fs[2])
		used, _ := strconv.Atoi(fs[3])
		prio, _ := strconv.Atoi(fs[4])
		out = append(out, SwapDev{Name: fs[0], SizeKB: size, UsedKB: used, Prio: prio, IsZram: strings.Contains(fs[0], "zram")})
	}
	return out, sc.Err()
}

func swapon(dev string, prio int) error {
	p, err := unix.BytePtrFromString(dev)
	if err != nil {
		return err
	}
	// SWAP_FLAG_PREFER | prio, from <sys/swap.h>.
	flags := 0x8000 | (prio & 0x7fff)
	if prio < 0 {
		flags = 0
	}
	if _, _, e := unix.Syscall(unix.SYS_SWAPON, uintptr(unsafe.Pointer(p)), uintptr(flags), 0); e != 0 {
		return fmt.Errorf("swapon %s: %w", dev, e)
	}
	return nil
}

func swapoff(dev string) error {
	p, err := unix.BytePtrFromString(dev)
	if err != nil {
		return err
	}
	if _, _, e := unix.Syscall(unix.SYS_SWAPOFF, uintptr(unsafe.Pointer(p)), 0, 0); e != 0 {
		return fmt.Errorf("swapoff %s: %w", dev, e)
	}
	return nil
}

// diskSwapOnly makes a disk-backed swap device the only active one for
// the scenario (zram skips the swap cache on swap-in, so the stale swap
// cache cannot happen there). The returned function restores the zram
// devices with their priorities; call it on every path.
func diskSwapOnly() (restore func() error, disk string, err error) {
	ds, err := swaps()
	if err != nil {
		return nil, "", err
	}
	var zram []SwapDev
	for _, d := range ds {
		if d.IsZram {
			zram = append(zram, d)
		} else if disk == "" {
			disk = d.Name
		}
	}
	if disk == "" {
		return nil, "", Skipf("no disk-backed swap device in /proc/swaps (want the virtio disk with serial ldtswap)")
	}
	restore = func() error {
		var errs []error
		for _, z := range zram {
			errs = append(errs, swapon(z.Name, z.Prio))
		}
		return errors.Join(errs...)
	}
	for i, z := range zram {
		if err := swapoff(z.Name); err != nil {
			for _, r := range zram[:i] {
				_ = swapon(r.Name, r.Prio)
			}
			return nil, "", err
		}
	}
	return restore, disk, nil
}

// anySwap fails with a skip when no swap is active.
func anySwap() error {
	ds, err := swaps()
	if err != nil {
		return err
	}
	if len(ds) == 0 {
		return Skipf("no active swap device (/proc/swaps is empty)")
	}
	return nil
}

// writeFile writes a sysfs/procfs knob.
func writeFile(path, v string) error {
	if err := os.WriteFile(path, []byte(v), 0o644); err != nil {
		return fmt.Errorf("write %q to %s: %w", v, path, err)
	}
	return nil
}

func readInt(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
}

// dropCaches writes back and drops clean page cache.
func dropCaches() error {
	unix.Sync()
	return writeFile("/proc/sys/vm/drop_caches", "3")
}

// anonHugeKB sums AnonHugePages over the VMAs of [start, end) in
// /proc/self/smaps: the evidence that THPs really formed.
func anonHugeKB(start, end uintptr) (int, error) {
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	total, in := 0, false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		fs := strings.Fields(line)
		if len(fs) == 0 {
			continue
		}
		if a, b, ok := strings.Cut(fs[0], "-"); ok && !strings.HasSuffix(fs[0], ":") {
			lo, e1 := strconv.ParseUint(a, 16, 64)
			hi, e2 := strconv.ParseUint(b, 16, 64)
			if e1 == nil && e2 == nil {
				in = uintptr(lo) < end && uintptr(hi) > start
				continue
			}
		}
		if in && fs[0] == "AnonHugePages:" && len(fs) >= 2 {
			kb, _ := strconv.Atoi(fs[1])
			total += kb
		}
	}
	return total, sc.Err()
}

const khugepagedSleep = "/sys/kernel/mm/transparent_hugepage/khugepaged/scan_sleep_millisecs"

// pauseKhugepaged keeps khugepaged from collapsing the scenario's THP
// segments behind its back: a collapse installs a dirty PMD, so every
// page of the block is reported without a write, at a moment the oracle
// cannot know. The scenarios collapse with MADV_COLLAPSE themselves.
// The scan interval is restored when the scenario ends.
func (e *Scene) pauseKhugepaged() {
	if err := e.Set(khugepagedSleep, "3600000"); err != nil {
		e.Note("khugepaged not paused: %v", err)
	}
}
