package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"ldtlab/guest/ldt"
)

// An attach that a fatal signal interrupts (0024): the attach walks the
// target's shared mappings under mmap_read_lock_killable(), after it has
// claimed the address space in ldt_mms. Killed while it waits for that
// lock, it must give the claim back (mm/ldt.c ldt_attach() "xa_erase(&ldt_mms"):
// otherwise the address space stays claimed by a file that is gone, and
// every later attach fails with EBUSY.

func init() {
	checks = append(checks, check{"attach-interrupted", checkAttachInterrupted})
}

// lockerMiB is the populated region the locker mprotects over and over:
// large enough under TCG that an attach waits on the lock most of the time.
const lockerMiB = 256

// lockerChild is a target ("w P", "exit") whose other thread holds its
// mmap write lock most of the time: mprotect() of a populated region
// rewrites every PTE under that lock (change_protection()). "stop" ends
// the toggling.
func lockerChild(pages int) int {
	m, err := newMapping(pages)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 1
	}
	big, err := unix.Mmap(-1, 0, lockerMiB<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child: mmap:", err)
		return 1
	}
	for i := 0; i < len(big); i += pg {
		big[i] = 1
	}
	stop := make(chan struct{})
	stopped := make(chan error, 1)
	go func() {
		for {
			select {
			case <-stop:
				stopped <- nil
				return
			default:
			}
			for _, prot := range []int{unix.PROT_READ, unix.PROT_READ | unix.PROT_WRITE} {
				if err := unix.Mprotect(big, prot); err != nil {
					stopped <- fmt.Errorf("mprotect: %w", err)
					return
				}
			}
		}
	}()
	fmt.Printf("addr %#x\n", m.base)
	return serveTarget(m, map[string]func() string{"stop": func() string {
		close(stop)
		if err := <-stopped; err != nil {
			return err.Error()
		}
		return "ok"
	}})
}

// attacherChild opens /dev/ldt, says so, and attaches to pid.
func attacherChild(pid int) int {
	f, err := ldt.Open()
	if err != nil {
		fmt.Println("result", err)
		return 1
	}
	fmt.Println("open")
	if err := f.Attach(pid); err != nil {
		fmt.Println("result", err)
		return 1
	}
	fmt.Println("result attached")
	return 0
}

// waitingOnMmapLock: is pid asleep in the kernel in LDT's attach? The
// rwsem functions are __sched, so wchan names the caller of
// mmap_read_lock_killable(): ldt_keep_pinned_shared(), or what it was
// inlined into (ldt_ioctl on the debug kernel). The attach sleeps nowhere
// else: its file's mutex and the target's exec_update_lock (mm_access())
// are not contended here.
func waitingOnMmapLock(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name's closing parenthesis.
	i := strings.LastIndexByte(string(stat), ')')
	if i < 0 || i+2 >= len(stat) || stat[i+2] != 'D' {
		return false
	}
	wchan, err := os.ReadFile(fmt.Sprintf("/proc/%d/wchan", pid))
	w := string(wchan)
	return err == nil && (w == "ldt_keep_pinned_shared" || w == "ldt_attach" || w == "ldt_ioctl")
}

// killAttachWhileWaiting starts an attacher on target pid and kills it once
// it waits on the mmap lock. It returns whether it caught it waiting (the
// attach may also win the lock first: then it is simply killed).
func killAttachWhileWaiting(pid int) (bool, error) {
	cmd := exec.Command(selfExe(), "-selftest-child=attacher", strconv.Itoa(pid))
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	outp, err := cmd.StdoutPipe()
	if err != nil {
		return false, err
	}
	if err := cmd.Start(); err != nil {
		return false, err
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	out := bufio.NewReader(outp)
	if line, err := out.ReadString('\n'); err != nil || strings.TrimSpace(line) != "open" {
		return false, fmt.Errorf("attacher: %q %v", line, err)
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		if waitingOnMmapLock(cmd.Process.Pid) {
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				return false, err
			}
			cmd.Wait()
			return true, nil
		}
		var ws unix.WaitStatus
		if wpid, _ := unix.Wait4(cmd.Process.Pid, &ws, unix.WNOHANG, nil); wpid == cmd.Process.Pid {
			line, _ := out.ReadString('\n')
			info("attacher finished before it was seen waiting: %s", strings.TrimSpace(line))
			return false, nil
		}
		time.Sleep(200 * time.Microsecond)
	}
	return false, nil
}

// checkAttachInterrupted: attachers to a target whose mmap lock another of
// its threads holds for writing most of the time, each killed while it
// waits for that lock; then, with the lock free again, a new attach must
// succeed (no stale claim: EBUSY) and report a write of the target.
func checkAttachInterrupted() error {
	t, err := startTarget("locker", 4, 0)
	if err != nil {
		return err
	}
	defer t.kill()
	const want = 3
	caught := 0
	for try := 0; try < 20 && caught < want; try++ {
		ok, err := killAttachWhileWaiting(t.pid())
		if err != nil {
			return err
		}
		if ok {
			caught++
		}
	}
	if caught == 0 {
		return fmt.Errorf("setup: no attacher was caught waiting on the target's mmap lock in 20 tries")
	}
	info("%d attaches killed while waiting on the mmap lock", caught)
	if _, err := fmt.Fprintln(t.in, "stop"); err != nil {
		return err
	}
	if line, err := t.out.ReadString('\n'); err != nil || strings.TrimSpace(line) != "ok" {
		return fmt.Errorf("setup: stopping the locker: %q %v", line, err)
	}
	f, err := ldt.Open()
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Attach(t.pid()); err != nil {
		return fmt.Errorf("attach after %d interrupted attaches: %w", caught, err)
	}
	if _, err := f.CollectAll(t.base, t.end(), ldt.Clear); err != nil {
		return err
	}
	if err := t.write(2); err != nil {
		return err
	}
	got, err := f.CollectAll(t.base, t.end(), ldt.Clear)
	if err != nil {
		return err
	}
	if want := pageRegions(uint64(t.base), 2, 3); !sameRegions(got, want) {
		return fmt.Errorf("after the interrupted attaches: got %s, want %s", fmtRegions(uint64(t.base), got), fmtRegions(uint64(t.base), want))
	}
	return nil
}
