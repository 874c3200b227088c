package fuzz

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
	"unsafe"

	"ldtlab/guest/result"
)

func TestGenerateDeterministicAndValid(t *testing.T) {
	ops := map[string]int{}
	kinds := map[string]int{}
	for i := 0; i < 400; i++ {
		s := SeqSeed(42, i)
		a, b := Generate(s), Generate(s)
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("seed %d: two draws differ", s)
		}
		if err := a.Validate(); err != nil {
			t.Fatalf("seed %d: %v\n%s", s, err, a.Describe())
		}
		for _, o := range a.Ops {
			ops[o.Op]++
		}
		for _, r := range a.Regions {
			kinds[r.Name()]++
		}
		// JSON round trip: the replay file is the sequence.
		j, _ := json.Marshal(a)
		var c Sequence
		if err := json.Unmarshal(j, &c); err != nil || !reflect.DeepEqual(a, &c) {
			t.Fatalf("seed %d: JSON round trip: %v", s, err)
		}
	}
	for _, op := range []string{OpWrite, OpCollect, OpPVM, OpProcMem, OpODirect, OpURead, OpUReg, OpUReadFix, OpUUnreg, OpAIORead,
		OpXPin, OpXWrite, OpMadvise, OpMprotect, OpMremap, OpRemap, OpFork, OpKSM, OpMigrate, OpNUMA, OpClearRef, OpUffdWP, OpPMScan, OpUNop} {
		if ops[op] == 0 {
			t.Errorf("400 sequences never drew %s", op)
		}
	}
	for _, k := range []string{"anon", "anon/pmd", "memfd", "memfd/pmd", "file", "shared-anon", "uring-ring", "aio-ring"} {
		if kinds[k] == 0 {
			t.Errorf("400 sequences never drew a %s region", k)
		}
	}
}

func TestValidateRejects(t *testing.T) {
	good := &Sequence{Regions: []RegionSpec{{Kind: KAnon, Pages: 4}}, Ops: []Op{{Op: OpWrite, R: 0, N: 1}}}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mod := range map[string]func(*Sequence){
		"no regions":  func(s *Sequence) { s.Regions = nil },
		"bad kind":    func(s *Sequence) { s.Regions[0].Kind = "hugetlb" },
		"huge region": func(s *Sequence) { s.Regions[0].Pages = slotPages + 1 },
		"bad index":   func(s *Sequence) { s.Ops[0].R = 3 },
		"negative":    func(s *Sequence) { s.Ops[0].P = -1 },
		"fork ref":    func(s *Sequence) { s.Ops[0].W = []PageRef{{R: 2}} },
	} {
		s := good.Clone()
		mod(s)
		if s.Validate() == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestMinimizeKeepsTheCause(t *testing.T) {
	// A failure that needs a uring-reg, a clear-refs and a read-fixed, in
	// that order, on region 1.
	seq := Generate(SeqSeed(7, 3)).Clone()
	seq.Regions = []RegionSpec{{Kind: KAnon, Pages: 16}, {Kind: KAnon, Pages: 512, THP: "pmd"}, {Kind: KMemfd, Pages: 32}}
	var ops []Op
	for i := 0; i < 10; i++ {
		ops = append(ops, Op{Op: OpWrite, R: i % 3, N: 1, V: uint64(i)})
	}
	ops = append(ops, Op{Op: OpUReg, R: 1})
	ops = append(ops, Op{Op: OpWrite, R: 0, N: 1}, Op{Op: OpClearRef, R: -1}, Op{Op: OpFork, R: -1, W: []PageRef{{R: 2, P: 1}}})
	ops = append(ops, Op{Op: OpUReadFix, R: -1, P: 3, N: 1}, Op{Op: OpCollect, R: -1, Clear: true})
	seq.Ops = ops
	calls := 0
	fails := func(s *Sequence) bool {
		calls++
		state := 0
		for _, o := range s.Ops {
			switch {
			case state == 0 && o.Op == OpUReg && s.Regions[o.R].THP == "pmd":
				state = 1
			case state == 1 && o.Op == OpClearRef:
				state = 2
			case state == 2 && o.Op == OpUReadFix:
				state = 3
			}
		}
		return state == 3
	}
	min := Minimize(seq, fails)
	var got []string
	for _, o := range min.Ops {
		got = append(got, o.Op)
	}
	if strings.Join(got, " ") != "uring-reg clear-refs uring-read-fixed" {
		t.Errorf("minimized to %v (%d runs)", got, calls)
	}
	if len(min.Regions) != 1 || min.Regions[0].THP != "pmd" || min.Ops[0].R != 0 {
		t.Errorf("regions %+v, ops %+v", min.Regions, min.Ops)
	}
}

func TestJudge(t *testing.T) {
	lost := Loss{Kind: "lost", RKind: "anon/pmd", Sources: []string{"cpu", "uring-read-fixed"}}
	gap := Loss{Kind: "lost", RKind: "memfd", Sources: []string{"cpu"}, Gap: GapSharedZap}
	for _, c := range []struct {
		tracker string
		res     ExecResult
		want    result.Verdict
		keys    []string
	}{
		{"ldt", ExecResult{}, result.VPass, nil},
		{"ldt", ExecResult{Losses: []Loss{lost}}, result.VFail, []string{"ldt|lost|anon/pmd|uring-read-fixed"}},
		{"ldt", ExecResult{Losses: []Loss{gap}}, result.VKnownGap, nil},
		{"ldt", ExecResult{Quiet: 3, QuietSample: "r1 (anon) pages [0,3)"}, result.VFail, []string{"ldt|over-reported|anon"}},
		{"ldt", ExecResult{Error: "collect r0 [0x7f00,0x8000): EFAULT"}, result.VError, []string{"ldt|error|collect EFAULT"}},
		{"naive", ExecResult{Losses: []Loss{lost}}, result.VCaught, nil},
		{"naive", ExecResult{}, result.VPass, nil},
		{"softdirty", ExecResult{NA: "x"}, result.VNA, nil},
	} {
		v, keys := Judge(c.tracker, &c.res)
		var ks []string
		for _, k := range keys {
			ks = append(ks, k.key)
		}
		if v != c.want || !reflect.DeepEqual(ks, c.keys) {
			t.Errorf("%s %+v: got %s %v, want %s %v", c.tracker, c.res, v, ks, c.want, c.keys)
		}
	}
}

func TestTitleAndClassify(t *testing.T) {
	f := &Finding{Tracker: "ldt", Kind: "lost", Key: "ldt|lost|anon/pmd|uring-read-fixed", Replay: &Sequence{
		Regions: []RegionSpec{{Kind: KAnon, Pages: 512, THP: "pmd"}},
		Ops:     []Op{{Op: OpUReg}, {Op: OpClearRef}, {Op: OpCollect, Clear: true}, {Op: OpUReadFix}}}}
	if got, want := Title(f), "fuzz: ldt lost uring-read-fixed writes to anon/pmd (uring-reg, clear-refs, uring-read-fixed)"; got != want {
		t.Errorf("title %q, want %q", got, want)
	}
	if c := Classify(f); c != "pinned-thp" {
		t.Errorf("class %q", c)
	}
	for key, want := range map[string]string{
		"ldt|lost|memfd|xwrite":    "shared-pin",
		"ldt|lost|uring-ring|ring": "ring-uring",
		"ldt|lost|aio-ring|ring":   "ring-aio",
		"naive|lost|memfd|xwrite":  "",
	} {
		g := &Finding{Tracker: strings.Split(key, "|")[0], Kind: "lost", Key: key, Replay: &Sequence{}}
		if c := Classify(g); c != want {
			t.Errorf("%s: class %q, want %q", key, c, want)
		}
	}
	w := &Finding{Tracker: "ldt", Kind: "lost", Key: "ldt|lost|memfd|uring-read-fixed", Replay: &Sequence{Ops: []Op{{Op: OpUReg}, {Op: OpPMScan}, {Op: OpUReadFix}}}}
	if c := Classify(w); c != "pinned-wp" {
		t.Errorf("pinned 4 KiB write-protected: class %q", c)
	}
	h := &Finding{Tracker: "ldt", Kind: "lost", Key: "ldt|lost|memfd|cpu", Replay: &Sequence{Ops: []Op{{Op: OpMadvise, Arg: "collapse"}}}}
	if c := Classify(h); c != "shmem-collapse" {
		t.Errorf("collapse: class %q", c)
	}
}

// The driver with a fake runner: ldt fails on sequences with a
// clear-refs, naive always loses; the failure is minimized, saved, deduplicated.
func TestDriverFindsMinimizesAndDedups(t *testing.T) {
	dir := t.TempDir()
	runner := func(ctx context.Context, s *Sequence, tr string) (*ExecResult, error) {
		res := &ExecResult{Tracker: tr, Checked: 1}
		if why := NotFor(tr, s); why != "" {
			res.NA = why
			return res, nil
		}
		switch tr {
		case "naive":
			res.Losses = []Loss{{Kind: "lost", RKind: "anon", Sources: []string{"pvm"}}}
		case "ldt":
			for _, o := range s.Ops {
				if o.Op == OpClearRef {
					res.Losses = []Loss{{Kind: "lost", RKind: "anon", Sources: []string{"cpu"}}}
				}
			}
		}
		return res, nil
	}
	sum, err := Run(context.Background(), Options{MaxSeqs: 30, Duration: 1 << 40, Seed: 1, OutDir: dir, Minimize: true, Runner: runner})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Sequences != 30 || sum.Trackers["naive"].Verdict != result.VCaught || sum.Trackers["ldt"].Verdict != result.VFail {
		t.Fatalf("summary: %d sequences, naive %s, ldt %s", sum.Sequences, sum.Trackers["naive"].Verdict, sum.Trackers["ldt"].Verdict)
	}
	if len(sum.Findings) != 1 {
		t.Fatalf("%d findings: %+v", len(sum.Findings), sum.Findings)
	}
	f := sum.Findings[0]
	if len(f.Replay.Ops) != 1 || f.Replay.Ops[0].Op != OpClearRef || !f.Reproduced || f.Count < 2 {
		t.Errorf("finding: %+v ops %+v", f, f.Replay.Ops)
	}
	if _, err := os.Stat(f.ReplayFile); err != nil || !strings.Contains(f.Command, f.ReplayFile) {
		t.Errorf("replay file %q, command %q: %v", f.ReplayFile, f.Command, err)
	}
	if !sum.Failed() {
		t.Error("a finding must fail the run")
	}
}

func TestStructSizes(t *testing.T) {
	if unsafe.Sizeof(uringSQE{}) != 64 || unsafe.Sizeof(uringParams{}) != 120 || unsafe.Sizeof(iocb{}) != 64 {
		t.Fatal("uapi struct sizes")
	}
}

// Two ways to the same key (a pinned THP write-protected by clear_refs,
// or by PAGEMAP_SCAN) are two findings; a third sequence holding a known
// trigger is a repeat, not minimized again.
func TestDriverVariants(t *testing.T) {
	runs := 0
	runner := func(ctx context.Context, s *Sequence, tr string) (*ExecResult, error) {
		runs++
		res := &ExecResult{Tracker: tr}
		if tr != "ldt" {
			return res, nil
		}
		for _, o := range s.Ops {
			if o.Op == OpClearRef || o.Op == OpPMScan {
				res.Losses = []Loss{{Kind: "lost", RKind: "anon/pmd", Sources: []string{OpUReadFix}}}
			}
		}
		return res, nil
	}
	seq := func(ops ...string) *Sequence {
		s := &Sequence{Regions: []RegionSpec{{Kind: KAnon, Pages: 512, THP: "pmd"}}}
		for _, o := range ops {
			s.Ops = append(s.Ops, Op{Op: o, R: -1})
		}
		return s
	}
	d := &driver{o: Options{Trackers: []string{"ldt"}, Minimize: true, MinimizeFor: time.Minute, Runner: runner, Progress: io.Discard},
		start: time.Now(), byKey: map[string][]*Finding{}, sum: &Summary{Trackers: map[string]*TrackerStats{"ldt": {Verdicts: map[string]int{}, NA: map[string]int{}}},
			KnownGaps: map[string]int{}, OpsDone: map[string]int{}, OpsFailed: map[string]int{}, TimeMS: map[string]int64{}}}
	d.sequence(context.Background(), 0, seq(OpUReg, OpWrite, OpClearRef, OpCollect, OpUReadFix))
	d.sequence(context.Background(), 1, seq(OpUReg, OpPMScan, OpWrite, OpUReadFix))
	before := runs
	d.sequence(context.Background(), 2, seq(OpWrite, OpClearRef, OpRead))
	if runs-before != 1 {
		t.Errorf("a repeat of a known trigger was minimized again (%d runs)", runs-before)
	}
	var titles []string
	for _, f := range d.sum.Findings {
		titles = append(titles, f.Title)
	}
	want := []string{"fuzz: ldt lost uring-read-fixed writes to anon/pmd (clear-refs)", "fuzz: ldt lost uring-read-fixed writes to anon/pmd (pm-scan)"}
	if !reflect.DeepEqual(titles, want) {
		t.Errorf("titles %q, want %q", titles, want)
	}
	if d.sum.Findings[0].Count != 2 {
		t.Errorf("count %d", d.sum.Findings[0].Count)
	}
}
