package fuzz

import (
	"fmt"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// fork needs a real fork(): a child sharing the address space copy-on-write
// (os/exec execs). A raw clone(SIGCHLD) child of a Go program has one
// thread and a runtime it must not enter, so it runs only the nosplit,
// allocation-free code below: its writes, a byte on a pipe, then (kept
// alive) a read until the parent closes the other pipe, then exit.

const maxForkWrites = 64

type forkWrite struct {
	addr uintptr
	val  uint64
}

type forkPlan struct {
	w      [maxForkWrites]forkWrite
	n      int
	sigset uint64
	done   int // write end: one byte when the writes are done
	hold   int // read end: EOF lets the child exit; -1 exits at once
	holdW  int // the write end, which the child closes (or it never sees EOF)
}

type forkChild struct {
	pid  int
	hold int // our write end of the hold pipe
}

//go:nosplit
//go:norace
func rawForkWriter(pl *forkPlan) int {
	r, _, e := syscall.RawSyscall(syscall.SYS_CLONE, uintptr(syscall.SIGCHLD), 0, 0)
	if e != 0 {
		return -int(e)
	}
	if r != 0 {
		return int(r)
	}
	syscall.RawSyscall6(syscall.SYS_RT_SIGPROCMASK, 2 /* SIG_SETMASK */, uintptr(unsafe.Pointer(&pl.sigset)), 0, 8, 0, 0)
	syscall.RawSyscall(syscall.SYS_PRCTL, 1 /* PR_SET_PDEATHSIG */, uintptr(syscall.SIGKILL), 0)
	n := pl.n
	if n > maxForkWrites {
		n = maxForkWrites
	}
	for i := 0; i < n; i++ {
		*(*uint64)(ptrAt(pl.w[i].addr)) = pl.w[i].val
	}
	var b [1]byte
	syscall.RawSyscall(syscall.SYS_WRITE, uintptr(pl.done), uintptr(unsafe.Pointer(&b[0])), 1)
	if pl.hold >= 0 {
		syscall.RawSyscall(syscall.SYS_CLOSE, uintptr(pl.holdW), 0, 0)
		syscall.RawSyscall(syscall.SYS_READ, uintptr(pl.hold), uintptr(unsafe.Pointer(&b[0])), 1)
	}
	syscall.RawSyscall(syscall.SYS_EXIT_GROUP, 0, 0, 0)
	return 0
}

// fork: the child writes one word into each page of o.W it may write;
// what it writes into shared memory the parent sees (an external write,
// not the tracked mm's), into private memory it does not.
func (e *executor) fork(i int, o Op) error {
	if e.child != nil {
		e.child.stop()
		e.child = nil
	}
	pl := &forkPlan{sigset: ^uint64(0), hold: -1}
	for k, w := range o.W {
		if pl.n == maxForkWrites || w.R >= len(e.regions) {
			break
		}
		r := e.regions[w.R]
		if r.spec.Ring() || w.P >= r.n || !r.writable(w.P) {
			continue
		}
		v := wordVal(o.V, k)
		pl.w[pl.n] = forkWrite{r.base + uintptr(w.P)*pg + uintptr(wordOf(o.V, k))*8, v}
		pl.n++
	}
	var done, hold [2]int
	if err := unix.Pipe2(done[:], unix.O_CLOEXEC); err != nil {
		return err
	}
	pl.done = done[1]
	if o.Arg == "keep" {
		if err := unix.Pipe2(hold[:], unix.O_CLOEXEC); err != nil {
			return err
		}
		pl.hold, pl.holdW = hold[0], hold[1]
	}
	pid := rawForkWriter(pl)
	unix.Close(done[1])
	if o.Arg == "keep" {
		unix.Close(hold[0])
	}
	if pid < 0 {
		unix.Close(done[0])
		if o.Arg == "keep" {
			unix.Close(hold[1])
		}
		e.failed(o.Op, syscall.Errno(-pid))
		return nil
	}
	var b [1]byte
	nr, _ := unix.Read(done[0], b[:])
	unix.Close(done[0])
	c := &forkChild{pid: pid, hold: -1}
	if o.Arg == "keep" {
		c.hold = hold[1]
	}
	if nr != 1 {
		c.stop()
		return fmt.Errorf("the forked child died before its writes were done")
	}
	// Apply what the parent can see to the model.
	k := 0
	for idx, w := range o.W {
		if k == pl.n {
			break
		}
		if w.R >= len(e.regions) {
			break
		}
		r := e.regions[w.R]
		if r.spec.Ring() || w.P >= r.n || !r.writable(w.P) {
			continue
		}
		k++
		if r.spec.Shared() {
			putWord(r.model[w.P*pg:], wordOf(o.V, idx), wordVal(o.V, idx))
			r.st[w.P].add(i, "fork-child")
		}
	}
	if o.Arg == "keep" {
		e.child = c
	} else {
		c.stop()
	}
	e.done(o.Op)
	return nil
}

// stop lets the child exit and reaps it.
func (c *forkChild) stop() {
	if c.hold >= 0 {
		unix.Close(c.hold)
		c.hold = -1
	}
	var ws unix.WaitStatus
	for c.pid > 0 {
		_, err := unix.Wait4(c.pid, &ws, 0, nil)
		if err != unix.EINTR {
			c.pid = 0
		}
	}
}
