package fuzz

import (
	"fmt"
	"os"
	"strings"
	"unsafe"
)

// SetKnob writes val to a sysctl or sysfs file and returns what puts the
// old value back.
func SetKnob(path, val string) (func(), error) {
	old, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(path, []byte(val), 0); err != nil {
		return nil, fmt.Errorf("writing %s to %s: %w", val, path, err)
	}
	prev := current(string(old))
	return func() { os.WriteFile(path, []byte(prev), 0) }, nil
}

// current turns "always [madvise] never" into "madvise", "100\n" into "100".
func current(s string) string {
	if i := strings.IndexByte(s, '['); i >= 0 {
		if j := strings.IndexByte(s[i:], ']'); j > 0 {
			return s[i+1 : i+j]
		}
	}
	return strings.TrimSpace(s)
}

// Knobs are the system settings a run may change; the driver snapshots
// them and puts them back after every run, whatever became of it.
func Knobs() []string {
	k := []string{
		"/sys/kernel/mm/transparent_hugepage/shmem_enabled",
		khugepagedKnob + "scan_sleep_millisecs", khugepagedKnob + "pages_to_scan",
		"/sys/kernel/mm/ksm/run", "/sys/kernel/mm/ksm/pages_to_scan", "/sys/kernel/mm/ksm/sleep_millisecs",
		"/proc/sys/kernel/numa_balancing",
		"/sys/kernel/debug/sched/numa_balancing/scan_delay_ms",
		"/sys/kernel/debug/sched/numa_balancing/scan_period_min_ms",
		"/sys/kernel/debug/sched/numa_balancing/scan_period_max_ms",
		"/sys/kernel/debug/sched/numa_balancing/scan_size_mb",
	}
	for _, s := range MTHPSizes {
		k = append(k, "/sys/kernel/mm/transparent_hugepage/hugepages-"+s+"/enabled")
	}
	return k
}

// MTHPSizes are the anonymous mTHP sizes a region may ask for.
var MTHPSizes = []string{"16kB", "32kB", "64kB", "128kB"}

// Snapshot reads the current value of every knob that exists.
func Snapshot() map[string]string {
	out := map[string]string{}
	for _, k := range Knobs() {
		if b, err := os.ReadFile(k); err == nil {
			out[k] = current(string(b))
		}
	}
	return out
}

// Restore writes back a snapshot's values that changed.
func Restore(snap map[string]string) {
	for k, v := range snap {
		if b, err := os.ReadFile(k); err == nil && current(string(b)) != v {
			os.WriteFile(k, []byte(v), 0)
		}
	}
}

func uintptrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(&b[0])) }

// ptrAt is the pointer at addr: memory outside the Go heap (mappings
// this program made), so the collector has nothing to say about it.
//
//go:nosplit
func ptrAt(addr uintptr) unsafe.Pointer { return *(*unsafe.Pointer)(unsafe.Pointer(&addr)) }

// bytesAt is the n bytes at addr (a mapping of this program's).
func bytesAt(addr uintptr, n int) []byte { return unsafe.Slice((*byte)(ptrAt(addr)), n) }

// readSink takes the sum of every read that is there to fault a page in:
// a load whose value goes nowhere is dead code to the compiler, and the
// page would stay unmapped.
var readSink byte
