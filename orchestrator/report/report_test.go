package report

import (
	"bytes"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var update = flag.Bool("update", false, "rewrite testdata/*.want from the parser's output")

// wantText renders reports the way testdata/*.want files list them.
func wantText(reps []Report) string {
	var b strings.Builder
	for _, r := range reps {
		b.WriteString(r.String())
		if r.Truncated {
			b.WriteString(" [truncated]")
		}
		if r.Corrupted {
			b.WriteString(" [corrupted]")
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// TestGolden parses every testdata/NAME.log (synthetic-*, and guest-*
// captures added later) and compares with NAME.want.
func TestGolden(t *testing.T) {
	logs, err := filepath.Glob(filepath.Join("testdata", "*.log"))
	require.NoError(t, err)
	require.NotEmpty(t, logs)
	for _, path := range logs {
		name := strings.TrimSuffix(filepath.Base(path), ".log")
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(path)
			require.NoError(t, err)
			reps := Parse(data)
			checkInvariants(t, data, reps)
			got := wantText(reps)
			wantPath := strings.TrimSuffix(path, ".log") + ".want"
			if *update {
				require.NoError(t, os.WriteFile(wantPath, []byte(got), 0o644))
				return
			}
			want, err := os.ReadFile(wantPath)
			require.NoError(t, err, "no %s; run: go test ./orchestrator/report -run TestGolden -update", wantPath)
			assert.Equal(t, string(want), got)
		})
	}
}

// checkInvariants holds for every input: spans in bounds and ordered,
// every Text line taken from the span.
func checkInvariants(t testing.TB, data []byte, reps []Report) {
	t.Helper()
	prev := 0
	for _, r := range reps {
		if r.Start < 0 || r.End > len(data) || r.Start >= r.End {
			t.Fatalf("span [%d,%d) out of bounds (len %d): %v", r.Start, r.End, len(data), r)
		}
		if r.Start < prev {
			t.Fatalf("reports out of order: %v starts at %d < %d", r, r.Start, prev)
		}
		prev = r.Start
		if r.Type == "" || r.Title == "" || r.Text == "" {
			t.Fatalf("empty field in %#v", r)
		}
		for _, c := range r.Title {
			if c < 0x20 || c == 0x7f || c == utf8.RuneError {
				t.Fatalf("control byte or invalid UTF-8 in title %q", r.Title)
			}
		}
		span := data[r.Start:r.End]
		for _, l := range strings.Split(strings.TrimSuffix(r.Text, "\n"), "\n") {
			if !bytes.Contains(span, []byte(l)) {
				t.Fatalf("Text line %q not in span of %v", l, r)
			}
		}
	}
}

func read(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	require.NoError(t, err)
	return data
}

var callerRe = regexp.MustCompile(`^\[\s*\d+\.\d+\]\[\s*([TC]\d+)\]`)

func callersOf(text string) map[string]bool {
	out := map[string]bool{}
	for _, l := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		m := callerRe.FindStringSubmatch(l)
		if m == nil {
			out[""] = true
			continue
		}
		out[m[1]] = true
	}
	return out
}

func TestInterleavedCallersSeparated(t *testing.T) {
	reps := Parse(read(t, "synthetic-interleaved.log"))
	require.Len(t, reps, 2)
	assert.Equal(t, map[string]bool{"T400": true}, callersOf(reps[0].Text))
	assert.Equal(t, map[string]bool{"T401": true}, callersOf(reps[1].Text))
	// The spans overlap; each Text is complete on its own.
	assert.Contains(t, reps[0].Text, "---[ end trace")
	assert.Contains(t, reps[1].Text, "</TASK>")
	assert.NotContains(t, reps[0].Text, "stress: iteration")
}

func TestPanicAfterOopsIsOneReport(t *testing.T) {
	reps := Parse(read(t, "synthetic-oops-panic.log"))
	require.Len(t, reps, 1)
	assert.Contains(t, reps[0].Text, "---[ end Kernel panic - not syncing: Fatal exception ]---")
	assert.False(t, reps[0].Truncated)
}

func TestRCUStallAdoptsNMIBacktrace(t *testing.T) {
	reps := Parse(read(t, "synthetic-rcu-stall.log"))
	require.Len(t, reps, 2)
	assert.Contains(t, reps[1].Text, "NMI backtrace for cpu 0")
	assert.Contains(t, reps[1].Text, "ldt_tracker_scan+0x44/0x90")
	assert.NotContains(t, reps[1].Text, "agent heartbeat")
}

func TestSpanEdges(t *testing.T) {
	data := read(t, "synthetic-multi-crlf.log")
	reps := Parse(data)
	require.NotEmpty(t, reps)
	assert.Equal(t, 0, reps[0].Start, "report at the very start")
	assert.Equal(t, len(data), reps[len(reps)-1].End, "report at the very end")
	for _, r := range reps {
		assert.NotContains(t, r.Text, "\r")
	}
}

func TestStrings(t *testing.T) {
	log := "[    1.000000][  T100] BUG: scheduling while atomic: sh/100/0x00000002\n" +
		"[    1.000001][  T100] Call Trace:\n" +
		"[    1.000002][  T100]  <TASK>\n" +
		"[    1.000003][  T100]  dump_stack_lvl+0x5d/0x80\n" +
		"[    1.000004][  T100]  __schedule_bug+0x81/0xa0\n" +
		"[    1.000005][  T100]  foo_bar.isra.0+0x1/0x2 [foo]\n" +
		"[    1.000006][  T100]  </TASK>\n"
	reps := Parse([]byte(log))
	require.Len(t, reps, 1)
	assert.Equal(t, "atomic-sleep: BUG: scheduling while atomic in foo_bar", reps[0].String())
	assert.Equal(t, log, reps[0].Text)
	assert.Equal(t, len(log), reps[0].End)
	assert.Empty(t, Parse(nil))
	assert.Empty(t, Parse([]byte("\n\r\n")))

	// A kernel record glued to a partial program line on the console.
	glued := "ldtlab-init: waiting for agent...[    5.000000][  T300] BUG: scheduling while atomic: sh/300/0x2\n" +
		"[    5.000001][  T300] Call Trace:\n[    5.000002][  T300]  <TASK>\n[    5.000003][  T300]  foo+0x1/0x2\n[    5.000004][  T300]  </TASK>\n"
	reps = Parse([]byte(glued))
	require.Len(t, reps, 1)
	assert.Equal(t, "BUG: scheduling while atomic in foo", reps[0].Title)
	assert.Equal(t, strings.Index(glued, "[    5.000000]"), reps[0].Start)
	assert.NotContains(t, reps[0].Text, "ldtlab-init")
}

func TestBugWithoutStack(t *testing.T) {
	var b strings.Builder
	b.WriteString("[   40.000000][    C0] BUG: workqueue lockup - pool cpus=0 node=0 flags=0x0 nice=0 stuck for 33s!\n")
	for i := range 150 {
		fmt.Fprintf(&b, "[   40.%06d][    C0] pool %d: cpus=0 node=0 flags=0x0 nice=0 hung=33s workers=3\n", i+1, i)
	}
	reps := Parse([]byte(b.String()))
	require.Len(t, reps, 1)
	assert.Equal(t, "bug: BUG: workqueue lockup", reps[0].String())
	assert.False(t, reps[0].Truncated)
	assert.Equal(t, 1, strings.Count(reps[0].Text, "\n"))
}

var (
	hex16Re  = regexp.MustCompile(`\b[0-9a-f]{16}\b`)
	offRe    = regexp.MustCompile(`\+0x[0-9a-f]+/0x[0-9a-f]+`)
	pidRe    = regexp.MustCompile(`(PID: |pid: |pid:|:)(\d{2,5})\b`)
	tsRe     = regexp.MustCompile(`^\[\s*(\d+)\.(\d+)\]`)
	callerNo = regexp.MustCompile(`\[(\s*)T(\d+)\]`)
	cpuRe    = regexp.MustCompile(`(CPU: |CPU#|cpu )(\d)`)
)

// renumber rewrites what differs between runs of the same bug:
// addresses, code offsets, PIDs, CPU numbers, timestamps.
func renumber(data []byte, rnd *rand.Rand) []byte {
	lines := strings.SplitAfter(string(data), "\n")
	cpuShift := rnd.Intn(4) + 1
	tidShift := rnd.Intn(5000) + 1
	for i, l := range lines {
		l = tsRe.ReplaceAllStringFunc(l, func(string) string {
			return fmt.Sprintf("[%5d.%06d]", rnd.Intn(100000), rnd.Intn(1000000))
		})
		l = callerNo.ReplaceAllStringFunc(l, func(s string) string {
			m := callerNo.FindStringSubmatch(s)
			var n int
			fmt.Sscan(m[2], &n)
			return fmt.Sprintf("[%6s]", fmt.Sprintf("T%d", n+tidShift))
		})
		l = hex16Re.ReplaceAllStringFunc(l, func(string) string {
			return fmt.Sprintf("%016x", rnd.Uint64())
		})
		l = offRe.ReplaceAllStringFunc(l, func(string) string {
			return fmt.Sprintf("+0x%x/0x%x", rnd.Intn(0x100), 0x100+rnd.Intn(0x100))
		})
		// Not in a syslog line's clock ("00:12:34 host kernel: ").
		head := ""
		if i := strings.Index(l, " kernel: "); i >= 0 {
			head, l = l[:i], l[i:]
		}
		l = head + pidRe.ReplaceAllStringFunc(l, func(s string) string {
			m := pidRe.FindStringSubmatch(s)
			return m[1] + fmt.Sprint(rnd.Intn(30000)+100)
		})
		l = cpuRe.ReplaceAllStringFunc(l, func(s string) string {
			m := cpuRe.FindStringSubmatch(s)
			return m[1] + fmt.Sprint((int(m[2][0]-'0')+cpuShift)%8)
		})
		lines[i] = l
	}
	return []byte(strings.Join(lines, ""))
}

// TestTitlesStable: the same bug must get the same titles whatever the
// addresses, PIDs, CPUs and timestamps of the run.
func TestTitlesStable(t *testing.T) {
	logs, err := filepath.Glob(filepath.Join("testdata", "*.log"))
	require.NoError(t, err)
	rnd := rand.New(rand.NewSource(1))
	for _, path := range logs {
		data, err := os.ReadFile(path)
		require.NoError(t, err)
		want := wantText(Parse(data))
		for range 3 {
			mod := renumber(data, rnd)
			reps := Parse(mod)
			checkInvariants(t, mod, reps)
			assert.Equal(t, want, wantText(reps), filepath.Base(path))
		}
	}
}

func FuzzParse(f *testing.F) {
	logs, _ := filepath.Glob(filepath.Join("testdata", "*.log"))
	for _, path := range logs {
		if data, err := os.ReadFile(path); err == nil {
			f.Add(data)
		}
	}
	f.Add([]byte("[    1.0][  T1] kernel BUG at x.c:1!\n[ 1.1][ T1] Oops: invalid opcode: 0000 [#1]\n"))
	f.Add([]byte("------------[ cut here ]------------\nWARNING: CPU: 0 PID: 1 at a.c:1 f+0x1/0x2\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		checkInvariants(t, data, Parse(data))
	})
}

// TestLinearTime feeds the parser 200,000 report headers that never end,
// in the shapes that used to cost lines × window or lines × contexts, and
// bounds the work by the number of lines visited (a machine-independent
// measure). The wall time is logged, not asserted.
func TestLinearTime(t *testing.T) {
	const n = 200000
	shapes := []struct {
		name string
		line func(i int) string
	}{
		{"kasan, one context each", func(i int) string {
			return fmt.Sprintf("[    1.000000][T%d] BUG: KASAN: use-after-free in f+0x1/0x2\n", i+1)
		}},
		{"soft lockup, one context each", func(i int) string {
			return fmt.Sprintf("[    1.000000][C%d] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [a:1]\n", i)
		}},
		{"rcu stall and NMI backtraces", func(i int) string {
			if i%2 == 0 {
				return fmt.Sprintf("[    1.000000][C%d] rcu: INFO: rcu_preempt self-detected stall on CPU\n", i)
			}
			return fmt.Sprintf("[    1.000000][C%d] NMI backtrace for cpu %d\n", i, i)
		}},
		{"vma dumps without a BUG", func(int) string { return "vma ffff start 0 end 1000 mm ffff\n" }},
		{"hung task without timestamps", func(int) string { return "INFO: task a:1 blocked for more than 1 seconds.\n" }},
		{"warning, then program output", func(i int) string {
			if i%2 == 0 {
				return fmt.Sprintf("[    1.000000][T%d] WARNING: CPU: 0 PID: 1 at a.c:1 f+0x1/0x2\n", i+1)
			}
			return "program output\n"
		}},
		{"kmemleak objects", func(i int) string {
			return fmt.Sprintf("[    1.000000][T%d] kmemleak: unreferenced object 0xffff (size 8):\n", i+1)
		}},
	}
	for _, sh := range shapes {
		t.Run(sh.name, func(t *testing.T) {
			var b strings.Builder
			for i := range n {
				b.WriteString(sh.line(i))
			}
			start := time.Now()
			reps, steps := parse([]byte(b.String()))
			t.Logf("%d lines, %d reports, %d steps, %v", n, len(reps), steps, time.Since(start))
			// A constant number of visits per line; quadratic
			// behaviour would be thousands.
			assert.LessOrEqual(t, steps, 50*n)
		})
	}
}

// TestNoReportOnCleanLogs: boot messages of the sanitizers and detectors
// themselves are not reports.
func TestNoReportOnCleanLogs(t *testing.T) {
	clean := `[    0.000000][    T0] Linux version 6.12.117 (ldtlab@ldtlab) #1 SMP PREEMPT_DYNAMIC
[    0.100000][    T0] kasan: KernelAddressSanitizer initialized
[    0.110000][    T0] Lock dependency validator: Copyright (c) 2006 Red Hat, Inc., Ingo Molnar
[    0.110001][    T0] ... MAX_LOCKDEP_SUBCLASSES:  8
[    0.120000][    T0] kfence: initialized - using 2097152 bytes for 255 objects at 0x(____ptrval____)-0x(____ptrval____)
[    0.130000][    T1] kmemleak: Kernel memory leak detector initialized (mem pool available: 14419)
[    0.130001][    T1] kmemleak: Automatic memory scanning thread started
[    0.140000][    T1] watchdog: Watchdog detected hard LOCKUP support: buddy
[    0.150000][    T1] INFO: lockdep is turned off.
[    1.000000][    T1] ldtlab-init: WARNING: BUG: sample output from a program
WARNING: possible circular locking dependency detected
`
	assert.Empty(t, Parse([]byte(clean)))
}

// TestLockdepLongChain: a dependency chain longer than the stack-less
// limit of other reports still ends at the final stack and keeps the
// acquired lock's function in the title.
func TestLockdepLongChain(t *testing.T) {
	var b strings.Builder
	ts := 0
	add := func(s string) {
		ts++
		fmt.Fprintf(&b, "[    7.%06d][  T310] %s\n", ts, s)
	}
	add("======================================================")
	add("WARNING: possible circular locking dependency detected")
	add("ldt-stress/310 is trying to acquire lock:")
	add("ffff888004e51a18 (&tr->lock){+.+.}-{3:3}, at: ldt_tracker_add+0x2a/0x120")
	for i := range 8 {
		add(fmt.Sprintf("-> #%d (lock%d){+.+.}-{3:3}:", 8-i, i))
		for range 20 {
			add("       some_function+0x3e/0x160")
		}
	}
	add("stack backtrace:")
	add("Call Trace:")
	add(" <TASK>")
	add(" dump_stack_lvl+0x6e/0xa0")
	add(" ldt_tracker_add+0x2a/0x120")
	add(" </TASK>")
	add("ldtlab: unrelated message")
	reps := Parse([]byte(b.String()))
	require.Len(t, reps, 1)
	assert.Equal(t, "lockdep: possible deadlock in ldt_tracker_add", reps[0].String())
	assert.Contains(t, reps[0].Text, "</TASK>")
	assert.NotContains(t, reps[0].Text, "unrelated")
}

// TestEveryTypeHasGoldenLog: each report type is exercised by at least one
// golden log, so that no class the parser claims to know goes untested.
func TestEveryTypeHasGoldenLog(t *testing.T) {
	all := []Type{TypeWarning, TypeBug, TypeKernelBug, TypeOops, TypeGPF, TypePanic, TypeKASAN,
		TypeUBSAN, TypeRCUStall, TypeHungTask, TypeSoftLockup, TypeHardLockup, TypeBadPageState,
		TypeBadPageMap, TypeBadRSS, TypePageTableCheck, TypeListCorruption, TypeVMBug, TypeLockdep,
		TypeKFENCE, TypeKmemleak, TypeRefcount, TypeAtomicSleep, TypePageFault,
		TypeKMSAN, TypeKCSAN, TypeSlab, TypeRust}
	logs, err := filepath.Glob(filepath.Join("testdata", "*.log"))
	require.NoError(t, err)
	seen := map[Type][]string{}
	for _, path := range logs {
		for _, r := range Parse(read(t, filepath.Base(path))) {
			seen[r.Type] = append(seen[r.Type], filepath.Base(path))
		}
	}
	for _, typ := range all {
		assert.NotEmpty(t, seen[typ], "no golden log has a %q report", typ)
	}
}

// TestCorruptedFlag: a report whose stack cannot name the guilty code (a
// raw RIP, only frames the unwinder is unsure of, an allocation stack of
// allocator frames only) says so; the lab's own real reports do not.
func TestCorruptedFlag(t *testing.T) {
	for _, r := range Parse(read(t, "synthetic-unreliable.log")) {
		assert.True(t, r.Corrupted, "%s", r)
		assert.True(t, strings.HasSuffix(r.Title, " in corrupted"), r.Title)
	}
	for _, l := range realLogs {
		if strings.Contains(l.file, "boot-") {
			continue // boot stalls: some are cut short by the next
		}
		for _, r := range Parse(read(t, l.file)) {
			assert.False(t, r.Corrupted, "%s: %s", l.file, r)
		}
	}
}
