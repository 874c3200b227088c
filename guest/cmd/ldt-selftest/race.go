package main

// A clearing collection whose copy-out fails while a racing UFFDIO_MOVE
// moves a page it found dirty (issue 19, finding 7). The series up to 0014
// cleared a chunk, copied it out and, on a fault, marked the chunk's
// addresses dirty again after the mmap lock had been dropped: a page moved
// away in between kept its cleared state at the new address and its write
// was never reported. Since 0020 nothing is cleared before the copy-out.

import (
	"errors"
	"fmt"
	"runtime"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"ldtlab/guest/ldt"
)

const (
	uffdRegisterWP       = 1 << 1
	uffdWriteprotectWP   = 1 << 0
	uffdEventPagefault   = 0x12
	sizeofUffdMsg        = 32
	sizeofUffdioRange    = 16
	sizeofUffdioWrprot   = 24
	raceTrackedPages     = 4096 // the report walk reads them all: a long walk
	raceDirtyPages       = 64   // at the end of the tracked mapping
	raceVecRegions       = 256  // one page of vec
	raceRoundsPerSetting = 2
)

var (
	iocUffdioWake         = ldt.IOR(uffdAPI, 0x02, sizeofUffdioRange)
	iocUffdioWriteprotect = ldt.IOWR(uffdAPI, 0x06, sizeofUffdioWrprot)
)

// raceUffd is a userfaultfd that also handles faults of kernel accesses
// (no UFFD_USER_MODE_ONLY: the copy-out of the collection must stop in it).
type raceUffd struct{ fd int }

func newRaceUffd() (*raceUffd, error) {
	fd, _, e := unix.Syscall(unix.SYS_USERFAULTFD, unix.O_CLOEXEC|unix.O_NONBLOCK, 0, 0)
	if e != 0 {
		return nil, fmt.Errorf("userfaultfd (kernel faults too, needs CAP_SYS_PTRACE): %w", e)
	}
	u := &raceUffd{fd: int(fd)}
	api := [3]uint64{uffdAPI, uffdFeatureMove, 0}
	if err := uffdIoctl(u.fd, iocUffdioAPI, unsafe.Pointer(&api)); err != nil {
		unix.Close(u.fd)
		return nil, fmt.Errorf("UFFDIO_API with UFFD_FEATURE_MOVE: %w", err)
	}
	return u, nil
}

func (u *raceUffd) close() { unix.Close(u.fd) }

func (u *raceUffd) register(base uintptr, size int, mode uint64) error {
	reg := [4]uint64{uint64(base), uint64(size), mode, 0}
	if err := uffdIoctl(u.fd, iocUffdioRegister, unsafe.Pointer(&reg)); err != nil {
		return fmt.Errorf("UFFDIO_REGISTER mode %#x: %w", mode, err)
	}
	return nil
}

// protect write-protects (wp) or unprotects and wakes the faulting threads.
func (u *raceUffd) protect(base uintptr, size int, wp bool) error {
	arg := [3]uint64{uint64(base), uint64(size), 0}
	if wp {
		arg[2] = uffdWriteprotectWP
	}
	return uffdIoctl(u.fd, iocUffdioWriteprotect, unsafe.Pointer(&arg))
}

func (u *raceUffd) wake(base uintptr, size int) error {
	arg := [2]uint64{uint64(base), uint64(size)}
	return uffdIoctl(u.fd, iocUffdioWake, unsafe.Pointer(&arg))
}

// event waits up to timeout for a page fault message; false on timeout.
func (u *raceUffd) event(timeout time.Duration) (bool, error) {
	fds := []unix.PollFd{{Fd: int32(u.fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, int(timeout/time.Millisecond))
	if err != nil && !errors.Is(err, unix.EINTR) {
		return false, fmt.Errorf("poll userfaultfd: %w", err)
	}
	if n <= 0 {
		return false, nil
	}
	var msg [sizeofUffdMsg]byte
	if _, err := unix.Read(u.fd, msg[:]); err != nil {
		if errors.Is(err, unix.EAGAIN) {
			return false, nil
		}
		return false, fmt.Errorf("read userfaultfd: %w", err)
	}
	if msg[0] != uffdEventPagefault {
		return false, fmt.Errorf("userfaultfd event %#x, want a page fault", msg[0])
	}
	return true, nil
}

// raceOutcome is what one round saw.
type raceOutcome struct {
	struck bool // the page was moved while the collection waited in its copy-out
	efault bool // and the collection failed
	lost   []int
}

// checkEfaultMoveRace: the collection's vec is write-protected with
// userfaultfd, so each write the kernel makes to it stops in the handler.
// At the strike-th such stop the handler moves the last dirty page of the
// tracked mapping elsewhere (UFFDIO_MOVE), unmaps vec and lets the
// collection go on: its copy-out fails. Earlier stops are let through and
// vec is protected again after a delay, which lands in the walk of a kernel
// that writes vec once before clearing (0001-0014 probe it with
// clear_user()). Every written page must then be reported by a later
// collection, at the address it has now.
func checkEfaultMoveRace() error {
	f, err := attachedSelf()
	if err != nil {
		return err
	}
	defer f.Close()
	delays := []time.Duration{0, 100 * time.Microsecond, 500 * time.Microsecond, 2 * time.Millisecond, 8 * time.Millisecond, 30 * time.Millisecond}
	var rounds, struck, efault int
	for _, strike := range []int{1, 2} {
		for _, d := range delays {
			if strike == 1 && d != 0 {
				continue // the delay only matters before a later stop
			}
			for range raceRoundsPerSetting {
				o, err := raceRound(f, strike, d)
				if err != nil {
					return fmt.Errorf("strike at stop %d, delay %v: %w", strike, d, err)
				}
				rounds++
				if o.struck {
					struck++
				}
				if o.efault {
					efault++
				}
				if len(o.lost) > 0 {
					return fmt.Errorf("strike at stop %d, delay %v: pages %v written before a collection that failed with EFAULT while the last was moved are never reported (%d rounds before)", strike, d, o.lost, rounds-1)
				}
			}
		}
	}
	info("%d rounds: a page moved during the copy-out in %d, EFAULT in %d, nothing lost", rounds, struck, efault)
	if efault == 0 {
		return fmt.Errorf("no round made the copy-out fail after a move (%d rounds, %d moves): the race was not exercised", rounds, struck)
	}
	return nil
}

func raceRound(f *ldt.File, strike int, delay time.Duration) (raceOutcome, error) {
	var o raceOutcome
	u, err := newRaceUffd()
	if err != nil {
		return o, err
	}
	defer u.close()
	m, err := newMapping(raceTrackedPages)
	if err != nil {
		return o, err
	}
	defer m.close()
	dst, err := newMapping(1)
	if err != nil {
		return o, err
	}
	defer dst.close()
	if err := u.register(dst.base, pg, uffdRegisterMissing); err != nil {
		return o, err
	}
	// vec: one page of its own, populated, then write-protected.
	vecMem, err := unix.Mmap(-1, 0, pg, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return o, fmt.Errorf("mmap vec: %w", err)
	}
	vecBase := uintptr(unsafe.Pointer(&vecMem[0]))
	vecMapped := true
	defer func() {
		if vecMapped {
			unix.Munmap(vecMem)
		}
	}()
	vecMem[0] = 1
	if err := u.register(vecBase, pg, uffdRegisterWP); err != nil {
		return o, err
	}

	// Every page table entry present, all collected: the walk is long.
	for p := range raceTrackedPages {
		m.mem[p*pg] = 1
	}
	if _, err := f.CollectAll(m.base, m.end(), ldt.Clear); err != nil {
		return o, fmt.Errorf("collect after populating: %w", err)
	}
	first := raceTrackedPages - raceDirtyPages
	moved := raceTrackedPages - 1
	for p := first; p < raceTrackedPages; p++ {
		m.write(p)
	}
	if err := u.protect(vecBase, pg, true); err != nil {
		return o, fmt.Errorf("write-protect vec: %w", err)
	}

	type result struct {
		n   int
		err error
	}
	done := make(chan result, 1)
	arg := ldt.CollectArg{Size: f.ArgSize(), Flags: uint64(ldt.Clear), Start: uint64(m.base),
		End: uint64(m.end()), Vec: uint64(vecBase), VecLen: raceVecRegions}
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		n, err := f.CollectRaw(&arg)
		done <- result{n, err}
	}()

	var res result
	stops := 0
	for finished := false; !finished; {
		select {
		case res = <-done:
			finished = true
			continue
		default:
		}
		ev, err := u.event(time.Millisecond)
		if err != nil {
			<-done
			return o, err
		}
		if !ev {
			continue
		}
		stops++
		if stops < strike {
			// Let this write through, protect vec again a moment later.
			if err := u.protect(vecBase, pg, false); err != nil {
				return o, fmt.Errorf("unprotect vec: %w", err)
			}
			time.Sleep(delay)
			if err := u.protect(vecBase, pg, true); err != nil {
				return o, fmt.Errorf("protect vec again: %w", err)
			}
			continue
		}
		// The strike: move the page, take vec away, wake the collection.
		mv := uffdioMove{Dst: uint64(dst.base), Src: m.addr(moved), Len: pg}
		if err := uffdIoctl(u.fd, iocUffdioMove, unsafe.Pointer(&mv)); err != nil {
			return o, fmt.Errorf("UFFDIO_MOVE: %w", err)
		}
		o.struck = true
		if _, _, e := unix.Syscall(unix.SYS_MUNMAP, vecBase, pg, 0); e != 0 {
			return o, fmt.Errorf("munmap vec: %w", e)
		}
		vecMapped = false
		if err := u.wake(vecBase, pg); err != nil {
			return o, fmt.Errorf("UFFDIO_WAKE: %w", err)
		}
	}

	var got []ldt.Region
	switch {
	case res.err == nil:
		if vecMapped {
			got = append(got, unsafe.Slice((*ldt.Region)(unsafe.Pointer(&vecMem[0])), res.n)...)
		} else if res.n > 0 {
			return o, fmt.Errorf("collection returned %d regions into a vec that was unmapped", res.n)
		}
	case errors.Is(res.err, unix.EFAULT):
		o.efault = o.struck
		if !o.struck {
			return o, fmt.Errorf("collection failed with EFAULT though vec stayed mapped")
		}
	default:
		return o, fmt.Errorf("collection: %w", res.err)
	}
	rest, err := f.CollectAll(m.base, m.end(), ldt.Clear)
	if err != nil {
		return o, fmt.Errorf("collection after the race: %w", err)
	}
	got = append(got, rest...)
	seen := reportedPages(m, got)
	atDst, err := f.CollectAll(dst.base, dst.end(), ldt.Clear)
	if err != nil {
		return o, fmt.Errorf("collection of the destination: %w", err)
	}
	for p := first; p < raceTrackedPages; p++ {
		if p == moved && o.struck {
			if len(atDst) == 0 {
				o.lost = append(o.lost, p)
			}
			continue
		}
		if !seen[p] {
			o.lost = append(o.lost, p)
		}
	}
	return o, nil
}

func init() {
	checks = append(checks, check{"efault-move-race", checkEfaultMoveRace})
}
