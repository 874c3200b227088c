package fuzz

import (
	"context"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"

	gfuzz "ldtlab/guest/fuzz"
	"ldtlab/guest/result"
	"ldtlab/orchestrator/channel"
	"ldtlab/orchestrator/lab"
	"ldtlab/orchestrator/report"
)

type fakeGuest struct {
	cmd, stdin string
	out        []byte
	reports    []report.Report
}

func (g *fakeGuest) RunWith(ctx context.Context, cmd string, o channel.RunOptions) (lab.Result, error) {
	g.cmd = cmd
	if o.Stdin != nil {
		b, _ := io.ReadAll(o.Stdin)
		g.stdin = string(b)
	}
	return lab.Result{Stdout: g.out, Code: 1}, nil
}
func (g *fakeGuest) ReportMark() int { return 0 }
func (g *fakeGuest) ReportsSince(context.Context, int) []report.Report {
	return g.reports
}

func TestRunOneFindings(t *testing.T) {
	seq := &gfuzz.Sequence{Regions: []gfuzz.RegionSpec{{Kind: gfuzz.KMemfd, Pages: 32}}, Ops: []gfuzz.Op{{Op: gfuzz.OpXPin}, {Op: gfuzz.OpXWrite, R: -1}}}
	sum := gfuzz.Summary{Sequences: 3, Trackers: map[string]*gfuzz.TrackerStats{"ldt": {Runs: 3, Verdict: result.VFail}},
		Findings: []*gfuzz.Finding{{Title: "fuzz: ldt lost xwrite writes to memfd (xpin, xwrite)", Tracker: "ldt", Kind: "lost", Class: "shared-pin", Replay: seq}}}
	b, _ := json.Marshal(sum)
	g := &fakeGuest{out: b, reports: []report.Report{{Type: "warning", Title: "WARNING in ldt_collect"}}}
	r, err := RunOne(context.Background(), g, Options{Duration: time.Minute, Seed: 9, Trackers: []string{"ldt", "naive"}, Replay: seq}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(g.cmd, "ldt-fuzz -for 1m0s -seed 9 -trackers ldt,naive") || !strings.HasSuffix(g.cmd, "-replay -") || !strings.Contains(g.stdin, `"xwrite"`) {
		t.Errorf("command %q stdin %q", g.cmd, g.stdin)
	}
	if r.Verdict != result.VFail {
		t.Errorf("verdict %s", r.Verdict)
	}
	fs := r.Findings()
	if len(fs) != 2 || fs[0].Type != "lost-pages" || fs[0].Class != "shared-pin" || !strings.Contains(string(fs[0].Replay), `"xpin"`) ||
		fs[1].Kind != "kernel" || fs[1].Title != "warning: WARNING in ldt_collect" {
		t.Errorf("findings %+v", fs)
	}
	// No summary: an error verdict, not a pass.
	g.out = []byte("garbage")
	if r, _ := RunOne(context.Background(), g, Options{Duration: time.Minute}, nil); r.Verdict != result.VError {
		t.Errorf("garbage: verdict %s", r.Verdict)
	}
}

// A run that gives no summary (the guest died, it was interrupted) keeps
// the findings ldt-fuzz printed as it went; the progress shown hides them.
func TestStreamedFindings(t *testing.T) {
	f := gfuzz.Finding{Title: "fuzz: ldt lost ring writes to aio-ring (aio-read)", Tracker: "ldt", Kind: "lost",
		Replay: &gfuzz.Sequence{Regions: []gfuzz.RegionSpec{{Kind: gfuzz.KAIORing}}}}
	b, _ := json.Marshal(f)
	stderr := "[fuzz 1.0s] seq 0 ...\n" + gfuzz.FindingPrefix + string(b) + "\n[fuzz 2.0s] seq 1 ...\n"
	got := Streamed([]byte(stderr))
	if len(got) != 1 || got[0].Title != f.Title {
		t.Fatalf("streamed %+v", got)
	}
	var shown strings.Builder
	h := &hideFindings{w: &shown}
	for _, c := range []byte(stderr) { // byte by byte: lines cut anywhere
		h.Write([]byte{c})
	}
	if strings.Contains(shown.String(), gfuzz.FindingPrefix) || strings.Count(shown.String(), "\n") != 2 {
		t.Errorf("shown %q", shown.String())
	}
	r := Run{Partial: got}
	if fs := r.Findings(); len(fs) != 1 || fs[0].Replay == nil {
		t.Errorf("findings %+v", fs)
	}
}
