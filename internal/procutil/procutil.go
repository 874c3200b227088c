// Package procutil ends processes politely, then firmly: SIGTERM, a
// grace period, SIGKILL. QEMU, its supervisor and the kernel build's
// make all stop this way.
package procutil

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"
)

// Terminate ends a child whose exit the caller observes on exited (the
// channel closes or yields once cmd.Wait returns). pid names a process;
// a negative pid names a process group, as in kill(2). It sends SIGTERM,
// waits up to grace, then sends SIGKILL and waits for the exit. It
// reports whether SIGKILL was needed.
func Terminate[T any](pid int, grace time.Duration, exited <-chan T) (killed bool) {
	select {
	case <-exited:
		return false
	default:
	}
	syscall.Kill(pid, syscall.SIGTERM)
	select {
	case <-exited:
		return false
	case <-time.After(grace):
	}
	syscall.Kill(pid, syscall.SIGKILL)
	<-exited
	return true
}

// reap is how long Stop waits for SIGKILLed processes to be gone.
const reap = 2 * time.Second

// Stop ends processes that are not children of this one (a VM found
// by its pid file), so there is no exit to wait on: TermWait(term, all,
// grace), then SIGKILL to what of all is still alive, polling up to two
// seconds more. It returns the pids still alive at the end.
func Stop(term, all []int, grace time.Duration) []int {
	left := TermWait(term, all, grace)
	if len(left) == 0 {
		return nil
	}
	for _, pid := range left {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	WaitGone(left, reap)
	return stillAlive(left)
}

// TermWait sends SIGTERM to term and polls until every process of all
// is gone or grace has passed, without killing: for a daemon that must
// not be cut short (Stop kills). It returns the pids still alive.
func TermWait(term, all []int, grace time.Duration) []int {
	for _, pid := range term {
		syscall.Kill(pid, syscall.SIGTERM)
	}
	if WaitGone(all, grace) {
		return nil
	}
	return stillAlive(all)
}

func stillAlive(pids []int) []int {
	var left []int
	for _, pid := range pids {
		if Alive(pid) {
			left = append(left, pid)
		}
	}
	return left
}

// WaitGone polls until none of pids is Alive or d has passed; it reports
// whether all are gone.
func WaitGone(pids []int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		gone := true
		for _, pid := range pids {
			if Alive(pid) {
				gone = false
				break
			}
		}
		if gone {
			return true
		}
		if !time.Now().Before(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Alive reports whether pid exists and is not a zombie (a killed child
// nobody has waited for yet counts as gone).
func Alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z'
	}
	return true
}
