package mmselftests

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestParseTAP(t *testing.T) {
	out := `TAP version 13
1..5
# Starting 5 tests
ok 1 Test test_simple
not ok 2 Test test_vma_reuse dirty bit of allocated page
ok 3 Test test_hugepage # SKIP no THP
ok 4 - with dash
ok 5 Test test_simple
ok 6 transact_test: 1234 transactions
ok 6 transact_test: 99 transactions
# Totals: pass:3 fail:1 xfail:0 xpass:0 skip:1 error:0
`
	got := ParseTAP(out)
	assert.Equal(t, map[string]string{
		"1 Test test_simple": "ok",
		"2 Test test_vma_reuse dirty bit of allocated page": "not ok",
		"3 Test test_hugepage":                              "skip",
		"4 with dash":                                       "ok",
		"5 Test test_simple":                                "ok",
		"6 transact_test: N transactions":                   "ok",
		"6 transact_test: N transactions #2":                "ok",
	}, got)
}

func TestDiff(t *testing.T) {
	a := []Result{{Test: "soft-dirty", Exit: 0, Cases: map[string]string{"x": "ok", "y": "ok"}}, {Test: "cow", Exit: 0, Cases: map[string]string{}}}
	b := []Result{{Test: "soft-dirty", Exit: 1, Cases: map[string]string{"x": "ok", "y": "not ok"}}, {Test: "cow", Exit: 0, Cases: map[string]string{}}}
	d := Diff(a, b, "ldt", "vanilla")
	assert.Equal(t, []string{
		"soft-dirty: exit 0 on ldt vs 1 on vanilla",
		`soft-dirty: "y" is ok on ldt but not ok on vanilla`,
	}, d)
	assert.Empty(t, Diff(a, a, "ldt", "vanilla"))
}

func TestClassify(t *testing.T) {
	r := func(exit int, cases map[string]string) Result { return Result{Test: "x", Exit: exit, Cases: cases} }
	ok := map[string]string{"a": "ok"}
	bad := map[string]string{"a": "not ok"}
	cases := []struct {
		name         string
		ldt, vanilla []Result
		diffs, flaky int
	}{
		{"agree", []Result{r(0, ok)}, []Result{r(0, ok)}, 0, 0},
		{"ldt always fails", []Result{r(1, bad), r(1, bad), r(1, bad)}, []Result{r(0, ok), r(0, ok), r(0, ok)}, 2, 0},
		{"vanilla flaky", []Result{r(0, ok), r(0, ok), r(0, ok)}, []Result{r(1, bad), r(0, ok), r(0, ok)}, 0, 2},
		{"both flaky", []Result{r(1, bad), r(0, ok), r(0, ok)}, []Result{r(0, ok), r(1, bad), r(0, ok)}, 0, 2},
		{"ldt fails once, vanilla steady", []Result{r(1, bad), r(0, ok), r(0, ok)}, []Result{r(0, ok), r(0, ok), r(0, ok)}, 2, 0},
		{"case missing on one kernel", []Result{r(0, map[string]string{})}, []Result{r(0, ok)}, 1, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d, f := classify("x", tc.ldt, tc.vanilla)
			assert.Len(t, d, tc.diffs, "%v", d)
			assert.Len(t, f, tc.flaky, "%v", f)
		})
	}
}

func TestParseUffdFormat(t *testing.T) {
	got := ParseTAP("Testing zeropage on anon... done\nTesting wp-fork on hugetlb... skipped [reason: memory allocation failed]\nTesting events on anon... ERROR: UFFDIO_COPY error: -2\n")
	assert.Equal(t, map[string]string{"zeropage on anon": "ok", "wp-fork on hugetlb": "skip", "events on anon": "not ok"}, got)
}

// TestKnownFlake: only a failed attempt of the named test with the known
// message is inconclusive; any other failure is judged.
func TestKnownFlake(t *testing.T) {
	hint := "Testing register-ioctls on anon... done\nTesting register-ioctls on shmem... ERROR: mmap of memfd failed at 0x40000000 (errno=22, @uffd-common.c:149)\n"
	tests := []struct {
		name  string
		r     Result
		flaky bool
	}{
		{"fixed-address mmap not honoured", Result{Test: "uffd-unit-tests", Exit: 1, Output: hint}, true},
		{"same message, passed", Result{Test: "uffd-unit-tests", Exit: 0, Output: hint}, false},
		{"same message, another test", Result{Test: "cow", Exit: 1, Output: hint}, false},
		{"another failure", Result{Test: "uffd-unit-tests", Exit: 1, Output: "Testing move on anon... ERROR: unexpected page content\n"}, false},
		{"mremap preamble placed over a mapping", Result{Test: "mremap_test", Exit: 1, Output: "# Failed to map dest preamble region: File exists\nnot ok 15 5MB mremap - Source 1MB-aligned, Dest 1MB-aligned with 40MB Preamble\n"}, true},
		{"mremap data mismatch", Result{Test: "mremap_test", Exit: 1, Output: "# Preamble data after remap doesn't match at offset 4096\nnot ok 15 5MB mremap\n"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.flaky, knownFlake(tt.r) != "")
		})
	}
}
