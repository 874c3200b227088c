// Command ldt-flushes counts the TLB flushes one LDT collect-and-clear
// makes, on any kernel (no CONFIG_DEBUG_TLBFLUSH needed): the collecting
// thread runs on CPU 0 while a thread of the same process spins on CPU 1,
// so CPU 1 is never lazy in the address space and every flush_tlb_mm_range()
// of the collection reaches it as exactly one TLB shootdown IPI
// (/proc/interrupts "TLB", CPU 1's column). Needs 2 CPUs.
//
//	ldt-flushes [-mib 128] [-pcts 1,10,50,100] [-reps 3] [-batch 0]
//
// One line per cell: dirty share, pages written, regions, ioctls, flushes
// (CPU 1's shootdowns during the collection) and the collection's time.
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"ldtlab/guest/ldt"
)

func main() { os.Exit(run()) }

func run() int {
	mib := flag.Int("mib", 128, "size of the tracked mapping in MiB")
	pcts := flag.String("pcts", "1,10,50,100", "dirty shares in percent (every 100/p-th page written)")
	reps := flag.Int("reps", 3, "repetitions of every share")
	batch := flag.Int("batch", 0, "CollectAll's buffer in regions (0: the library's default)")
	flag.Parse()
	if runtime.NumCPU() < 2 {
		fmt.Fprintln(os.Stderr, "ldt-flushes: needs 2 CPUs")
		return 2
	}
	var stop atomic.Bool
	started := make(chan error, 1)
	go spin(&stop, started)
	if err := <-started; err != nil {
		fmt.Fprintln(os.Stderr, "ldt-flushes:", err)
		return 1
	}
	defer stop.Store(true)
	runtime.LockOSThread()
	if err := pin(0); err != nil {
		fmt.Fprintln(os.Stderr, "ldt-flushes: pin the collector to CPU 0:", err)
		return 1
	}
	if err := measure(*mib, *pcts, *reps, *batch); err != nil {
		fmt.Fprintln(os.Stderr, "ldt-flushes:", err)
		return 1
	}
	return 0
}

func pin(cpu int) error {
	var set unix.CPUSet
	set.Set(cpu)
	return unix.SchedSetaffinity(0, &set)
}

// spin keeps a thread of this process running user code on CPU 1.
func spin(stop *atomic.Bool, started chan<- error) {
	runtime.LockOSThread()
	if err := pin(1); err != nil {
		started <- fmt.Errorf("pin the spinner to CPU 1: %w", err)
		return
	}
	started <- nil
	for n := 0; !stop.Load(); n++ {
	}
}

// shootdowns is CPU 1's count on the "TLB:" line of /proc/interrupts.
func shootdowns() (int64, error) {
	f, err := os.Open("/proc/interrupts")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) >= 3 && fs[0] == "TLB:" {
			return strconv.ParseInt(fs[2], 10, 64)
		}
	}
	return 0, fmt.Errorf("no TLB line with 2 CPUs in /proc/interrupts")
}

func measure(mib int, pcts string, reps, batch int) error {
	size := mib << 20
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		return fmt.Errorf("mmap %d MiB: %w", mib, err)
	}
	defer unix.Munmap(mem)
	// 4 KiB pages: scattered dirty pages make one region each.
	if err := unix.Madvise(mem, unix.MADV_NOHUGEPAGE); err != nil {
		return fmt.Errorf("MADV_NOHUGEPAGE: %w", err)
	}
	for i := 0; i < size; i += 4096 {
		mem[i] = 1
	}
	f, err := ldt.Open()
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Attach(0); err != nil {
		return err
	}
	if batch > 0 {
		f.SetBatch(batch)
	}
	base := uintptr(unsafe.Pointer(&mem[0]))
	end := base + uintptr(size)
	if _, err := f.CollectAll(base, end, ldt.Clear); err != nil {
		return fmt.Errorf("initial clear: %w", err)
	}
	fmt.Printf("%-6s %8s %8s %7s %8s %10s\n", "dirty%", "pages", "regions", "ioctls", "flushes", "ms")
	for _, p := range bytes.Split([]byte(pcts), []byte(",")) {
		pct, err := strconv.ParseFloat(string(p), 64)
		if err != nil || pct <= 0 || pct > 100 {
			return fmt.Errorf("bad share %q", p)
		}
		step := max(1, int(100/pct+0.5))
		for r := range reps {
			pages := 0
			for i := 0; i < size/4096; i += step {
				mem[i*4096] = byte(r + 2)
				pages++
			}
			calls := f.Calls()
			s0, err := shootdowns()
			if err != nil {
				return err
			}
			t0 := time.Now()
			rs, err := f.CollectAll(base, end, ldt.Clear)
			el := time.Since(t0)
			s1, err2 := shootdowns()
			if err != nil {
				return fmt.Errorf("collect %.0f%%: %w", pct, err)
			}
			if err2 != nil {
				return err2
			}
			fmt.Printf("%-6g %8d %8d %7d %8d %10.2f\n", pct, pages, len(rs), f.Calls()-calls, s1-s0, float64(el.Microseconds())/1000)
		}
	}
	return nil
}
