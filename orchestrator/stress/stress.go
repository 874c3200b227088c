// Package stress is the host side of the race hunt (guest/stress): it runs
// ldt-stress in a guest sized for pressure under each tracker and judges
// the outcome — ldt and pagemap-scan must lose nothing, naive must lose
// writes (or the run had no teeth), and no kernel report may appear.
package stress

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"ldtlab/orchestrator/lab"
)

// Options select a stress job.
type Options struct {
	Trackers []string      // default: ldt, pagemap-scan, naive
	Duration time.Duration // per tracker and page size
	Pages    int
	THP      bool // run ldt a second time with transparent huge pages
	Seed     uint64
}

// Run is one tracker's run as ldt-stress reported it.
type Run struct {
	Tracker   string `json:"tracker"`
	THP       bool   `json:"thp"`
	Verdict   string `json:"verdict"` // PASS, CAUGHT, KNOWN-GAP, FAIL, NO-TEETH, ERROR
	LostPages int    `json:"lost_pages"`
	// LostBySource: whose writes were lost (cpu, gup-write, odirect…).
	LostBySource map[string]int `json:"lost_by_source,omitempty"`
	Writes       uint64         `json:"writes"`
	Collections  int            `json:"collections"`
	Copied       uint64         `json:"pages_copied"`
	Agitators    map[string]int `json:"agitators"`
	Lost         []any          `json:"lost,omitempty"`
	Error        string         `json:"error,omitempty"`
	// Reports are the kernel reports that appeared during this run.
	Reports []string `json:"kernel_reports,omitempty"`
	Known   string   `json:"known,omitempty"` // why a report here is a known kernel bug
	Command string   `json:"command"`
}

// knownReports are kernel bugs outside LDT that a reference tracker's run
// can hit: shown as KNOWN-GAP, never excused for ldt.
var knownReports = []struct {
	tracker, frame, why string
}{
	{"pagemap-scan", "make_uffd_wp_pte", "vanilla 6.12 bug, not LDT: PAGEMAP_SCAN's write-protect marks a writable migration entry uffd-wp (make_uffd_wp_pte), which page_table_check warns about; the vanilla kernel shows it too"},
}

// knownLoss are documented limits of a reference tracker: writes of one
// source it cannot see. Shown as KNOWN-GAP when every lost page has only
// that source; never for ldt.
var knownLoss = []struct{ tracker, source, why string }{
	{"pagemap-scan", "odirect", "write-protection cannot see a device writing into a page pinned before the write-protect (O_DIRECT, DMA): the write takes no fault; LDT reports pinned pages instead"},
}

func knownLost(tracker string, bySource map[string]int) string {
	for _, k := range knownLoss {
		if k.tracker != tracker {
			continue
		}
		only := len(bySource) > 0
		for src := range bySource {
			only = only && src == k.source
		}
		if only {
			return k.why
		}
	}
	return ""
}

func known(tracker, text string) string {
	for _, k := range knownReports {
		if k.tracker == tracker && strings.Contains(text, k.frame) {
			return k.why
		}
	}
	return ""
}

// Failed says whether the run is a failure of the job.
func (r Run) Failed() bool {
	return r.Verdict != "PASS" && r.Verdict != "CAUGHT" && r.Verdict != "KNOWN-GAP"
}

// Job runs the stress runs in m, one after another. Each kernel report is
// attributed to the run during which it appeared.
func Job(ctx context.Context, m *lab.Machine, o Options, log io.Writer) ([]Run, error) {
	if len(o.Trackers) == 0 {
		o.Trackers = []string{"ldt", "pagemap-scan", "naive"}
	}
	type cell struct {
		tracker string
		thp     bool
	}
	var cells []cell
	for _, t := range o.Trackers {
		cells = append(cells, cell{t, false})
		if o.THP && t == "ldt" {
			cells = append(cells, cell{t, true})
		}
	}
	var runs []Run
	for _, c := range cells {
		cmd := fmt.Sprintf("ldt-stress -tracker %s -pages %d -duration %s -seed %d -thp=%v", c.tracker, o.Pages, o.Duration, o.Seed, c.thp)
		fmt.Fprintf(log, "[stress] %s\n", cmd)
		// The guest's own clock runs the duration; allow TCG's slowness
		// on top for setup and the last epoch's comparison.
		seen := len(m.Reports())
		rctx, cancel := context.WithTimeout(ctx, 3*o.Duration+m.Timeouts.Command)
		res, err := m.Run(rctx, cmd)
		cancel()
		if err != nil {
			return runs, fmt.Errorf("stress %s: %w", c.tracker, err)
		}
		r := Run{Tracker: c.tracker, THP: c.thp, Command: cmd}
		if jerr := json.Unmarshal([]byte(strings.TrimSpace(string(res.Stdout))), &r); jerr != nil && res.Code != 2 {
			r.Error = fmt.Sprintf("unreadable result (%v): %s", jerr, res.Stdout)
		}
		r.Tracker, r.THP = c.tracker, c.thp
		r.Verdict = judge(c.tracker, res.Code, r.LostPages)
		if why := knownLost(c.tracker, r.LostBySource); r.Verdict == "FAIL" && why != "" {
			r.Verdict, r.Known = "KNOWN-GAP", why
		}
		if r.Verdict == "ERROR" && r.Error == "" {
			r.Error = strings.TrimSpace(string(res.Stderr))
		}
		for _, rep := range m.Reports()[seen:] {
			text := rep.String() + "\n" + rep.Text
			r.Reports = append(r.Reports, text)
			why := known(c.tracker, text)
			switch {
			case why != "" && !r.Failed():
				r.Verdict, r.Known = "KNOWN-GAP", why
			case why == "":
				r.Verdict, r.Error = "FAIL", "kernel report: "+rep.String()
			}
		}
		fmt.Fprintf(log, "[stress] %s thp=%v: %s (lost %d, %d writes, %d collections)\n", c.tracker, c.thp, r.Verdict, r.LostPages, r.Writes, r.Collections)
		runs = append(runs, r)
	}
	return runs, nil
}

// judge maps ldt-stress's exit status to a verdict: the negative control
// must lose writes, every real tracker must lose none.
func judge(tracker string, code, lost int) string {
	switch {
	case code == 2 || (code == 1) != (lost > 0):
		return "ERROR"
	case tracker == "naive" && lost > 0:
		return "CAUGHT"
	case tracker == "naive":
		return "NO-TEETH"
	case lost > 0:
		return "FAIL"
	}
	return "PASS"
}
