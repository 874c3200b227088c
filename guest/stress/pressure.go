package stress

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The agitators of this file change system state (sysctls, a memory
// cgroup, ksmd) for the length of the run and put it back when the run
// stops: knob restores what it changed.

// pressureAgitators are added to agitators by init (kept apart: they
// change system-wide state).
var pressureAgitators = []agitator{
	{"memcg", "squeeze the run's own memory cgroup (memory.high far below the set, then max) so reclaim swaps the set out under the writers (rows 1, 3)", needMemcg, agMemcg},
	{"fork", "fork a child that keeps the set shared copy-on-write for a moment: fork copies PTEs (row 8) and every later write breaks COW", always, agFork},
	{"ksm", "make runs of pages identical for ksmd to merge (write_protect_page, replace_page: row 15); writes break the sharing", needKSM, agKSM},
	{"compact", "compact all zones (/proc/sys/vm/compact_memory) every 100 ms: the set's pages migrate through migration entries under the writers (row 4)", needCompaction, agCompact},
	{"numa-balancing", "NUMA hinting faults: kernel.numa_balancing=1 with a short scan period turns PTEs PROT_NONE and back (change_prot_numa)", needNUMABalancing, agNUMABalancing},
}

func init() { agitators = append(agitators, pressureAgitators...) }

// knob writes value to a sysctl/sysfs file and returns the restore.
func knob(path, value string) (func(), error) {
	old, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(path, []byte(value), 0); err != nil {
		return nil, fmt.Errorf("writing %s to %s: %w", value, path, err)
	}
	return func() { os.WriteFile(path, []byte(strings.TrimSpace(firstField(string(old)))), 0) }, nil
}

// firstField turns "always [madvise] never" into "madvise" and "100\n"
// into "100".
func firstField(s string) string {
	if i := strings.IndexByte(s, '['); i >= 0 {
		if j := strings.IndexByte(s[i:], ']'); j > 0 {
			return s[i+1 : i+j]
		}
	}
	return strings.TrimSpace(s)
}

const cgroupRoot = "/sys/fs/cgroup"

func needMemcg(o Options) string {
	if why := needSwap(o); why != "" {
		return why
	}
	b, err := os.ReadFile(filepath.Join(cgroupRoot, "cgroup.controllers"))
	if err != nil || !strings.Contains(string(b), "memory") {
		return "no cgroup v2 memory controller"
	}
	return ""
}

// agMemcg moves this process into its own memory cgroup and alternates
// memory.high between a quarter of the set and max.
func agMemcg(s *set, r *rand.Rand) (int, error) {
	os.WriteFile(filepath.Join(cgroupRoot, "cgroup.subtree_control"), []byte("+memory"), 0)
	dir := filepath.Join(cgroupRoot, fmt.Sprintf("ldt-stress-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil && !os.IsExist(err) {
		return 0, fmt.Errorf("memcg: %w", err)
	}
	defer os.Remove(dir)
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0); err != nil {
		return 0, fmt.Errorf("memcg: joining %s: %w", dir, err)
	}
	// Back to the root before the cgroup is removed.
	defer os.WriteFile(filepath.Join(cgroupRoot, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0)
	high := filepath.Join(dir, "memory.high")
	defer os.WriteFile(high, []byte("max"), 0)
	squeeze := strconv.Itoa(max(s.n*pg/4, 4<<20))
	// What the squeeze made reclaim do to this cgroup (its own counters).
	defer func() {
		st := cgroupStat(filepath.Join(dir, "memory.stat"))
		// cgroup v2 has no pswpout: pgsteal is what reclaim took from
		// the cgroup (its anonymous pages go to swap), pgmajfault the
		// faults that read pages back.
		s.effect("memcg", "pages reclaimed from the cgroup (memory.stat pgsteal)", int(st["pgsteal"]))
		s.effect("memcg", "major faults in the cgroup (swap-ins, memory.stat pgmajfault)", int(st["pgmajfault"]))
		s.effect("memcg", "memory.high breaches (memory.events high)", int(cgroupStat(filepath.Join(dir, "memory.events"))["high"]))
	}()
	return loop(s, time.Millisecond, func() error {
		if err := os.WriteFile(high, []byte(squeeze), 0); err != nil {
			return fmt.Errorf("memcg: memory.high: %w", err)
		}
		time.Sleep(time.Duration(20+r.IntN(60)) * time.Millisecond)
		if err := os.WriteFile(high, []byte("max"), 0); err != nil {
			return fmt.Errorf("memcg: memory.high: %w", err)
		}
		time.Sleep(time.Duration(20+r.IntN(60)) * time.Millisecond)
		return nil
	})
}

// agFork forks a child that only sleeps and exits: while it lives, every
// page of the set is shared copy-on-write and the parent's writes fault
// and copy. The child runs no Go code (raw system calls only), which is
// what makes fork safe in a multithreaded Go program.
func agFork(s *set, r *rand.Rand) (int, error) {
	return loop(s, 10*time.Millisecond, func() error {
		ts := unix.Timespec{Nsec: int64(2+r.IntN(20)) * int64(time.Millisecond)}
		pid, _, e := unix.RawSyscall6(unix.SYS_CLONE, uintptr(unix.SIGCHLD), 0, 0, 0, 0, 0)
		if e != 0 {
			return fmt.Errorf("fork: %w", e)
		}
		if pid == 0 {
			unix.RawSyscall(unix.SYS_NANOSLEEP, uintptr(unsafe.Pointer(&ts)), 0, 0)
			unix.RawSyscall(unix.SYS_EXIT_GROUP, 0, 0, 0)
		}
		s.effect("fork", "forks (the set shared copy-on-write)", 1)
		var ws unix.WaitStatus
		for {
			_, err := unix.Wait4(int(pid), &ws, 0, nil)
			if err != unix.EINTR {
				return err
			}
		}
	})
}

func needKSM(Options) string {
	if _, err := os.Stat("/sys/kernel/mm/ksm/run"); err != nil {
		return "kernel without KSM"
	}
	return ""
}

// agKSM runs ksmd fast over the set and keeps making runs of identical
// pages (CPU copies: writes like any other) for it to merge.
func agKSM(s *set, r *rand.Rand) (int, error) {
	if err := unix.Madvise(s.mem, unix.MADV_MERGEABLE); err != nil {
		return 0, fmt.Errorf("MADV_MERGEABLE: %w", err)
	}
	defer unix.Madvise(s.mem, unix.MADV_UNMERGEABLE)
	for _, k := range [][2]string{{"pages_to_scan", "2000"}, {"sleep_millisecs", "5"}, {"run", "1"}} {
		restore, err := knob("/sys/kernel/mm/ksm/"+k[0], k[1])
		if err != nil {
			return 0, fmt.Errorf("ksm: %w", err)
		}
		defer restore()
	}
	return loop(s, 5*time.Millisecond, func() error {
		first, n := s.run(r, 16)
		src := s.bytes(first, 1)
		for p := first + 1; p < first+n; p++ {
			copy(s.bytes(p, 1), src)
		}
		s.effect("ksm", "pages made identical", n-1)
		// ksmd's merges into this process (a level: the largest seen).
		if b, err := os.ReadFile("/proc/self/ksm_merging_pages"); err == nil {
			if v, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				s.maxEffect("ksm", "pages merged by ksmd (most at once, /proc/self/ksm_merging_pages)", v)
			}
		}
		return nil
	})
}

func needNUMABalancing(o Options) string {
	if why := needNodes(o); why != "" {
		return why
	}
	if _, err := os.Stat("/proc/sys/kernel/numa_balancing"); err != nil {
		return "kernel without CONFIG_NUMA_BALANCING"
	}
	return ""
}

// agNUMABalancing switches NUMA balancing on with the shortest scan
// period; its actions are the hinting faults the kernel took meanwhile.
func agNUMABalancing(s *set, r *rand.Rand) (int, error) {
	// The scan tunables moved from kernel.numa_balancing_* to debugfs in
	// 5.17 (sched/numa_balancing/); older kernels have the sysctls.
	for _, k := range [][2]string{
		{"scan_delay_ms", "0"},
		{"scan_period_min_ms", "10"},
		{"scan_period_max_ms", "100"},
		{"scan_size_mb", "1024"},
	} {
		path := "/sys/kernel/debug/sched/numa_balancing/" + k[0]
		if _, err := os.Stat(path); err != nil {
			path = "/proc/sys/kernel/numa_balancing_" + k[0]
		}
		restore, err := knob(path, k[1])
		if err != nil {
			return 0, fmt.Errorf("numa-balancing: %w", err)
		}
		defer restore()
	}
	restore, err := knob("/proc/sys/kernel/numa_balancing", "1")
	if err != nil {
		return 0, fmt.Errorf("numa-balancing: %w", err)
	}
	defer restore()
	before, migBefore := vmstat("numa_hint_faults"), vmstat("numa_pages_migrated")
	for !s.stop.Load() {
		time.Sleep(10 * time.Millisecond)
	}
	s.effect("numa-balancing", "pages migrated by NUMA balancing (vmstat numa_pages_migrated, all causes)", int(vmstat("numa_pages_migrated")-migBefore))
	return int(vmstat("numa_hint_faults") - before), nil
}

func vmstat(name string) int64 {
	b, _ := os.ReadFile("/proc/vmstat")
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == name {
			v, _ := strconv.ParseInt(f[1], 10, 64)
			return v
		}
	}
	return 0
}

// cgroupStat reads a cgroup's "key value" file (memory.stat, memory.events).
func cgroupStat(path string) map[string]int64 {
	out := map[string]int64{}
	b, _ := os.ReadFile(path)
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 2 {
			v, _ := strconv.ParseInt(f[1], 10, 64)
			out[f[0]] = v
		}
	}
	return out
}

func needCompaction(o Options) string {
	if _, err := os.Stat("/proc/sys/vm/compact_memory"); err != nil {
		return "kernel without CONFIG_COMPACTION"
	}
	return ""
}

// agCompact's actions are the pages compaction isolated to migrate or to
// migrate into meanwhile (vmstat compact_isolated), not its writes.
func agCompact(s *set, r *rand.Rand) (int, error) {
	before, migBefore := vmstat("compact_isolated"), vmstat("compact_migrate_scanned")
	defer func() {
		s.effect("compact", "pages isolated (vmstat compact_isolated, all causes)", int(vmstat("compact_isolated")-before))
		s.effect("compact", "pages scanned to migrate (vmstat compact_migrate_scanned, all causes)", int(vmstat("compact_migrate_scanned")-migBefore))
	}()
	_, err := loop(s, 100*time.Millisecond, func() error {
		if err := os.WriteFile("/proc/sys/vm/compact_memory", []byte("1"), 0); err != nil {
			return fmt.Errorf("compact: %w", err)
		}
		return nil
	})
	return int(vmstat("compact_isolated") - before), err
}
