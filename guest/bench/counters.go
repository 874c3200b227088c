package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Counts is what the kernel did during one measured section, from counters
// read just before and just after it (never inside the timed part).
type Counts struct {
	// Faults are the page faults (minor + major) of the measured process:
	// the benchmark itself, or redis-server in the Redis figure.
	Faults int64 `json:"faults"`
	// TLBFlushes are the local TLB flushes of the whole guest, as the
	// kernel counts them with CONFIG_DEBUG_TLBFLUSH (/proc/vmstat
	// nr_tlb_local_flush_all + nr_tlb_local_flush_one: a full flush counts
	// once, a ranged flush once per page it invalidated). -1 when the
	// kernel does not count them.
	TLBFlushes int64 `json:"tlb_flushes"`
	// Shootdowns are the TLB shootdown IPIs the guest's CPUs received
	// (/proc/interrupts "TLB"): flushes another CPU asked for.
	Shootdowns int64 `json:"tlb_shootdowns"`
}

// snapshot is the raw counters at one instant.
type snapshot struct {
	faults     int64
	tlbLocal   int64 // -1: not counted by this kernel
	shootdowns int64
}

// counters reads the counters of process pid (0: this process).
func counters(pid int) snapshot {
	s := snapshot{faults: processFaults(pid), tlbLocal: -1}
	if b, err := os.ReadFile("/proc/vmstat"); err == nil {
		s.tlbLocal = vmstatTLB(b)
	}
	if b, err := os.ReadFile("/proc/interrupts"); err == nil {
		s.shootdowns = interruptsTLB(b)
	}
	return s
}

// since is the difference from an earlier snapshot.
func (s snapshot) since(a snapshot) Counts {
	c := Counts{Faults: s.faults - a.faults, TLBFlushes: -1, Shootdowns: s.shootdowns - a.shootdowns}
	if s.tlbLocal >= 0 && a.tlbLocal >= 0 {
		c.TLBFlushes = s.tlbLocal - a.tlbLocal
	}
	return c
}

// processFaults is minflt + majflt of pid (0: this process), -1 if unknown.
func processFaults(pid int) int64 {
	if pid == 0 {
		var ru unix.Rusage
		if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
			return -1
		}
		return ru.Minflt + ru.Majflt
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	return statFaults(b)
}

// statFaults parses minflt (field 10) and majflt (field 12) of a
// /proc/PID/stat line; the command name (field 2) may hold spaces and
// parentheses, so fields are counted after its last ')'.
func statFaults(b []byte) int64 {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return -1
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state): field n is f[n-3].
	if len(f) < 10 {
		return -1
	}
	minflt, err1 := strconv.ParseInt(f[7], 10, 64)
	majflt, err2 := strconv.ParseInt(f[9], 10, 64)
	if err1 != nil || err2 != nil {
		return -1
	}
	return minflt + majflt
}

// vmstatTLB sums nr_tlb_local_flush_all and nr_tlb_local_flush_one; -1
// when /proc/vmstat has neither (no CONFIG_DEBUG_TLBFLUSH).
func vmstatTLB(b []byte) int64 {
	var sum int64
	found := false
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), " ")
		if !ok || (k != "nr_tlb_local_flush_all" && k != "nr_tlb_local_flush_one") {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil {
			return -1
		}
		sum += n
		found = true
	}
	if !found {
		return -1
	}
	return sum
}

// interruptsTLB sums the per-CPU counts of the "TLB:" line of
// /proc/interrupts (0 when there is none: a uniprocessor guest).
func interruptsTLB(b []byte) int64 {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		rest, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "TLB:")
		if !ok {
			continue
		}
		var sum int64
		for _, f := range strings.Fields(rest) {
			n, err := strconv.ParseInt(f, 10, 64)
			if err != nil {
				break // the description: "TLB shootdowns"
			}
			sum += n
		}
		return sum
	}
	return 0
}
