package result

import "strings"

// The race hunt's (ldt-stress) known gaps, beside the catalogue's (Gaps)
// and the fuzzer's (FuzzGaps): shown as KNOWN-GAP, never excused for ldt.

// StressLossGaps are documented limits of a reference tracker: writes of
// one source it cannot see. A run whose every lost page has only that
// source is a KNOWN-GAP.
var StressLossGaps = []Gap{
	{"odirect", "pagemap-scan", "write-protection cannot see a device writing into a page pinned before the write-protect (O_DIRECT, DMA): the write takes no fault; LDT reports pinned pages instead"},
}

// StressReportGaps are kernel bugs outside LDT that a reference tracker's
// run can hit, by the stack frame that names them (Gap.Scenario).
var StressReportGaps = []Gap{
	{"make_uffd_wp_pte", "pagemap-scan", "vanilla 6.12 bug, not LDT: PAGEMAP_SCAN's write-protect marks a writable migration entry uffd-wp (make_uffd_wp_pte), which page_table_check warns about; the vanilla kernel shows it too"},
}

// StressGap is why tracker may lose the pages of a run whose lost pages
// were written by bySource (source -> pages), or "".
func StressGap(tracker string, bySource map[string]int) string {
	for _, g := range StressLossGaps {
		if g.Tracker != tracker {
			continue
		}
		only := len(bySource) > 0
		for src := range bySource {
			only = only && src == g.Scenario
		}
		if only {
			return g.Why
		}
	}
	return ""
}

// KnownStressReport is why a kernel report (its text) during tracker's
// stress run is a known bug outside LDT, or "".
func KnownStressReport(tracker, text string) string {
	for _, g := range StressReportGaps {
		if g.Tracker == tracker && strings.Contains(text, g.Scenario) {
			return g.Why
		}
	}
	return ""
}
