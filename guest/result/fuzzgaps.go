package result

// FuzzGaps are the documented limits ldt-fuzz (guest/fuzz) excuses: a
// page lost by tracker for one of these reasons is counted as KNOWN-GAP,
// any other loss is a finding. As with Gaps, they excuse missed pages
// only, never corrupted content; and LDT is excused only what kmod/README
// declares out of its scope.
var FuzzGaps = []Gap{
	{"shared-zap", "ldt", "a MAP_SHARED (shmem, memfd, file) page's PTE was zapped while a write was pending (MADV_DONTNEED, MADV_PAGEOUT, reclaim, a shmem THP split): the page refaults clean from the page cache; kmod/README rows 2 and 7 declare it out of scope (the kernel's own dirtiness is kept)"},
	{"shared-zap", "softdirty", "the same zap: a refaulted shared PTE carries no soft-dirty bit once clear_refs cleared VM_SOFTDIRTY"},
	{"pin-readonly", "ldt", "written through a long-term pin while the process had the page mapped read-only (mprotect): kmod/README, Known limits: a pinned page whose mapping was later made read-only is not covered by the pin rule"},
	{"pin-write", "softdirty", "written through a long-term pin taken before clear_refs (io_uring fixed buffers): the device or kernel writes through the pin, no write fault marks the PTE; clear_refs skips only pinned private 4 KiB pages (pte_is_pinned), not THPs or shared pages"},
	{"pin-write", "pagemap-scan", "written through a long-term pin taken before the write-protection: the write takes no fault, so PAGEMAP_SCAN cannot see it (LDT reports pinned pages instead)"},
	{"ksm", "softdirty", "KSM replaces a merged PTE with one that has no soft-dirty bit (mm/ksm.c replace_page), so writes made before the merge are lost to soft-dirty"},
	{"ring", "softdirty", "the kernel writes io_uring CQ and AIO ring pages through its own mapping (io_uring_mmap_pages, aio_complete): no fault, no soft-dirty bit (kmod/README row 21)"},
	{"shmem-collapse", "softdirty", "collapse_file unmaps a shmem range's small folios (try_to_unmap: the PTEs become none) before installing the huge PMD, and khugepaged's retract of a PTE-mapped shmem THP clears its PTEs without installing one (collapse_pte_mapped_thp): soft-dirty loses uncollected writes as on any shmem zap (row 24)"},
}

// FuzzGap is why tracker may lose pages of class, or "".
func FuzzGap(class, tracker string) string {
	for _, g := range FuzzGaps {
		if g.Scenario == class && g.Tracker == tracker {
			return g.Why
		}
	}
	return ""
}
