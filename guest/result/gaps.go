package result

// Gap is a documented kernel limitation of a tracker (a reference
// tracker's, or one LDT declares out of scope in kmod/README): the cell is
// shown, with its counts, and does not fail the run. It excuses missed
// pages only, never corruption. Each names the kernel code responsible.
// Scenario is what it applies to: a catalogue scenario (Gaps), a fuzz
// class (FuzzGaps), a stress write source or stack frame (stressgaps.go).
type Gap struct {
	Scenario, Tracker, Why string
}

// Gaps found by this lab; the guest quotes them in a failing cell's
// reason, the host turns such a cell into KNOWN-GAP.
var Gaps = []Gap{
	{"ksm", "softdirty", "KSM replaces a merged PTE with one that has no soft-dirty bit (mm/ksm.c replace_page), so writes made before the merge are lost to soft-dirty"},
	// Splitting a shmem THP zaps the PMD (mm/huge_memory.c
	// __split_huge_pmd_locked, non-anonymous branch) and the pages refault
	// clean; LDT keeps the PMD's pages since 0014 (kmod/README row 7).
	{"shmem-thp-split", "softdirty", "splitting a shmem THP zaps the PMD (mm/huge_memory.c __split_huge_pmd_locked, non-anonymous branch): the refaulted PTEs carry no soft-dirty bit once clear_refs cleared VM_SOFTDIRTY"},
	// The reference trackers on the second review's scenarios (issue 19);
	// LDT fixed each (kmod/patches 0011-0014).
	{"pinned-thp-wrprotect", "softdirty", "clear_refs write-protects the pinned THP (fs/proc/task_mmu.c clear_soft_dirty_pmd() has no pinned-folio check; its PTE twin skips pinned pages, pte_is_pinned()), and writes through the pin never fault: those into the THP are lost (the 4 KiB control's are kept)"},
	{"pinned-thp-wrprotect", "pagemap-scan", "PAGEMAP_SCAN write-protects pinned pages too (fs/proc/task_mmu.c make_uffd_wp_pte()/make_uffd_wp_pmd()), and writes through the pin never fault: all are lost (its O_DIRECT gap under ldt-stress, with io_uring fixed buffers)"},
	{"pinned-thp-numa-hint", "softdirty", "soft-dirty's own collection (clear_refs) write-protects the pinned THP as in pinned-thp-wrprotect, and writes through the pin never fault: those into the THP are lost"},
	{"pinned-thp-numa-hint", "pagemap-scan", "as in pinned-thp-wrprotect: PAGEMAP_SCAN write-protects pinned pages, and writes through the pin never fault"},
	{"shared-pin-elsewhere", "softdirty", "soft-dirty sees the writes that fault through this process's page tables; another process writing through its pin of the shared memory never touches them"},
	{"shared-pin-elsewhere", "pagemap-scan", "the same: userfaultfd write-protection sees only this process's faults, and a write through another process's pin takes none"},
	{"shared-pin-between-collections", "softdirty", "as in shared-pin-elsewhere: another process's writes through its pin never fault through this process's page tables"},
	{"shared-pin-between-collections", "pagemap-scan", "as in shared-pin-elsewhere: a write through another process's pin takes no userfaultfd write-protect fault here"},
	{"shared-pin-udmabuf", "softdirty", "a write through a udmabuf's own mapping (drivers/dma-buf/udmabuf.c, VM_PFNMAP) never touches the memfd mapping's page table entries, where soft-dirty looks"},
	{"shared-pin-udmabuf", "pagemap-scan", "the same: userfaultfd write-protection of the memfd mapping sees no write made through the udmabuf's mapping"},
	{"kernel-rings", "softdirty", "the kernel writes the io_uring CQ ring and the AIO ring through its own mapping of the pages (io_uring vm_insert_pages(), fs/aio.c aio_complete() via folio_address()): this process's PTEs never see those writes"},
	{"shmem-collapse", "softdirty", "collapse_file() unmaps the small folios (mm/rmap.c try_to_unmap(): the PTEs become none) and MADV_COLLAPSE installs a PMD without the soft-dirty bit once clear_refs cleared VM_SOFTDIRTY: writes not yet collected are lost"},
}

// KnownGap is why tracker misses pages in scenario, or "".
func KnownGap(scenario, tracker string) string {
	for _, g := range Gaps {
		if g.Scenario == scenario && g.Tracker == tracker {
			return g.Why
		}
	}
	return ""
}
