package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"ldtlab/guest/ldt"
)

// The helper processes some checks need (the binary re-executed with
// -selftest-child), and the checks that attach to another process.

func selfExe() string {
	if p, err := os.Executable(); err == nil {
		return p
	}
	return "/proc/self/exe"
}

// target is a child process with an anonymous mapping, driven over
// stdin/stdout: "w P" writes page P, "exit" ends it.
type target struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Reader
	base uintptr
	n    int
}

func startTarget(mode string, pages, populate int) (*target, error) {
	cmd := exec.Command(selfExe(), "-selftest-child="+mode, strconv.Itoa(pages), strconv.Itoa(populate))
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	outp, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	t := &target{cmd: cmd, in: in, out: bufio.NewReader(outp), n: pages}
	line, err := t.out.ReadString('\n')
	if err != nil {
		t.kill()
		return nil, fmt.Errorf("target did not start: %w", err)
	}
	a, ok := strings.CutPrefix(strings.TrimSpace(line), "addr ")
	v, perr := strconv.ParseUint(a, 0, 64)
	if !ok || perr != nil {
		t.kill()
		return nil, fmt.Errorf("target said %q", line)
	}
	t.base = uintptr(v)
	return t, nil
}

func (t *target) pid() int           { return t.cmd.Process.Pid }
func (t *target) end() uintptr       { return t.base + uintptr(t.n)*pg }
func (t *target) addr(p int) uintptr { return t.base + uintptr(p)*pg }

func (t *target) write(p int) error {
	if _, err := fmt.Fprintf(t.in, "w %d\n", p); err != nil {
		return err
	}
	line, err := t.out.ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ok" {
		return fmt.Errorf("target write %d: %q %v", p, line, err)
	}
	return nil
}

func (t *target) kill() {
	t.cmd.Process.Kill()
	t.cmd.Wait()
}

// withTarget runs a check with /dev/ldt attached to a fresh target
// process (mode, pages, populate as for startTarget); the target is
// killed and the file closed when it returns.
func withTarget(mode string, pages, populate int, check func(t *target, f *ldt.File) error) error {
	t, err := startTarget(mode, pages, populate)
	if err != nil {
		return err
	}
	defer t.kill()
	f, err := ldt.Open()
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Attach(t.pid()); err != nil {
		return fmt.Errorf("attach to the target: %w", err)
	}
	return check(t, f)
}

// childMain runs the helper processes.
func childMain(mode string, args []string) int {
	atoi := func(i, def int) int {
		if i < len(args) {
			if v, err := strconv.Atoi(args[i]); err == nil {
				return v
			}
		}
		return def
	}
	switch mode {
	case "exit":
		return 0
	case "locker":
		return lockerChild(atoi(0, 4))
	case "attacher":
		return attacherChild(atoi(0, 0))
	case "naive-unpriv":
		return naiveUnprivChild()
	case "eperm":
		// fd 3 is the parent's /dev/ldt; attach it to the parent.
		f, err := ldt.NewFile(os.NewFile(3, ldt.DevicePath))
		if err != nil {
			fmt.Println("result", err)
			return 0
		}
		fmt.Printf("uid %d\n", os.Getuid())
		err = f.Attach(atoi(0, 1))
		var errno unix.Errno
		switch {
		case err == nil:
			fmt.Println("result ok")
		case errors.As(err, &errno):
			fmt.Println("result", unix.ErrnoName(errno))
		default:
			fmt.Println("result", err)
		}
		return 0
	case "target", "writer":
		m, err := newMapping(atoi(0, 16))
		if err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			return 1
		}
		for p := 0; p < atoi(1, 0) && p < m.n; p++ {
			m.write(p)
		}
		fmt.Printf("addr %#x\n", m.base)
		if mode == "writer" {
			// Keep writing for a while, then exit by ourselves: the
			// parent is collecting in a loop meanwhile.
			deadline := time.Now().Add(300 * time.Millisecond)
			for i := 0; time.Now().Before(deadline); i++ {
				m.write(i % m.n)
				if i%64 == 0 {
					time.Sleep(time.Millisecond)
				}
			}
			return 0
		}
		return serveTarget(m, nil)
	}
	fmt.Fprintln(os.Stderr, "unknown child mode", mode)
	return 2
}

// serveTarget answers a target's commands on stdin until "exit" or EOF:
// "w P" writes page P of m; extra holds other commands, each answered
// with the line it returns.
func serveTarget(m *mapping, extra map[string]func() string) int {
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		cmd, arg, _ := strings.Cut(sc.Text(), " ")
		switch {
		case cmd == "w":
			p, err := strconv.Atoi(arg)
			if err != nil || p < 0 || p >= m.n {
				fmt.Println("bad page")
				continue
			}
			m.write(p)
			fmt.Println("ok")
		case cmd == "exit":
			return 0
		case extra[cmd] != nil:
			fmt.Println(extra[cmd]())
		}
	}
	return 0
}

// runUnprivileged runs a helper process as uid/gid 65534 and returns its
// output; extra files become its fds 3, 4...
func runUnprivileged(mode string, extra []*os.File, args ...string) (string, error) {
	cmd := exec.Command(selfExe(), append([]string{"-selftest-child=" + mode}, args...)...)
	cmd.ExtraFiles = extra
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: 65534, Gid: 65534},
		Pdeathsig:  syscall.SIGKILL,
	}
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("unprivileged helper %s: %v: %s", mode, err, out)
	}
	return string(out), nil
}

func checkEsrchNoPid() error {
	cmd := exec.Command(selfExe(), "-selftest-child=exit")
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("helper: %w", err)
	}
	pid := cmd.Process.Pid
	if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err == nil {
		return fmt.Errorf("pid %d was reused already; rerun", pid)
	}
	f, err := ldt.Open()
	if err != nil {
		return err
	}
	defer f.Close()
	return wantErrno(f.Attach(pid), unix.ESRCH, fmt.Sprintf("attach to reaped pid %d", pid))
}

// collectUntilESRCH retries for a short while: the address space is torn
// down by the exiting task, but a transient reference (e.g. a /proc
// reader) may delay the moment it is gone.
func collectUntilESRCH(f *ldt.File, start, end uintptr) error {
	deadline := time.Now().Add(2 * time.Second)
	for {
		_, err := f.CollectAll(start, end, 0)
		if errors.Is(err, unix.ESRCH) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("collect after exit: got %v, want ESRCH", err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("collect still succeeds 2s after the target exited, want ESRCH")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func checkEsrchExited() error {
	return withTarget("target", 16, 0, func(t *target, f *ldt.File) error {
		if _, err := f.CollectAll(t.base, t.end(), ldt.Clear); err != nil {
			return fmt.Errorf("initial clear: %w", err)
		}
		if err := t.write(2); err != nil {
			return err
		}
		if err := expect(f, t.base, t.end(), ldt.Clear, pageRegions(uint64(t.base), 2, 3), "child's write"); err != nil {
			return err
		}
		t.kill()
		if err := collectUntilESRCH(f, t.base, t.end()); err != nil {
			return err
		}
		return f.Close()
	})
}

func checkEperm() error {
	if os.Getuid() != 0 {
		return fmt.Errorf("must run as root (the target of the unprivileged attach)")
	}
	// The child inherits this open file, so the device's mode does not
	// decide the outcome; the attach it tries is the one being checked.
	dev, err := os.OpenFile(ldt.DevicePath, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	f, err := ldt.NewFile(dev)
	if err != nil {
		dev.Close()
		return err
	}
	defer f.Close()
	s, err := runUnprivileged("eperm", []*os.File{dev}, strconv.Itoa(os.Getpid()))
	if err != nil {
		return err
	}
	if !strings.Contains(s, "uid 65534\n") {
		return fmt.Errorf("helper did not run as uid 65534: %q", s)
	}
	if !strings.Contains(s, "result EPERM\n") {
		return fmt.Errorf("unprivileged attach to root's process: %q, want EPERM", strings.TrimSpace(s))
	}
	// The refused attach must not have bound the (shared) file.
	if err := f.Attach(0); err != nil {
		return fmt.Errorf("attach after the refused one: %w", err)
	}
	return nil
}

func checkExitWhileAttached() error {
	return withTarget("writer", 64, 64, func(t *target, f *ldt.File) error {
		ok, nonEmpty := 0, 0
		deadline := time.Now().Add(10 * time.Second)
		for {
			rs, err := f.CollectAll(t.base, t.end(), ldt.Clear)
			if errors.Is(err, unix.ESRCH) {
				break
			}
			if err != nil {
				return fmt.Errorf("collect %d while the target runs and exits: %w", ok, err)
			}
			ok++
			if len(rs) > 0 {
				nonEmpty++
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("no ESRCH 10s after the target should have exited")
			}
		}
		werr := t.cmd.Wait()
		info("exit-while-attached: %d collections (%d non-empty) before ESRCH, target exit: %v", ok, nonEmpty, werr)
		if nonEmpty == 0 {
			return fmt.Errorf("the writer's pages were never reported in %d collections", ok)
		}
		return f.Close()
	})
}
