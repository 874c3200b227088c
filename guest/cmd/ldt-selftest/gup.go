package main

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"ldtlab/guest/ldt"
)

// Writes the kernel makes on behalf of a process (GUP), which the
// hardware dirty bit never sees, and the naive tracker that misses them.

// withGUPTarget runs a GUP check on a target with 8 of 16 pages
// populated, attached and cleared with flags.
func withGUPTarget(flags ldt.Flags, check func(t *target, f *ldt.File) error) error {
	return withTarget("target", 16, 8, func(t *target, f *ldt.File) error {
		if _, err := f.CollectAll(t.base, t.end(), flags|ldt.Clear); err != nil {
			return fmt.Errorf("initial clear: %w", err)
		}
		return check(t, f)
	})
}

func vmWrite(pid int, addr uintptr, data []byte) error {
	n, err := unix.ProcessVMWritev(pid,
		[]unix.Iovec{{Base: &data[0], Len: uint64(len(data))}},
		[]unix.RemoteIovec{{Base: addr, Len: len(data)}}, 0)
	if err != nil {
		return fmt.Errorf("process_vm_writev: %w", err)
	}
	if n != len(data) {
		return fmt.Errorf("process_vm_writev wrote %d of %d", n, len(data))
	}
	return nil
}

func checkProcessVMWritev() error {
	return withGUPTarget(0, func(t *target, f *ldt.File) error {
		// Page 5 is populated (the kernel writes through the direct map and
		// the PTE's D bit stays clear); page 12 is not (GUP faults it in).
		if err := vmWrite(t.pid(), t.addr(5)+100, []byte("ldt")); err != nil {
			return err
		}
		if err := vmWrite(t.pid(), t.addr(12)+200, []byte("ldt")); err != nil {
			return err
		}
		return expect(f, t.base, t.end(), ldt.Clear, pageRegions(uint64(t.base), 5, 6, 12, 13), "process_vm_writev into pages 5 and 12")
	})
}

func checkProcMem() error {
	return withGUPTarget(0, func(t *target, f *ldt.File) error {
		mem, err := os.OpenFile("/proc/"+strconv.Itoa(t.pid())+"/mem", os.O_RDWR, 0)
		if err != nil {
			return err
		}
		defer mem.Close()
		if _, err := mem.WriteAt([]byte("ldt"), int64(t.addr(6)+8)); err != nil {
			return fmt.Errorf("pwrite /proc/PID/mem: %w", err)
		}
		return expect(f, t.base, t.end(), ldt.Clear, pageRegions(uint64(t.base), 6, 7), "pwrite to /proc/PID/mem page 6")
	})
}

func checkNaiveCPUWrite() error {
	return withSelf(16, func(f *ldt.File, m *mapping) error {
		m.write(2, 3, 9)
		want := pageRegions(uint64(m.base), 2, 4, 9, 10)
		if err := expect(f, m.base, m.end(), ldt.Naive, want, "naive read"); err != nil {
			return err
		}
		if err := expect(f, m.base, m.end(), ldt.Naive|ldt.Clear, want, "naive collect+clear"); err != nil {
			return err
		}
		return expect(f, m.base, m.end(), ldt.Naive, nil, "naive after clear")
	})
}

// checkNaiveMissesGUP makes sure the negative control really has teeth:
// after a naive clear, a write through GUP leaves the hardware D bit clear
// and naive must not see it.
func checkNaiveMissesGUP() error {
	return withGUPTarget(ldt.Naive, func(t *target, f *ldt.File) error {
		if err := vmWrite(t.pid(), t.addr(3)+1, []byte("ldt")); err != nil {
			return err
		}
		got, err := f.CollectAll(t.base, t.end(), ldt.Naive)
		if err != nil {
			return err
		}
		if len(got) != 0 {
			return fmt.Errorf("naive reported %s after a process_vm_writev into populated page 3: it must rely on the hardware D bit only", fmtRegions(uint64(t.base), got))
		}
		return nil
	})
}
