package fuzz

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
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
	var sink byte
	for q := p; q < p+n; q++ {
		if q == p || r.prot[q]&unix.PROT_READ != 0 {
			sink += m[q*pg]
		}
	}
	readSink = sink
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
	if fs := scans(); fs < fs0+2 {
		e.failed(OpKhugepaged, fmt.Errorf("%d full scans in 10 s, want 2", fs-fs0))
	} else {
		e.done(OpKhugepaged)
	}
	for _, r := range e.regions {
		if r.spec.THP == "pmd" {
			e.res.fact("khugepaged: r%d (%s) %s after %d full scans", r.idx, r.spec.Name(), e.mapping(r), scans()-fs0)
		}
	}
	// A retract zaps a shared region's PTEs the way a collapse does
	// (soft-dirty's shmem-collapse gap); LDT keeps the writes (0023).
	for _, r := range e.regions {
		if !r.spec.Shared() || r.spec.THP != "pmd" {
			continue
		}
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
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		return "smaps: " + err.Error()
	}
	in := false
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 0 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":") {
			lo, _, _ := strings.Cut(f[0], "-")
			a, _ := strconv.ParseUint(lo, 16, 64)
			in = uintptr(a) == addr
			continue
		}
		if in && len(f) >= 2 && (f[0] == "AnonHugePages:" || f[0] == "ShmemPmdMapped:" || f[0] == "FilePmdMapped:") && f[1] != "0" {
			out = append(out, strings.TrimSuffix(f[0], ":")+" "+f[1]+" kB")
		}
	}
	if len(out) == 0 {
		return "none PMD-mapped"
	}
	return strings.Join(out, ", ")
}
