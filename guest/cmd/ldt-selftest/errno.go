package main

import (
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"

	"ldtlab/guest/ldt"
)

// Checks of the errors the interface returns for bad calls.

func checkEinvalUnaligned() error {
	return withSelf(4, func(f *ldt.File, m *mapping) error {
		vec := make([]ldt.Region, 4)
		_, _, err := f.Collect(m.base+1, m.end(), 0, vec)
		if err := wantErrno(err, unix.EINVAL, "unaligned start"); err != nil {
			return err
		}
		_, _, err = f.Collect(m.base, m.end()-1, 0, vec)
		return wantErrno(err, unix.EINVAL, "unaligned end")
	})
}

func checkEinvalInverted() error {
	return withSelf(4, func(f *ldt.File, m *mapping) error {
		_, _, err := f.Collect(m.end(), m.base, 0, make([]ldt.Region, 4))
		return wantErrno(err, unix.EINVAL, "start > end")
	})
}

func checkEinvalFlags() error {
	return withSelf(4, func(f *ldt.File, m *mapping) error {
		for _, fl := range []ldt.Flags{1 << 2, 1 << 63} {
			_, _, err := f.Collect(m.base, m.end(), fl, make([]ldt.Region, 4))
			if err := wantErrno(err, unix.EINVAL, fmt.Sprintf("flags %#x", uint64(fl))); err != nil {
				return err
			}
		}
		return nil
	})
}

func checkEinvalSize() error {
	return withSelf(4, func(f *ldt.File, m *mapping) error {
		vec := make([]ldt.Region, 4)
		for _, size := range []uint64{0, 48, 64} {
			arg := ldt.CollectArg{Size: size, Start: uint64(m.base), End: uint64(m.end()),
				Vec: uint64(uintptr(unsafe.Pointer(&vec[0]))), VecLen: uint64(len(vec))}
			_, err := f.CollectRaw(&arg)
			if err := wantErrno(err, unix.EINVAL, fmt.Sprintf("size %d", size)); err != nil {
				return err
			}
		}
		runtime.KeepAlive(vec)
		return nil
	})
}

func checkEinvalVecLen0() error {
	return withSelf(4, func(f *ldt.File, m *mapping) error {
		m.write(0)
		_, _, err := f.Collect(m.base, m.end(), 0, nil)
		return wantErrno(err, unix.EINVAL, "vec_len 0")
	})
}

func checkEfaultVec() error {
	return withSelf(4, func(f *ldt.File, m *mapping) error {
		// An address that was mapped a moment ago and is not any more.
		hole, err := unix.Mmap(-1, 0, pg, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			return err
		}
		bad := uint64(uintptr(unsafe.Pointer(&hole[0])))
		if err := unix.Munmap(hole); err != nil {
			return err
		}
		m.write(1) // something to report, so the kernel has to write vec
		for _, vec := range []uint64{bad, 0xffff800000000000} {
			arg := ldt.CollectArg{Size: f.ArgSize(), Start: uint64(m.base), End: uint64(m.end()), Vec: vec, VecLen: 4}
			_, err := f.CollectRaw(&arg)
			if err := wantErrno(err, unix.EFAULT, fmt.Sprintf("vec %#x", vec)); err != nil {
				return err
			}
		}
		// Nothing was cleared (no LDT_CLEAR), so the page is still reported.
		return expect(f, m.base, m.end(), 0, pageRegions(uint64(m.base), 1, 2), "after EFAULT")
	})
}

func checkEnxio() error {
	f, err := ldt.Open()
	if err != nil {
		return err
	}
	defer f.Close()
	m, err := newMapping(4)
	if err != nil {
		return err
	}
	defer m.close()
	_, _, err = f.Collect(m.base, m.end(), 0, make([]ldt.Region, 4))
	return wantErrno(err, unix.ENXIO, "collect before attach")
}

func checkEbusy() error {
	f, err := ldt.Open()
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Attach(0); err != nil {
		return fmt.Errorf("first attach: %w", err)
	}
	return wantErrno(f.Attach(0), unix.EBUSY, "second attach")
}

// checkAttachNoMM: a task without an address space cannot be tracked — a
// kernel thread (kthreadd, pid 2) and a zombie (exited, not yet reaped)
// both give ESRCH (the `!mm` branch of ldt_attach(), which the coverage
// run showed no job reached).
func checkAttachNoMM() error {
	f, err := ldt.Open()
	if err != nil {
		return err
	}
	defer f.Close()
	if err := wantErrno(f.Attach(2), unix.ESRCH, "attach to kthreadd (pid 2)"); err != nil {
		return err
	}
	pid, err := forkExitingChild()
	if err != nil {
		return err
	}
	defer unix.Wait4(pid, nil, 0, nil)
	// Wait for its exit without reaping it: a zombie, whose mm is gone
	// and whose pid is not.
	var si unix.Siginfo
	if err := unix.Waitid(unix.P_PID, pid, &si, unix.WEXITED|unix.WNOWAIT, nil); err != nil {
		return fmt.Errorf("waitid: %w", err)
	}
	return wantErrno(f.Attach(pid), unix.ESRCH, fmt.Sprintf("attach to zombie pid %d", pid))
}
