package fuzz

import (
	"errors"
	"os"
	"testing"

	"ldtlab/guest/tracker"
)

// Exec on the kernel the tests run on, with operations that change no
// system setting: the model and the shadow must agree with the reference
// trackers where they have no documented gap (softdirty, pagemap-scan;
// /dev/ldt where the kernel has it). Runs as root only.
func TestExecOnThisKernel(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (pagemap frames, clear_refs of its own)")
	}
	dir := t.TempDir()
	if err := EnsureDataFile(dir); err != nil {
		t.Fatal(err)
	}
	seq := &Sequence{Regions: []RegionSpec{{Kind: KAnon, Pages: 16}, {Kind: KMemfd, Pages: 32}, {Kind: KSharedAnon, Pages: 8}}, Ops: []Op{
		{Op: OpWrite, R: 0, P: 0, N: 4, V: 1, Arg: "page"},
		{Op: OpWrite, R: 1, P: 3, N: 2, V: 2, Arg: "word"},
		{Op: OpCollect, R: -1, Clear: true},
		{Op: OpPVM, R: 0, P: 5, N: 2, V: 3},
		{Op: OpProcMem, R: 1, P: 7, N: 1, V: 4},
		{Op: OpCollect, R: 0, Clear: true},
		{Op: OpMprotect, R: 0, P: 2, N: 2, Arg: "r"},
		{Op: OpWrite, R: 0, P: 0, N: 4, V: 5, Arg: "byte"},
		{Op: OpProcMem, R: 0, P: 2, N: 1, V: 6},
		{Op: OpMadvise, R: 0, P: 8, N: 4, Arg: "free"},
		{Op: OpWrite, R: 0, P: 9, N: 1, V: 7, Arg: "word"},
		{Op: OpMadvise, R: 0, P: 12, N: 2, Arg: "dontneed"},
		{Op: OpFork, R: -1, V: 8, W: []PageRef{{0, 1}, {1, 0}, {2, 3}}},
		{Op: OpWrite, R: 0, P: 1, N: 1, V: 9, Arg: "threads"},
		{Op: OpMadvise, R: 0, P: 0, N: 16, Arg: "pageout"},
		{Op: OpCollect, R: -1},
		{Op: OpURead, R: 1, P: 10, N: 2, Off: 7},
		{Op: OpAIORead, R: 2, P: 0, N: 1, Off: 9},
		{Op: OpMadvise, R: 1, P: 0, N: 32, Arg: "cold"},
		{Op: OpCollect, R: -1, Clear: true},
		{Op: OpWrite, R: 2, P: 2, N: 3, V: 10, Arg: "page"},
	}}
	for _, tr := range []string{"softdirty", "pagemap-scan", "ldt"} {
		t.Run(tr, func(t *testing.T) {
			if _, err := tracker.Open(tr, 0, 0, 0); errors.Is(err, tracker.ErrUnsupported) {
				t.Skip(err)
			}
			res := Exec(seq, ExecConfig{Tracker: tr, DataFile: dir + "/" + DataFileName, DataDir: dir, Self: "/bin/false"})
			if res.Error != "" || res.NA != "" {
				t.Fatalf("error %q na %q", res.Error, res.NA)
			}
			for _, l := range res.Losses {
				t.Errorf("%s", l)
			}
			if res.Quiet != 0 {
				t.Errorf("quiet collection reported %d pages: %s", res.Quiet, res.QuietSample)
			}
			if res.Checked == 0 || res.Reported == 0 {
				t.Errorf("checked %d, reported %d", res.Checked, res.Reported)
			}
			t.Logf("done %v failed %v facts %v", res.OpsDone, res.OpsFailed, res.Facts)
		})
	}
}

// blind reports nothing: the oracle must see every write it was owed,
// and only those.
type blind struct{}

func (blind) Name() string { return "blind" }
func (blind) Collect(start, end uintptr, clear bool) ([]tracker.Region, error) {
	return nil, nil
}
func (blind) Close() error { return nil }

func TestOracleCatchesABlindTracker(t *testing.T) {
	dir := t.TempDir()
	if err := EnsureDataFile(dir); err != nil {
		t.Fatal(err)
	}
	defer func(o func(string, int, uintptr, uintptr) (tracker.Tracker, error)) { openTracker = o }(openTracker)
	openTracker = func(string, int, uintptr, uintptr) (tracker.Tracker, error) { return blind{}, nil }
	seq := &Sequence{Regions: []RegionSpec{{Kind: KAnon, Pages: 16}, {Kind: KMemfd, Pages: 8}}, Ops: []Op{
		{Op: OpWrite, R: 0, P: 0, N: 2, V: 1, Arg: "page"}, // lost: pages 0, 1
		{Op: OpPVM, R: 0, P: 4, N: 1, V: 3},                // lost: page 4
		{Op: OpMadvise, R: 0, P: 8, N: 2, Arg: "free"},     // unstable: not checked
		{Op: OpWrite, R: 0, P: 12, N: 1, V: 5, Arg: "word"},
		{Op: OpMadvise, R: 0, P: 12, N: 1, Arg: "dontneed"},     // written, then discarded: nothing owed
		{Op: OpFork, R: -1, V: 8, W: []PageRef{{0, 6}, {1, 2}}}, // another mm's writes: nothing owed
		{Op: OpMadvise, R: 1, P: 0, N: 8, Arg: "pageout"},       // no pending write: nothing
		{Op: OpCollect, R: -1, Clear: true},
	}}
	res := Exec(seq, ExecConfig{Tracker: "ldt", DataFile: dir + "/" + DataFileName, DataDir: dir})
	if res.Error != "" {
		t.Fatal(res.Error)
	}
	got := map[int]string{}
	for _, l := range res.Losses {
		if l.Region != 0 || l.Kind != "lost" || l.After != 7 {
			t.Errorf("unexpected %s", l)
		}
		got[l.Page] = l.Sources[0]
	}
	want := map[int]string{0: "cpu", 1: "cpu", 4: "pvm"}
	if len(got) != len(want) {
		t.Errorf("lost %v, want %v", got, want)
	}
	for p, s := range want {
		if got[p] != s {
			t.Errorf("page %d: %q, want %q", p, got[p], s)
		}
	}
}
