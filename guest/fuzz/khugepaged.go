package fuzz

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"ldtlab/guest/pagemap"
)

const khugepagedKnob = "/sys/kernel/mm/transparent_hugepage/khugepaged/"

// pteMap leaves the THP of the block [p,p+n) mapped by PTEs, as a program
// that once made one page of it read-only would: mprotect splits the VMA
// (a shmem THP's PMD is zapped, an anonymous one split), the reads refault
// the block page by page while no VMA covers its 2 MiB, and the old
// protection comes back (the VMAs merge again, the THP stays PTE-mapped).
func (e *executor) pteMap(r *region, p, n int) {
	m := r.mem()
	first := m[p*pg : (p+1)*pg]
	if err := unix.Mprotect(first, unix.PROT_READ); err != nil {
		e.failed(OpPTEMap, err)
		return
	}
	readSink += m[p*pg] // read-only now, whatever the model had
	r.touch(p+1, n-1)
	if err := unix.Mprotect(first, r.prot[p]); err != nil {
		// The page stays read-only: say so in the model.
		r.prot[p] = unix.PROT_READ
		e.failed(OpPTEMap, fmt.Errorf("restoring the protection: %w", err))
		return
	}
	e.done(OpPTEMap)
	e.res.fact("pte-map r%d [%d+%d]: %s", r.idx, p, n, e.mapping(r))
	// The split is a zap of a shared THP's PMD, as for mprotect.
	e.zapBlocks(r, p, 1, false)
}

// khugepaged lets khugepaged finish two full scans of every registered mm
// at full speed (its usual pace is a 10 s sleep between 4096-page
// passes), then slows it down again. What it may do here: collapse a
// PTE-mapped anonymous THP (collapse_huge_page), retract the page table of
// a PTE-mapped shmem THP without installing a PMD
// (collapse_pte_mapped_thp(install_pmd=false)), collapse small shmem
// folios (collapse_file).
func (e *executor) khugepaged() {
	scans := func() int {
		b, _ := os.ReadFile(khugepagedKnob + "full_scans")
		n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		return n
	}
	restorePages, err := SetKnob(khugepagedKnob+"pages_to_scan", "65536")
	if err != nil {
		e.failed(OpKhugepaged, err)
		return
	}
	defer restorePages()
	fs0 := scans()
	restoreSleep, err := SetKnob(khugepagedKnob+"scan_sleep_millisecs", "10")
	if err != nil {
		e.failed(OpKhugepaged, err)
		return
	}
	t0 := time.Now()
	for scans() < fs0+2 && time.Since(t0) < 10*time.Second {
		time.Sleep(10 * time.Millisecond)
	}
	restoreSleep()
	done := scans() - fs0
	if done < 2 {
		e.failed(OpKhugepaged, fmt.Errorf("%d full scans in 10 s, want 2", done))
	} else {
		e.done(OpKhugepaged)
	}
	for _, r := range e.regions {
		if r.spec.THP != "pmd" {
			continue
		}
		e.res.fact("khugepaged: r%d (%s) %s after %d full scans", r.idx, r.spec.Name(), e.mapping(r), done)
		if !r.spec.Shared() {
			continue
		}
		// A retract zaps a shared region's PTEs the way a collapse does
		// (soft-dirty's shmem-collapse gap); LDT keeps the writes (0023).
		for q := range r.st {
			if st := &r.st[q]; st.pending() && !st.zapped {
				st.coll = true
			}
		}
	}
}

// mapping says how r is mapped now: pages present, and how many of them
// by a PMD (pagemap's THP flag on a present page says the folio is a THP,
// not how it is mapped; smaps' PmdMapped fields do).
func (e *executor) mapping(r *region) string {
	present := 0
	if ents, err := e.pm.Read(r.base, r.n); err == nil {
		for _, en := range ents {
			if en.Present() {
				present++
			}
		}
	}
	return fmt.Sprintf("%d of %d pages present, %s", present, r.n, pmdMapped(r.base))
}

// pmdMapped is smaps' AnonHugePages / ShmemPmdMapped / FilePmdMapped of
// the mapping at addr.
func pmdMapped(addr uintptr) string {
	f, err := pagemap.Smaps(addr)
	if err != nil {
		return "smaps: " + err.Error()
	}
	var out []string
	for _, k := range []string{"AnonHugePages", "ShmemPmdMapped", "FilePmdMapped"} {
		if f[k] != 0 {
			out = append(out, fmt.Sprintf("%s %d kB", k, f[k]))
		}
	}
	if len(out) == 0 {
		return "none PMD-mapped"
	}
	return strings.Join(out, ", ")
}
