package scenario

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Pressure sizes: the working set is 3x memory.max, and every epoch
// rewrites a third of it at random, so reclaim to zram runs all the time.
const (
	pressureLimit = 16 << 20
	pressurePages = 3 * pressureLimit / PageSize
)

const cgroupRoot = "/sys/fs/cgroup"

func init() {
	register(&Scenario{
		Name:  "memory-pressure",
		Paths: "1, 3 (S1+S2) under reclaim",
		Doc: fmt.Sprintf("a child in its own memory cgroup (memory.max %d MiB, zram swap) writes random pages over a %d MiB "+
			"working set every epoch; reclaim swaps written pages out and back in between collections.",
			pressureLimit>>20, pressurePages*PageSize>>20),
		Naive: MissPages,
		Run:   staged(runPressure),
		Child: &ChildSpec{Setup: pressureCgroup},
	})
}

// pressureCgroup creates the memory cgroup the child starts in.
func pressureCgroup(e *Env) (int, func() error, error) {
	ctrls, err := os.ReadFile(filepath.Join(cgroupRoot, "cgroup.controllers"))
	if err != nil {
		return -1, nil, Skipf("no cgroup2 at %s: %v", cgroupRoot, err)
	}
	if !strings.Contains(string(ctrls), "memory") {
		return -1, nil, Skipf("cgroup2 has no memory controller")
	}
	ds, err := swaps()
	if err != nil {
		return -1, nil, err
	}
	zram := false
	for _, d := range ds {
		zram = zram || d.IsZram
	}
	if !zram {
		return -1, nil, Skipf("no zram swap active (/proc/swaps)")
	}
	if err := writeFile(filepath.Join(cgroupRoot, "cgroup.subtree_control"), "+memory"); err != nil {
		return -1, nil, err
	}
	dir := filepath.Join(cgroupRoot, fmt.Sprintf("ldt-check-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		return -1, nil, err
	}
	rm := func() error { return os.Remove(dir) }
	for k, v := range map[string]string{"memory.max": strconv.Itoa(pressureLimit), "memory.swap.max": "max"} {
		if err := writeFile(filepath.Join(dir, k), v); err != nil {
			rm()
			return -1, nil, err
		}
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		rm()
		return -1, nil, err
	}
	e.Note("cgroup %s: memory.max %d MiB", dir, pressureLimit>>20)
	return fd, func() error {
		ev, _ := os.ReadFile(filepath.Join(dir, "memory.events"))
		if len(ev) > 0 {
			e.Note("memory.events: %s", strings.Join(strings.Fields(string(ev)), " "))
		}
		return errors.Join(unix.Close(fd), rm())
	}, nil
}

// vmstat reads one counter of /proc/vmstat.
func vmstat(name string) int64 {
	f, err := os.Open("/proc/vmstat")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), " ")
		if k == name {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return 0
}

func runPressure(e *Scene) error {
	cg, _ := os.ReadFile("/proc/self/cgroup")
	e.Note("child cgroup: %s", strings.TrimSpace(string(cg)))
	out0, in0 := vmstat("pswpout"), vmstat("pswpin")
	n := pressurePages
	ws, _, t, err := e.Populate(Anon, n)
	if err != nil {
		return err
	}
	for ep := range e.Epochs {
		for _, id := range Pick(e.Rand, 0, n, n/3) {
			ws.Write(id)
		}
		if _, err := e.Collect(ws, t); err != nil {
			return err
		}
		// Reading everything swaps the rest in (and others out): every
		// other epoch, and after the last one.
		if ep%2 == 1 || ep == e.Epochs-1 {
			if err := e.Verify(ws); err != nil {
				return err
			}
		}
	}
	if err := e.Quiet(ws, t); err != nil {
		return err
	}
	out, in := vmstat("pswpout")-out0, vmstat("pswpin")-in0
	e.Note("swapped out %d pages and in %d during the scenario (system-wide)", out, in)
	if out == 0 || in == 0 {
		return Skipf("reclaim swapped out %d and in %d pages: the pressure path was not exercised", out, in)
	}
	return nil
}
