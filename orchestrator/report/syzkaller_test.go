package report

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// The independent corpus: syzkaller's own Linux report test data
// (pkg/report/testdata/linux/report), real consoles of many kernels,
// each file a few header lines (TITLE:, CORRUPTED:, ...) and the log.
// Nobody here wrote or labelled them, and their text is not copied into
// this repository: the test reads them from a syzkaller source tree.
//
// Where the tree comes from, first that exists:
//   - LDTLAB_SYZKALLER: a syzkaller checkout (or its report directory);
//   - the module cache, after `go mod download` of syzkallerModule (the
//     module proxy in use must serve it).
//
// Without either the test is skipped and says so.
const syzkallerModule = "github.com/google/syzkaller@v0.0.0-20260817123423-1e72964b0111"

// corpusCase is one file of the corpus.
type corpusCase struct {
	name      string
	title     string // syzkaller's title; "" for a clean log
	corrupted bool
	log       []byte
}

// nonX86 recognizes the register dumps, fault lines and stack frames of
// other architectures (arm64, arm, powerpc, riscv, s390).
var nonX86 = regexp.MustCompile(`(?m)^\s*(?:\[[ 0-9.]+\]\s*)?(?:\[ *[TC][0-9]+\] *)?(?:pc : |lr : |Krnl PSW|NIP:|epc :|PC is at|pc: |ESR = |Unable to handle kernel (?:NULL pointer dereference|paging request) at virtual address|Hardware name: ARM|\[<[0-9a-f]+>\] \(\S+\) from \[<|\[c[0-9a-f]{15}\] \[c[0-9a-f]{15}\] )`)

// notKernel are titles of syzkaller's own programs failing (its executor,
// the Go runtime of its tools), not of the kernel.
var notKernel = regexp.MustCompile(`^(SYZFAIL|SYZFATAL|go runtime error|panic:)`)

func corpusDir(t *testing.T) string {
	if d := os.Getenv("LDTLAB_SYZKALLER"); d != "" {
		for _, sub := range []string{"pkg/report/testdata/linux/report", "testdata/linux/report", "linux/report", "."} {
			if st, err := os.Stat(filepath.Join(d, sub)); err == nil && st.IsDir() {
				if _, err := os.Stat(filepath.Join(d, sub, "0")); err == nil {
					return filepath.Join(d, sub)
				}
			}
		}
		t.Fatalf("LDTLAB_SYZKALLER=%s: no pkg/report/testdata/linux/report in it", d)
	}
	cmd := exec.Command("go", "mod", "download", "-json", syzkallerModule)
	cmd.Dir = t.TempDir()
	var out bytes.Buffer
	cmd.Stdout = &out
	done := make(chan error, 1)
	if err := cmd.Start(); err == nil {
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(2 * time.Minute):
			cmd.Process.Kill()
			<-done
		}
	}
	var mod struct{ Dir, Error string }
	if json.Unmarshal(out.Bytes(), &mod) == nil && mod.Dir != "" {
		return filepath.Join(mod.Dir, "pkg/report/testdata/linux/report")
	}
	t.Skipf("no syzkaller report corpus: set LDTLAB_SYZKALLER to a syzkaller source tree (the module proxy gave: %s)", strings.TrimSpace(mod.Error))
	return ""
}

func readCorpus(t *testing.T, dir string) []corpusCase {
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []corpusCase
	for _, e := range ents {
		if e.IsDir() {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		data = bytes.ReplaceAll(data, []byte("\r"), nil)
		c := corpusCase{name: e.Name()}
		sc := bufio.NewScanner(bytes.NewReader(data))
		sc.Buffer(nil, 16<<20)
		headers, prevEmpty := true, false
		for sc.Scan() {
			ln := sc.Text()
			if headers {
				switch {
				case ln == "":
					headers = false
				case strings.HasPrefix(ln, "TITLE: "):
					c.title = strings.TrimPrefix(ln, "TITLE: ")
				case ln == "CORRUPTED: Y":
					c.corrupted = true
				}
				continue
			}
			if prevEmpty && ln == "REPORT:" {
				break // what syzkaller's own report should be, not the log
			}
			c.log = append(c.log, ln...)
			c.log = append(c.log, '\n')
			prevEmpty = ln == ""
		}
		out = append(out, c)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].name < out[b].name })
	return out
}

// corpusClass groups a syzkaller title by its kind: the title up to the
// guilty frame, with titles of a few large families folded together.
func corpusClass(title string) string {
	c := title
	if i := strings.Index(c, " in "); i >= 0 {
		c = c[:i]
	}
	for _, p := range []string{"KASAN: ", "KMSAN: ", "KFENCE: ", "UBSAN: ", "kernel panic: ", "kernel BUG", "BUG: Dentry", "INFO: task hung", "WARNING: kernel stack"} {
		if strings.HasPrefix(c, p) {
			return strings.TrimSpace(p)
		}
	}
	return c
}

// TestSyzkallerCorpus measures detection, false positives, titles and the
// corrupted flag against syzkaller's labels on its x86 logs. Goals:
// detection >= 98% of the kernel reports, no report on a clean log, the
// title equal to syzkaller's (ignoring case) on >= 90% of the reports
// syzkaller does not mark corrupted. go test -v logs the per-class table;
// LDTLAB_SYZKALLER_DUMP=FILE writes every miss and title difference.
func TestSyzkallerCorpus(t *testing.T) {
	cases := readCorpus(t, corpusDir(t))
	type tally struct{ n, found, titled, reliable, flagOK int }
	byClass := map[string]*tally{}
	var all tally
	var clean, fp, other, skipped, corruptN, corruptFlagged, reliableN, reliableFlagged int
	var dump strings.Builder
	for _, c := range cases {
		if nonX86.Match(c.log) {
			other++
			continue
		}
		reps := Parse(c.log)
		if c.title == "" {
			clean++
			if len(reps) > 0 {
				fp++
				fmt.Fprintf(&dump, "FALSE POSITIVE %s: %s\n", c.name, reps[0])
			}
			continue
		}
		if notKernel.MatchString(c.title) {
			skipped++
			continue
		}
		cl := corpusClass(c.title)
		tl := byClass[cl]
		if tl == nil {
			tl = &tally{}
			byClass[cl] = tl
		}
		tl.n++
		all.n++
		if !c.corrupted {
			tl.reliable++
			all.reliable++
		}
		if len(reps) == 0 {
			fmt.Fprintf(&dump, "MISSED %s: %q\n", c.name, c.title)
			continue
		}
		tl.found++
		all.found++
		r := reps[0]
		if r.Corrupted == c.corrupted {
			tl.flagOK++
			all.flagOK++
		}
		if c.corrupted {
			corruptN++
			if r.Corrupted {
				corruptFlagged++
			}
		} else {
			reliableN++
			if r.Corrupted {
				reliableFlagged++
			}
		}
		if c.corrupted {
			continue
		}
		if strings.EqualFold(r.Title, c.title) {
			tl.titled++
			all.titled++
		} else {
			fmt.Fprintf(&dump, "TITLE %s: got %q want %q (corrupted %v)\n", c.name, r.Title, c.title, r.Corrupted)
		}
	}
	classes := make([]string, 0, len(byClass))
	for cl := range byClass {
		classes = append(classes, cl)
	}
	sort.Slice(classes, func(a, b int) bool {
		if byClass[classes[a]].n != byClass[classes[b]].n {
			return byClass[classes[a]].n > byClass[classes[b]].n
		}
		return classes[a] < classes[b]
	})
	pct := func(a, b int) float64 {
		if b == 0 {
			return 100
		}
		return 100 * float64(a) / float64(b)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "| class | logs | detected | not corrupted | titled as syzkaller | corrupted flag agrees |\n|---|---|---|---|---|---|\n")
	for _, cl := range classes {
		tl := byClass[cl]
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %d | %d |\n", cl, tl.n, tl.found, tl.reliable, tl.titled, tl.flagOK)
	}
	fmt.Fprintf(&b, "| all | %d | %d (%.1f%%) | %d | %d (%.1f%%) | %d (%.1f%%) |\n", all.n, all.found, pct(all.found, all.n),
		all.reliable, all.titled, pct(all.titled, all.reliable), all.flagOK, pct(all.flagOK, all.found))
	t.Logf("syzkaller corpus: %d x86 crash logs (%d of syzkaller's own programs left out), %d clean logs, %d logs of other architectures\n"+
		"false positives on clean logs: %d\ncorrupted flag: %d of %d corrupted reports flagged, %d of %d reliable ones flagged\n%s",
		all.n, skipped, clean, other, fp, corruptFlagged, corruptN, reliableFlagged, reliableN, b.String())
	if f := os.Getenv("LDTLAB_SYZKALLER_DUMP"); f != "" {
		if err := os.WriteFile(f, []byte(dump.String()), 0o644); err != nil {
			t.Error(err)
		}
	}
	assert.GreaterOrEqual(t, pct(all.found, all.n), 98.0, "detection")
	assert.Zero(t, fp, "reports on clean logs")
	assert.GreaterOrEqual(t, pct(all.titled, all.reliable), 90.0, "titles equal to syzkaller's")
}

// TestSyzkallerCorpusStream: every log of the corpus (crash logs, clean
// logs, other architectures) gives the same reports fed to a Stream in
// random chunks as parsed whole.
func TestSyzkallerCorpusStream(t *testing.T) {
	cases := readCorpus(t, corpusDir(t))
	differ := 0
	for i, c := range cases {
		want := titles(Parse(c.log))
		s := NewStream()
		feedBytes(s, c.log, rand.New(rand.NewPCG(uint64(i), 1)))
		s.Close()
		got := titles(s.All())
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			differ++
			t.Errorf("%s: stream %q, Parse %q", c.name, got, want)
		}
	}
	t.Logf("%d logs, %d differ", len(cases), differ)
}
