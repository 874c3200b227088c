package scenario

import (
	"fmt"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The fork scenarios need a real fork(): a child sharing the parent's
// address space copy-on-write, which os/exec cannot give (it execs). A
// raw clone(SIGCHLD) child of a Go program has one thread and a runtime
// that must not be used, so the child runs only the nosplit, allocation
// free loop below, driven through a MAP_SHARED control block.

// Child operations.
const (
	opWrite  = 1 // write pages idx[:count] with stamps[:count]
	opExit   = 2 // exit_group(0)
	opMunmap = 3 // munmap the working set
	opSpin   = 4 // write pages round robin, then exit (count: writes, idx[0]: 1 = munmap instead of exit first)
)

const forkBatch = 240

// forkCtl lives in shared memory; seq/ack hand commands over.
type forkCtl struct {
	seq    uint64
	ack    uint64
	op     uint64
	count  uint64
	sigset uint64
	idx    [forkBatch]uint64
	stamps [forkBatch]uint64
}

// forkChild is a raw-forked child running childLoop.
type forkChild struct {
	pid int
	ctl *forkCtl
	shm []byte
}

// rawFork clones the calling process. It is nosplit: after the clone the
// child must not enter the runtime (no stack growth, no allocation).
//
//go:nosplit
//go:norace
func rawFork(ctl *forkCtl, mem []byte) int {
	r, _, e := syscall.RawSyscall(syscall.SYS_CLONE, uintptr(syscall.SIGCHLD), 0, 0)
	if e != 0 {
		return -int(e)
	}
	if r != 0 {
		return int(r)
	}
	// Child: no signals (the runtime's handlers cannot run here), die
	// with the parent.
	syscall.RawSyscall6(syscall.SYS_RT_SIGPROCMASK, 2 /* SIG_SETMASK */, uintptr(unsafe.Pointer(&ctl.sigset)), 0, 8, 0, 0)
	syscall.RawSyscall(syscall.SYS_PRCTL, 1 /* PR_SET_PDEATHSIG */, uintptr(syscall.SIGKILL), 0)
	childLoop(ctl, mem)
	return 0
}

//go:nosplit
//go:norace
func childLoop(ctl *forkCtl, mem []byte) {
	var ack uint64
	for {
		seq := atomic.LoadUint64(&ctl.seq)
		if seq == ack {
			syscall.RawSyscall(syscall.SYS_SCHED_YIELD, 0, 0, 0)
			continue
		}
		switch atomic.LoadUint64(&ctl.op) {
		case opWrite:
			for i := uint64(0); i < ctl.count && i < forkBatch; i++ {
				fillWords((*[pageWords]uint64)(unsafe.Pointer(&mem[ctl.idx[i]*PageSize])), ctl.stamps[i])
			}
		case opExit:
			syscall.RawSyscall(syscall.SYS_EXIT_GROUP, 0, 0, 0)
		case opMunmap:
			syscall.RawSyscall(syscall.SYS_MUNMAP, uintptr(unsafe.Pointer(&mem[0])), uintptr(len(mem)), 0)
		case opSpin:
			pages := uint64(len(mem) / PageSize)
			for i := uint64(0); i < ctl.count; i++ {
				p := (*[pageWords]uint64)(unsafe.Pointer(&mem[(i%pages)*PageSize]))
				p[1] = i // one store per page: many pages, quickly
			}
			if ctl.idx[0] == 1 {
				syscall.RawSyscall(syscall.SYS_MUNMAP, uintptr(unsafe.Pointer(&mem[0])), uintptr(len(mem)), 0)
			}
			syscall.RawSyscall(syscall.SYS_EXIT_GROUP, 0, 0, 0)
		}
		ack = seq
		atomic.StoreUint64(&ctl.ack, seq)
	}
}

// startFork forks a child that obeys commands on mem (the parent's
// working set, copied on write).
func startFork(mem []byte) (*forkChild, error) {
	shm, err := unix.Mmap(-1, 0, int(unsafe.Sizeof(forkCtl{})+PageSize-1)&^(PageSize-1), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, err
	}
	ctl := (*forkCtl)(unsafe.Pointer(&shm[0]))
	ctl.sigset = ^uint64(0)
	pid := rawFork(ctl, mem)
	if pid < 0 {
		unix.Munmap(shm)
		return nil, fmt.Errorf("clone: %w", syscall.Errno(-pid))
	}
	return &forkChild{pid: pid, ctl: ctl, shm: shm}, nil
}

// do posts a command and waits for the child to finish it.
func (c *forkChild) do(op uint64, idx, stamps []uint64) {
	c.ctl.op = op
	c.ctl.count = uint64(len(idx))
	copy(c.ctl.idx[:], idx)
	copy(c.ctl.stamps[:], stamps)
	seq := atomic.AddUint64(&c.ctl.seq, 1)
	for atomic.LoadUint64(&c.ctl.ack) != seq {
		syscall.RawSyscall(syscall.SYS_SCHED_YIELD, 0, 0, 0)
	}
}

// post posts a command without waiting (the child may exit on it).
func (c *forkChild) post(op, count, arg uint64) {
	c.ctl.op = op
	c.ctl.count = count
	c.ctl.idx[0] = arg
	atomic.AddUint64(&c.ctl.seq, 1)
}

// write has the child write stamps into pages (offsets into mem).
func (c *forkChild) write(pages []int, stamps []uint64) {
	for len(pages) > 0 {
		k := min(len(pages), forkBatch)
		idx := make([]uint64, k)
		for i, p := range pages[:k] {
			idx[i] = uint64(p)
		}
		c.do(opWrite, idx, stamps[:k])
		pages, stamps = pages[k:], stamps[k:]
	}
}

// kill ends and reaps the child.
func (c *forkChild) kill() {
	if c.pid > 0 {
		_ = unix.Kill(c.pid, unix.SIGKILL)
	}
	c.wait()
}

func (c *forkChild) wait() {
	var ws unix.WaitStatus
	for c.pid > 0 {
		_, err := unix.Wait4(c.pid, &ws, 0, nil)
		if err != unix.EINTR {
			c.pid = 0
		}
	}
	if c.shm != nil {
		unix.Munmap(c.shm)
		c.shm = nil
	}
}
