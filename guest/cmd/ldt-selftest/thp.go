package main

import (
	"fmt"
	"os"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"ldtlab/guest/ldt"
	"ldtlab/guest/pagemap"
)

// Transparent huge pages: a PMD-mapped page is reported page by page.

const hpage = 2 << 20

// anonHugeKB returns AnonHugePages of the VMA containing addr.
func anonHugeKB(addr uintptr) (int, error) { return pagemap.SmapsKB(addr, "AnonHugePages") }

func thpSetting() string {
	b, _ := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled")
	return strings.TrimSpace(string(b))
}

func checkTHP() error {
	// Reserve 2 MiB of slack, then open exactly one aligned 2 MiB VMA.
	all, err := unix.Mmap(-1, 0, 2*hpage, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return err
	}
	defer unix.Munmap(all)
	start := uintptr(unsafe.Pointer(&all[0]))
	off := int((start+hpage-1)&^(hpage-1) - start)
	mem := all[off : off+hpage]
	base := uintptr(unsafe.Pointer(&mem[0]))
	if err := unix.Mprotect(mem, unix.PROT_READ|unix.PROT_WRITE); err != nil {
		return err
	}
	if err := unix.Madvise(mem, unix.MADV_HUGEPAGE); err != nil {
		return fmt.Errorf("MADV_HUGEPAGE: %w (THP enabled: %s)", err, thpSetting())
	}
	mem[0] = 1
	kb, err := anonHugeKB(base)
	if err != nil {
		return err
	}
	if kb < 2048 {
		// The fault may have fallen back to 4 KiB pages (fragmented
		// memory): populate and ask for a synchronous collapse.
		for i := 0; i < hpage; i += pg {
			mem[i] = 1
		}
		cerr := unix.Madvise(mem, unix.MADV_COLLAPSE)
		if kb, err = anonHugeKB(base); err != nil {
			return err
		}
		if kb < 2048 {
			return fmt.Errorf("no THP backing the aligned 2 MiB region (AnonHugePages %d kB, MADV_COLLAPSE: %v, THP enabled: %s)", kb, cerr, thpSetting())
		}
	}
	info("thp-pmd: region %#x is a PMD-mapped THP", base)

	f, err := attachedSelf()
	if err != nil {
		return err
	}
	defer f.Close()
	end := base + hpage
	whole := []ldt.Region{{Start: uint64(base), End: uint64(end)}}
	if err := expect(f, base, end, ldt.Clear, whole, "first collect of the written THP"); err != nil {
		return err
	}
	if err := expect(f, base, end, 0, nil, "after clear"); err != nil {
		return err
	}
	mem[3*pg+5] = 2
	if err := expect(f, base, end, 0, whole, "one byte written in subpage 3"); err != nil {
		return err
	}
	// A 1-region vec is enough for the whole PMD.
	vec := make([]ldt.Region, 1)
	n, we, err := f.Collect(base, end, ldt.Clear, vec)
	if err != nil {
		return fmt.Errorf("vec_len 1 collect: %w", err)
	}
	if n != 1 || vec[0] != whole[0] || we != end {
		return fmt.Errorf("vec_len 1 collect: n=%d vec=%s walk_end=%#x, want the whole 2 MiB and walk_end %#x", n, fmtRegions(uint64(base), vec[:n]), we, end)
	}
	if kb, err := anonHugeKB(base); err != nil || kb < 2048 {
		return fmt.Errorf("collection split the THP: AnonHugePages %d kB (%v)", kb, err)
	}
	if err := expect(f, base, end, 0, nil, "after clear"); err != nil {
		return err
	}
	mem[hpage-1] = 3
	return expect(f, base, end, ldt.Clear, whole, "write in the last subpage")
}
