// Package tests is the end-to-end suite: it boots real guests of the lab's
// own kernel under QEMU and checks the lab and LDT through them.
//
// `go test ./tests` finds the cached kernel and image or builds them. A cold
// kernel build takes minutes; it runs in a detached `labctl build` process,
// so that go test's -timeout (10 minutes by default) cannot lose the work,
// and the suite says so before the timeout hits.
package tests

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"ldtlab/images/cache"
	"ldtlab/images/kernel"
	"ldtlab/internal/lines"
	"ldtlab/orchestrator/setup"
	"ldtlab/orchestrator/vm/libvirt"
)

var (
	repo   string // repository root
	labctl string // freshly built labctl binary
)

// vmPrefix marks every QEMU (and libvirt domain) this suite starts, for
// the leak check. The pid makes it this run's own: the leak check kills
// what it finds, and a suite running concurrently in another worktree
// must not lose its guests to it.
var vmPrefix = fmt.Sprintf("e2e%d-", os.Getpid())

// suiteTmp holds every VM directory of this run of the suite.
var suiteTmp string

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	start := time.Now()
	wd, _ := os.Getwd()
	repo = filepath.Dir(wd)
	if err := setup.Ensure(os.Stdout); err != nil {
		fmt.Printf("ldtlab e2e: setup failed: %v\n", err)
		return 1
	}
	// The libvirt backend's tests need a local libvirtd (unix socket only).
	if err := setup.Libvirt(os.Stdout); err != nil {
		fmt.Printf("ldtlab e2e: libvirt setup failed: %v\n", err)
		return 1
	}
	// A suite killed by go test's -timeout runs no cleanup: sweep what
	// such runs left (their QEMUs died with them).
	old, _ := filepath.Glob(filepath.Join(os.TempDir(), "ldtlab-e2e-*"))
	for _, d := range old {
		if st, err := os.Stat(d); err == nil && time.Since(st.ModTime()) > 2*time.Hour {
			os.RemoveAll(d)
		}
	}
	tmp, err := os.MkdirTemp("", "ldtlab-e2e-")
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer os.RemoveAll(tmp)
	// Every VM directory of this suite lives under tmp (the lab's
	// temporary ones and the tests' state directories alike), which is how
	// the leak check tells this suite's QEMUs from another suite's running
	// at the same time on the machine.
	suiteTmp = tmp
	os.Setenv("TMPDIR", tmp)
	labctl = filepath.Join(tmp, "labctl")
	if out, err := exec.Command("go", "build", "-o", labctl, "../orchestrator/cmd/labctl").CombinedOutput(); err != nil {
		fmt.Printf("ldtlab e2e: building labctl: %v\n%s", err, out)
		return 1
	}
	for _, v := range suiteKernels {
		if err := ensureBuilt(v, start); err != nil {
			fmt.Printf("ldtlab e2e: %v\n", err)
			return 1
		}
	}
	daemons, since := libvirtdPids(), uptime()
	code := m.Run()
	stopSuiteSSHD()
	// A libvirtd that dies mid-suite fails every later libvirt test with
	// "connection refused": say so once, with the kernel's word on why.
	if died := libvirtdDied(daemons, since); died != "" {
		fmt.Printf("ldtlab e2e: FAIL: %s\n", died)
		code = 1
	}
	if left := libvirtLeft(); len(left) > 0 {
		fmt.Printf("ldtlab e2e: FAIL: libvirt domains left behind by the suite: %v\n", left)
		code = 1
	}
	if leaked := qemuLeft(); len(leaked) > 0 {
		fmt.Printf("ldtlab e2e: FAIL: QEMU processes left behind by the suite:\n  %s\n", strings.Join(leaked, "\n  "))
		for _, l := range leaked {
			var pid int
			fmt.Sscan(l, &pid)
			syscall.Kill(pid, syscall.SIGKILL)
		}
		return 1
	}
	fmt.Printf("ldtlab e2e: no QEMU process left; suite took %s\n", time.Since(start).Round(time.Second))
	return code
}

// suiteKernels are the builds the suite boots.
var suiteKernels = []kernel.Options{
	{Config: "debug"},
	{Config: "debug", Vanilla: true},
}

// ensureBuilt reports a cache hit, or builds in a detached process and
// watches go test's deadline while waiting.
func ensureBuilt(o kernel.Options, start time.Time) error {
	o.Repo = repo
	if b, ok, err := kernel.Find(o); err != nil {
		return err
	} else if ok {
		fmt.Printf("ldtlab e2e: using cached %s kernel %s (%s)\n", o.Variant(), b.Meta.KernelRelease, b.Dir)
		return nil
	}
	root, err := cache.Root()
	if err != nil {
		return err
	}
	logPath := filepath.Join(root, "logs", "e2e-build-"+o.Variant()+".log")
	if err := cache.MkdirPrivate(filepath.Dir(logPath)); err != nil {
		return err
	}
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logf.Close()
	args := []string{"build", "-config", o.Config}
	if o.Vanilla {
		args = append(args, "-vanilla")
	}
	cmd := exec.Command(labctl, args...)
	cmd.Dir = repo
	cmd.Stdout, cmd.Stderr = logf, logf
	// Detached: a go test timeout kills this binary, not the build.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	fmt.Printf("ldtlab e2e: no cached %s kernel for the current sources: building it now (a cold build takes ~7-10 min on 2 cores) in pid %d, log %s\n", o.Variant(), cmd.Process.Pid, logPath)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var deadline time.Time
	if f := flag.Lookup("test.timeout"); f != nil {
		if d, ok := f.Value.(flag.Getter).Get().(time.Duration); ok && d > 0 {
			deadline = start.Add(d)
		}
	}
	tick := time.NewTicker(30 * time.Second)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			if err != nil {
				return fmt.Errorf("building the %s kernel failed (%v):\n%s", o.Variant(), err, tailFile(logPath, 30))
			}
			fmt.Printf("ldtlab e2e: built %s kernel in %s\n", o.Variant(), time.Since(start).Round(time.Second))
			return nil
		case <-tick.C:
			fmt.Printf("ldtlab e2e: still building (%s): %s\n", time.Since(start).Round(time.Second), lastLine(logPath))
			if !deadline.IsZero() && time.Until(deadline) < 45*time.Second {
				return fmt.Errorf("go test's -timeout expires in %s while the kernel is still building. "+
					"The build continues in the background (pid %d, log %s); rerun when it finishes, "+
					"or run `make test` / `go test -timeout 90m ./tests`, which leave room for a cold build",
					time.Until(deadline).Round(time.Second), cmd.Process.Pid, logPath)
			}
		}
	}
}

func tailFile(path string, n int) string {
	b, _ := os.ReadFile(path)
	return lines.Last(string(b), n)
}

func lastLine(path string) string { return tailFile(path, 1) }

// qemuLeft lists QEMU processes started by this suite that still run.
func qemuLeft() []string {
	var out []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) == 0 || !strings.Contains(filepath.Base(args[0]), "qemu-system") {
			continue
		}
		if strings.Contains(string(b), "ldtlab-"+vmPrefix) && strings.Contains(string(b), suiteTmp+"/") {
			out = append(out, e.Name()+" "+strings.Join(args, " "))
		}
	}
	return out
}

// waitGone waits until no QEMU of the suite with the given name runs.
func waitGone(ctx context.Context, name string) bool {
	for {
		found := false
		for _, l := range qemuLeft() {
			if strings.Contains(l, "ldtlab-"+name+",") {
				found = true
			}
		}
		if !found {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// libvirtLeft destroys and lists the suite's libvirt domains still there.
func libvirtLeft() []string {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	gone, err := libvirt.Sweep(ctx, libvirt.DefaultURI, func(name, _ string) bool {
		return strings.HasPrefix(name, libvirt.NamePrefix+vmPrefix)
	})
	if err != nil {
		gone = append(gone, "(sweep failed: "+err.Error()+")")
	}
	return gone
}

// libvirtdPids lists the running libvirtd processes.
func libvirtdPids() []int {
	var pids []int
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		if b, err := os.ReadFile(filepath.Join("/proc", d.Name(), "comm")); err == nil && strings.TrimSpace(string(b)) == "libvirtd" {
			pids = append(pids, pid)
		}
	}
	return pids
}

// libvirtdDied says which of the libvirtds running when the suite began
// are gone, with what the kernel logged about libvirtd since then (a
// segfault names the thread, not the process).
func libvirtdDied(before []int, since float64) string {
	var gone []string
	for _, pid := range before {
		if syscall.Kill(pid, 0) == nil {
			continue
		}
		gone = append(gone, fmt.Sprintf("libvirtd (pid %d) died during the suite", pid))
	}
	if len(gone) == 0 {
		return ""
	}
	if out, err := exec.Command("dmesg").Output(); err == nil {
		for _, l := range strings.Split(string(out), "\n") {
			var t float64
			if _, err := fmt.Sscanf(strings.TrimLeft(l, "[ "), "%f]", &t); err == nil && t >= since && strings.Contains(l, "libvirtd[") {
				gone = append(gone, "kernel log: "+strings.TrimSpace(l))
			}
		}
	}
	return strings.Join(gone, "; ")
}

// uptime is the kernel's clock, which dmesg's timestamps count.
func uptime() float64 {
	var t float64
	if b, err := os.ReadFile("/proc/uptime"); err == nil {
		fmt.Sscan(string(b), &t)
	}
	return t
}
