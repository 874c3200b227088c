// Package fuzz is the host side of ldt-fuzz (guest/fuzz): it runs the
// fuzzer in a booted guest, attributes the kernel reports that appear
// meanwhile, and turns each finding into an entry of a crash store
// (orchestrator/soak's) with its replay file and a one-line reproducer.
package fuzz

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	gfuzz "ldtlab/guest/fuzz"
	"ldtlab/guest/result"
	"ldtlab/internal/shquote"
	"ldtlab/orchestrator/channel"
	"ldtlab/orchestrator/lab"
	"ldtlab/orchestrator/report"
)

// Options select a fuzz run.
type Options struct {
	Duration time.Duration
	Seed     uint64
	Trackers []string // default: ldt, naive, softdirty, pagemap-scan
	// Until stops once a finding of every class named is in (the teeth
	// test: pinned-thp, shared-pin, shmem-collapse, ring).
	Until       []string
	MaxSeqs     int
	NoMinimize  bool
	MinimizeFor time.Duration // per finding (default 3 minutes)
	Replay      *gfuzz.Sequence
}

// Guest is what a fuzz run needs from a booted guest (*lab.Machine).
type Guest interface {
	RunWith(ctx context.Context, cmd string, opts channel.RunOptions) (lab.Result, error)
	ReportMark() int
	ReportsSince(ctx context.Context, mark int) []report.Report
}

// Run is one ldt-fuzz run as the host judged it.
type Run struct {
	Command string          `json:"command"`
	Summary *gfuzz.Summary  `json:"summary,omitempty"`
	Verdict result.Verdict  `json:"verdict"` // PASS or FAIL (ERROR: no summary)
	Reports []report.Report `json:"-"`
	// ReportTitles: "TYPE: title" of every kernel report during the run.
	ReportTitles []string `json:"kernel_reports,omitempty"`
	Error        string   `json:"error,omitempty"`
	TookS        float64  `json:"took_s"`
	// Partial: the findings ldt-fuzz reported as it went, when it gave
	// no summary (the guest failed, the run was interrupted).
	Partial []*gfuzz.Finding `json:"partial_findings,omitempty"`
}

// Streamed reads the findings ldt-fuzz printed as it went.
func Streamed(stderr []byte) []*gfuzz.Finding {
	var out []*gfuzz.Finding
	for _, l := range strings.Split(string(stderr), "\n") {
		if b, ok := strings.CutPrefix(strings.TrimSpace(l), gfuzz.FindingPrefix); ok {
			var f gfuzz.Finding
			if json.Unmarshal([]byte(b), &f) == nil && f.Replay != nil {
				out = append(out, &f)
			}
		}
	}
	return out
}

// hideFindings passes progress lines on, except the findings' JSON.
type hideFindings struct {
	w    io.Writer
	line []byte
}

func (h *hideFindings) Write(p []byte) (int, error) {
	for _, c := range p {
		h.line = append(h.line, c)
		if c == '\n' {
			if !strings.HasPrefix(string(h.line), gfuzz.FindingPrefix) {
				if _, err := h.w.Write(h.line); err != nil {
					return 0, err
				}
			}
			h.line = h.line[:0]
		}
	}
	return len(p), nil
}

// Command is the guest command of a run.
func Command(o Options) string {
	cmd := fmt.Sprintf("ldt-fuzz -for %s -seed %d", o.Duration, o.Seed)
	if len(o.Trackers) > 0 {
		cmd += " -trackers " + shquote.Word(strings.Join(o.Trackers, ","))
	}
	if len(o.Until) > 0 {
		cmd += " -until " + shquote.Word(strings.Join(o.Until, ","))
	}
	if o.MaxSeqs > 0 {
		cmd += fmt.Sprintf(" -max-seqs %d", o.MaxSeqs)
	}
	if o.NoMinimize {
		cmd += " -minimize=false"
	}
	cmd += fmt.Sprintf(" -minimize-for %s", minimizeFor(o))
	if o.Replay != nil {
		cmd += " -replay -"
	}
	return cmd
}

func minimizeFor(o Options) time.Duration {
	if o.MinimizeFor > 0 {
		return o.MinimizeFor
	}
	return 3 * time.Minute
}

// Limit is how long a run may take: its duration, the sequence running
// when it ends, and minimizing what it found (TCG: the guest's own clock
// runs slow under load, so with slack).
func Limit(o Options, slowdown float64) time.Duration {
	return time.Duration(float64(o.Duration)*1.5) + 6*minimizeFor(o) + time.Duration(5*float64(time.Minute)*max(1, slowdown))
}

// RunOne runs ldt-fuzz once in g. Progress lines go to log. The error is
// the guest's fault or the lab's (typed, package vm); the run is judged
// either way.
func RunOne(ctx context.Context, g Guest, o Options, log io.Writer) (Run, error) {
	cmd := Command(o)
	r := Run{Command: cmd}
	if log != nil {
		fmt.Fprintf(log, "[fuzz] %s\n", cmd)
	}
	slowdown := 1.0
	if s, ok := g.(interface{ Slowdown() float64 }); ok {
		slowdown = s.Slowdown()
	}
	opts := channel.RunOptions{}
	if log != nil {
		opts.Stderr = &hideFindings{w: log}
	}
	if o.Replay != nil {
		b, err := json.Marshal(o.Replay)
		if err != nil {
			return r, err
		}
		opts.Stdin = strings.NewReader(string(b))
	}
	mark := g.ReportMark()
	start := time.Now()
	rctx, cancel := context.WithTimeout(ctx, Limit(o, slowdown))
	res, err := g.RunWith(rctx, cmd, opts)
	cancel()
	r.TookS = time.Since(start).Seconds()
	r.Reports = g.ReportsSince(ctx, mark)
	if err != nil {
		// Findings made before the guest failed or the run was stopped.
		r.Partial = Streamed(res.Stderr)
	}
	for _, rep := range r.Reports {
		r.ReportTitles = append(r.ReportTitles, rep.String())
	}
	if err != nil {
		r.Verdict, r.Error = result.VError, err.Error()
		return r, fmt.Errorf("fuzz: %w", err)
	}
	var sum gfuzz.Summary
	if jerr := json.Unmarshal(res.Stdout, &sum); jerr != nil || sum.Trackers == nil {
		r.Verdict = result.VError
		r.Error = fmt.Sprintf("ldt-fuzz exited %d without a summary (%v): %s", res.Code, jerr, lastLines(string(res.Stderr), 5))
		r.Partial = Streamed(res.Stderr)
		return r, nil
	}
	r.Summary = &sum
	r.Verdict = result.VPass
	if sum.Failed() || len(r.Reports) > 0 {
		r.Verdict = result.VFail
	}
	return r, nil
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, " | ")
}

// Finding is one thing a run found, as a crash store files it.
type Finding struct {
	Title string
	Type  string // lost-pages | corrupted-pages | over-reported | error | a kernel report type
	Kind  string // correctness | kernel
	Class string // the known bug it is (issue 19), if any
	Span  string // what happened, the minimized sequence
	// Replay is the replay file's content (nil for a kernel report).
	Replay []byte
	Fuzz   *gfuzz.Finding
}

// Findings lists the run's findings: the fuzzer's, each with its replay
// file, and every kernel report (titled as the report parser titles it;
// the console log says which sequence ran: ldt-fuzz marks each run there).
func (r *Run) Findings() []Finding {
	var out []Finding
	fs := r.Partial
	if r.Summary != nil {
		fs = r.Summary.Findings
	}
	{
		for _, f := range fs {
			b, _ := json.MarshalIndent(f.Replay, "", "  ")
			typ := map[string]string{"lost": "lost-pages", "corrupted": "corrupted-pages"}[f.Kind]
			if typ == "" {
				typ = f.Kind
			}
			span := fmt.Sprintf("%s\ntracker %s, key %s, seen %d× in this run, first in sequence %d (seed %d) after %.0f s\nminimized %d → %d operations in %.0f s (reproduced on its own: %v)\nexample: %s\n\nminimized sequence:\n%s",
				f.Title, f.Tracker, f.Key, f.Count, f.Seq, f.SeqSeed, f.FoundS, f.OrigOps, f.MinOps, f.MinimizeS, f.Reproduced, f.Example, f.Replay.Describe())
			out = append(out, Finding{Title: f.Title, Type: typ, Kind: "correctness", Class: f.Class, Span: span, Replay: append(b, '\n'), Fuzz: f})
		}
	}
	for _, rep := range r.Reports {
		out = append(out, Finding{Title: rep.String(), Type: string(rep.Type), Kind: "kernel", Span: rep.Text})
	}
	return out
}
