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
	Tracker     string         `json:"tracker"`
	THP         bool           `json:"thp"`
	Verdict     string         `json:"verdict"` // PASS, CAUGHT, FAIL, NO-TEETH, ERROR
	LostPages   int            `json:"lost_pages"`
	Writes      uint64         `json:"writes"`
	Collections int            `json:"collections"`
	Copied      uint64         `json:"pages_copied"`
	Agitators   map[string]int `json:"agitators"`
	Lost        []any          `json:"lost,omitempty"`
	Error       string         `json:"error,omitempty"`
	Command     string         `json:"command"`
}

// Failed says whether the run is a failure of the job.
func (r Run) Failed() bool { return r.Verdict != "PASS" && r.Verdict != "CAUGHT" }

// Job runs the stress runs in m, one after another, and returns them with
// the kernel reports seen meanwhile.
func Job(ctx context.Context, m *lab.Machine, o Options, log io.Writer) ([]Run, []string, error) {
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
		rctx, cancel := context.WithTimeout(ctx, 3*o.Duration+m.Timeouts.Command)
		res, err := m.Run(rctx, cmd)
		cancel()
		if err != nil {
			return runs, reports(m), fmt.Errorf("stress %s: %w", c.tracker, err)
		}
		r := Run{Tracker: c.tracker, THP: c.thp, Command: cmd}
		if jerr := json.Unmarshal([]byte(strings.TrimSpace(string(res.Stdout))), &r); jerr != nil && res.Code != 2 {
			r.Error = fmt.Sprintf("unreadable result (%v): %s", jerr, res.Stdout)
		}
		r.Tracker, r.THP = c.tracker, c.thp
		r.Verdict = judge(c.tracker, res.Code, r.LostPages)
		if r.Verdict == "ERROR" && r.Error == "" {
			r.Error = strings.TrimSpace(string(res.Stderr))
		}
		fmt.Fprintf(log, "[stress] %s thp=%v: %s (lost %d, %d writes, %d collections)\n", c.tracker, c.thp, r.Verdict, r.LostPages, r.Writes, r.Collections)
		runs = append(runs, r)
	}
	return runs, reports(m), nil
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

// reports returns every kernel report so far, title first, with its text.
func reports(m *lab.Machine) []string {
	var out []string
	for _, r := range m.Reports() {
		out = append(out, r.String()+"\n"+r.Text)
	}
	return out
}
