package bench

import (
	"bytes"
	"strconv"
	"sync"

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

// procBuf is reused for every read of /proc, and the files stay open
// (read again with pread from offset 0), so taking a snapshot allocates
// (and faults in) no new memory of the measured process.
var (
	procMu  sync.Mutex
	procBuf = make([]byte, 1<<18)
	procFDs = map[string]int{}
)

// readProc reads a /proc file into procBuf; f is called on the bytes
// while the buffer is held.
func readProc(path string, f func([]byte)) bool {
	procMu.Lock()
	defer procMu.Unlock()
	fd, ok := procFDs[path]
	if !ok {
		var err error
		if fd, err = unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
			return false
		}
		procFDs[path] = fd
	}
	n := 0
	for n < len(procBuf) {
		k, err := unix.Pread(fd, procBuf[n:], int64(n))
		if err != nil {
			// A process that exited: forget its file.
			unix.Close(fd)
			delete(procFDs, path)
			return false
		}
		if k == 0 {
			break
		}
		n += k
	}
	f(procBuf[:n])
	return true
}

// counters reads the counters of process pid (0: this process).
func counters(pid int) snapshot {
	s := snapshot{tlbLocal: -1}
	readProc("/proc/vmstat", func(b []byte) { s.tlbLocal = vmstatTLB(b) })
	readProc("/proc/interrupts", func(b []byte) { s.shootdowns = interruptsTLB(b) })
	s.faults = processFaults(pid)
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
	n := int64(-1)
	readProc("/proc/"+strconv.Itoa(pid)+"/stat", func(b []byte) { n = statFaults(b) })
	return n
}

// lines calls f on every line of b, without allocating.
func lines(b []byte, f func(l []byte) bool) {
	for len(b) > 0 {
		l := b
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			l, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		if !f(l) {
			return
		}
	}
}

// fields calls f on every space-separated field of b, without allocating.
func fields(b []byte, f func(i int, w []byte) bool) {
	i := 0
	for len(b) > 0 {
		b = bytes.TrimLeft(b, " \t")
		if len(b) == 0 {
			return
		}
		w := b
		if j := bytes.IndexAny(b, " \t"); j >= 0 {
			w, b = b[:j], b[j:]
		} else {
			b = nil
		}
		if !f(i, w) {
			return
		}
		i++
	}
}

// atoi parses a non-negative decimal number; ok is false for anything else.
func atoi(w []byte) (n int64, ok bool) {
	if len(w) == 0 {
		return 0, false
	}
	for _, c := range w {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// statFaults parses minflt (field 10) and majflt (field 12) of a
// /proc/PID/stat line; the command name (field 2) may hold spaces and
// parentheses, so fields are counted after its last ')'.
func statFaults(b []byte) int64 {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return -1
	}
	// The first field after ')' is field 3 (state): field n is index n-3.
	var minflt, majflt int64 = -1, -1
	fields(b[i+1:], func(k int, w []byte) bool {
		switch k {
		case 7:
			if n, ok := atoi(w); ok {
				minflt = n
			}
		case 9:
			if n, ok := atoi(w); ok {
				majflt = n
			}
			return false
		}
		return true
	})
	if minflt < 0 || majflt < 0 {
		return -1
	}
	return minflt + majflt
}

// vmstatTLB sums nr_tlb_local_flush_all and nr_tlb_local_flush_one; -1
// when /proc/vmstat has neither (no CONFIG_DEBUG_TLBFLUSH).
func vmstatTLB(b []byte) int64 {
	var sum int64
	found, bad := false, false
	lines(b, func(l []byte) bool {
		k, v, ok := bytes.Cut(l, []byte(" "))
		if !ok || !(bytes.Equal(k, []byte("nr_tlb_local_flush_all")) || bytes.Equal(k, []byte("nr_tlb_local_flush_one"))) {
			return true
		}
		n, ok := atoi(bytes.TrimSpace(v))
		if !ok {
			bad = true
			return false
		}
		sum += n
		found = true
		return true
	})
	if !found || bad {
		return -1
	}
	return sum
}

// interruptsTLB sums the per-CPU counts of the "TLB:" line of
// /proc/interrupts (0 when there is none: a uniprocessor guest).
func interruptsTLB(b []byte) int64 {
	var sum int64
	lines(b, func(l []byte) bool {
		rest, ok := bytes.CutPrefix(bytes.TrimSpace(l), []byte("TLB:"))
		if !ok {
			return true
		}
		fields(rest, func(_ int, w []byte) bool {
			n, ok := atoi(w)
			if ok {
				sum += n
			}
			return ok // the description, "TLB shootdowns", ends the counts
		})
		return false
	})
	return sum
}
