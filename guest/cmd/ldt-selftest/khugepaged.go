package main

// khugepaged's own retract of a PTE-mapped shmem THP:
// collapse_pte_mapped_thp(mm, addr, install_pmd=false) clears every PTE and
// lets the folio refault, PMD-mapped and clean. Through 0022 the LDT state
// of the cleared entries went nowhere (only MADV_COLLAPSE's install_pmd
// path marked the new PMD): a write not yet collected was lost. 0023 keeps
// the range in the tracker (ldt_entry_lost()).

import (
	"fmt"
	"os"
	"strings"
	"time"
	"unsafe"

	"ldtlab/guest/ldt"
	"ldtlab/guest/pagemap"
)

func init() { checks = append(checks, check{"khugepaged-retract", checkKhugepagedRetract}) }

// checkKhugepagedRetract: p5 of a PTE-mapped shmem THP written after the
// last collection, then khugepaged (scan interval 10 ms) retracts the page
// table: the next collection must report the 2 MiB range (the cleared
// entries were writable, so the kernel counts them all as written: a
// bounded extra report), the one after it nothing, and a write after the
// retract its page alone, or the 2 MiB if the folio refaulted PMD-mapped.
func checkKhugepagedRetract() error {
	return withP5OnPTEMappedShmemTHP(func(f *ldt.File, mem []byte, _ uint64) error {
		base := uintptr(unsafe.Pointer(&mem[0]))
		end := base + hpage
		restorePages, err := setKnob("/sys/kernel/mm/transparent_hugepage/khugepaged/pages_to_scan", "65536")
		if err != nil {
			return err
		}
		defer restorePages()
		fullScans := func() string {
			b, _ := os.ReadFile("/sys/kernel/mm/transparent_hugepage/khugepaged/full_scans")
			return strings.TrimSpace(string(b))
		}
		fs0 := fullScans()
		if _, err := setKnob(khugepagedSleep, "10"); err != nil {
			return err
		}
		t0 := time.Now()
		retracted := false
		for time.Since(t0) < 60*time.Second {
			es, err := pagemap.Read(0, base, 8)
			if err != nil {
				return err
			}
			if !es[5].Present() {
				retracted = true
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		setKnob(khugepagedSleep, "3600000")
		fs1 := fullScans()
		kb, _ := pagemap.SmapsKB(base, "ShmemPmdMapped")
		info("khugepaged-retract: retracted=%v after %v (full_scans %s -> %s), ShmemPmdMapped now %v", retracted, time.Since(t0).Round(time.Millisecond), fs0, fs1, kb)
		if !retracted {
			return fmt.Errorf("khugepaged did not retract the page table in 60 s: the check cannot judge (full_scans %s -> %s)", fs0, fs1)
		}
		if err := expect(f, base, end, ldt.Clear, pageRegions(uint64(base), 0, hpage/pg), "after khugepaged's retract (p5 written, not collected)"); err != nil {
			return fmt.Errorf("%w (collapse_pte_mapped_thp with install_pmd=false)", err)
		}
		if err := expect(f, base, end, ldt.Clear, nil, "after the clear"); err != nil {
			return err
		}
		mem[7*pg+1] = 9
		// The folio refaults PMD-mapped when it can (filemap_map_pmd()): one
		// Dirty bit for the 2 MiB; PTE-mapped, p7 alone.
		want := pageRegions(uint64(base), 7, 8)
		if kb, err := pagemap.SmapsKB(base, "ShmemPmdMapped"); err == nil && kb >= hpage>>10 {
			want = pageRegions(uint64(base), 0, hpage/pg)
		}
		return expect(f, base, end, ldt.Clear, want, "p7 written after the retract")
	})
}
