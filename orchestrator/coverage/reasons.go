package coverage

import (
	"bufio"
	"fmt"
	"io"
	"strings"
)

// Reason explains why series lines do not run: unreachable on x86-64
// with this config, or the scenario still to write. Reasons live in
// docs/coverage.reasons, keyed by file, function and (optionally) a piece
// of the line's text rather than by line number, so that they survive a
// patch that moves lines.
type Reason struct {
	File, Function, Text string
	Why                  string
	Line                 int // in the reasons file
}

// ParseReasons reads a reasons file: one entry a line,
//
//	FILE:FUNCTION[:TEXT] <tab> why
//
// '#' starts a comment line. FUNCTION "*" is any function of the file.
// The first entry that matches a line wins: put the narrow ones first.
func ParseReasons(r io.Reader) ([]Reason, error) {
	var out []Reason
	sc := bufio.NewScanner(r)
	n := 0
	for sc.Scan() {
		n++
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		key, why, ok := strings.Cut(l, "\t")
		why = strings.TrimSpace(why)
		if !ok || why == "" {
			return nil, fmt.Errorf("line %d: want FILE:FUNCTION[:TEXT], a tab, and the reason: %q", n, l)
		}
		parts := strings.SplitN(strings.TrimSpace(key), ":", 3)
		if len(parts) < 2 || parts[0] == "" || parts[1] == "" {
			return nil, fmt.Errorf("line %d: want FILE:FUNCTION[:TEXT] before the tab: %q", n, key)
		}
		rs := Reason{File: parts[0], Function: parts[1], Why: why, Line: n}
		if len(parts) == 3 {
			rs.Text = parts[2]
		}
		out = append(out, rs)
	}
	return out, sc.Err()
}

// Explain gives each unexecuted line of r the first reason that matches
// it and returns the reasons that matched nothing (stale: the code they
// explain ran, or is gone).
func Explain(r *Report, reasons []Reason) []Reason {
	used := make([]bool, len(reasons))
	for i := range r.Unexecuted {
		l := &r.Unexecuted[i]
		l.Reason = ""
		for j, rs := range reasons {
			if rs.File == l.File && (rs.Function == "*" || rs.Function == l.Function) && strings.Contains(l.Text, rs.Text) {
				l.Reason, used[j] = rs.Why, true
				break
			}
		}
	}
	r.Unexplained = 0
	for _, l := range r.Unexecuted {
		if l.Reason == "" {
			r.Unexplained++
		}
	}
	var stale []Reason
	r.StaleReasons = nil
	for j, u := range used {
		if !u {
			stale = append(stale, reasons[j])
			rs := reasons[j]
			r.StaleReasons = append(r.StaleReasons, fmt.Sprintf("line %d: %s:%s:%s", rs.Line, rs.File, rs.Function, rs.Text))
		}
	}
	return stale
}
