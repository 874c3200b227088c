// Package mmtests runs the kernel's own mm selftests (built from the same
// tree as the guest kernel and packed into the image) inside a guest, parses
// their TAP output, and compares two kernels' results test case by test
// case: the LDT kernel must behave exactly like the vanilla one.
package mmtests

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strings"
	"time"

	"ldtlab/orchestrator/lab"
)

// Dir is where the image keeps the selftests.
const Dir = "/usr/lib/ldtlab/selftests/mm"

// Result of one selftest binary.
type Result struct {
	Test   string            `json:"test"`
	Exit   int               `json:"exit"`
	Cases  map[string]string `json:"cases"` // case → ok | not ok | skip
	Output string            `json:"-"`
	Took   time.Duration     `json:"took_ns"`
	Error  string            `json:"error,omitempty"` // timeout, crash
}

// Summary counts case outcomes.
func (r Result) Summary() string {
	n := map[string]int{}
	for _, v := range r.Cases {
		n[v]++
	}
	return fmt.Sprintf("exit %d, %d ok, %d not ok, %d skip", r.Exit, n["ok"], n["not ok"], n["skip"])
}

var digits = regexp.MustCompile(`[0-9]+`)

var tapLine = regexp.MustCompile(`^(ok|not ok) +(\d+)(?: +-)? *(.*?)\s*$`)

// ParseTAP extracts test cases from TAP output. A case is named by its
// description (numbers can shift if a test skips a group); duplicates get
// a #N suffix so none is lost.
func ParseTAP(out string) map[string]string {
	cases := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		m := tapLine.FindStringSubmatch(strings.TrimSpace(sc.Text()))
		if m == nil {
			continue
		}
		status, desc := m[1], m[3]
		if i := strings.Index(desc, "# SKIP"); i >= 0 {
			status, desc = "skip", strings.TrimSpace(desc[:i])
		} else if i := strings.Index(strings.ToUpper(desc), "# XFAIL"); i >= 0 {
			status, desc = "xfail", strings.TrimSpace(desc[:i])
		}
		// Key by position and by the description with numbers blanked:
		// some tests print measured counts in their descriptions
		// (pagemap_ioctl's transact_test), which must not make two runs
		// of the same test case look different.
		name := fmt.Sprintf("%s %s", m[2], digits.ReplaceAllString(desc, "N"))
		for k := 2; ; k++ {
			if _, dup := cases[name]; !dup {
				break
			}
			name = fmt.Sprintf("%s %s #%d", m[2], digits.ReplaceAllString(desc, "N"), k)
		}
		cases[name] = status
	}
	return cases
}

// Prepare puts the guest in the state the selftests expect.
const prepare = `set -e
echo madvise > /sys/kernel/mm/transparent_hugepage/enabled
echo 1 > /sys/kernel/mm/ksm/run || true
mkdir -p /tmp/mmtests && cd /tmp/mmtests
`

// Run runs each named selftest in m with a per-test timeout.
func Run(ctx context.Context, m *lab.Machine, tests []string, perTest time.Duration, progress io.Writer) ([]Result, error) {
	if r, err := m.Run(ctx, prepare); err != nil {
		return nil, err
	} else if r.Code != 0 {
		return nil, fmt.Errorf("preparing the guest for selftests: %s", r.Stderr)
	}
	var out []Result
	for _, t := range tests {
		tctx, cancel := context.WithTimeout(ctx, perTest)
		start := time.Now()
		r, err := m.Run(tctx, fmt.Sprintf("cd /tmp/mmtests && %s/%s 2>&1", Dir, t))
		cancel()
		res := Result{Test: t, Exit: r.Code, Output: string(r.Stdout), Took: time.Since(start)}
		if err != nil {
			if lab.IsGuestFault(err) {
				return append(out, Result{Test: t, Error: err.Error()}), err
			}
			res.Error = err.Error()
			res.Exit = -1
		}
		res.Cases = ParseTAP(res.Output)
		if progress != nil {
			fmt.Fprintf(progress, "  %-22s %-45s %6.1fs %s\n", t, res.Summary(), res.Took.Seconds(), res.Error)
		}
		out = append(out, res)
	}
	return out, nil
}

// Diff lists every difference between two runs of the same tests.
func Diff(a, b []Result, nameA, nameB string) []string {
	idx := func(rs []Result) map[string]Result {
		m := map[string]Result{}
		for _, r := range rs {
			m[r.Test] = r
		}
		return m
	}
	ia, ib := idx(a), idx(b)
	var tests []string
	for t := range ia {
		tests = append(tests, t)
	}
	for t := range ib {
		if _, ok := ia[t]; !ok {
			tests = append(tests, t)
		}
	}
	sort.Strings(tests)
	var diffs []string
	for _, t := range tests {
		ra, okA := ia[t]
		rb, okB := ib[t]
		switch {
		case !okA || !okB:
			diffs = append(diffs, fmt.Sprintf("%s: ran only on %s", t, map[bool]string{true: nameA, false: nameB}[okA]))
			continue
		case ra.Error != "" || rb.Error != "":
			if ra.Error != rb.Error {
				diffs = append(diffs, fmt.Sprintf("%s: %s error %q vs %s error %q", t, nameA, ra.Error, nameB, rb.Error))
			}
		case ra.Exit != rb.Exit:
			diffs = append(diffs, fmt.Sprintf("%s: exit %d on %s vs %d on %s", t, ra.Exit, nameA, rb.Exit, nameB))
		}
		var cases []string
		for c := range ra.Cases {
			cases = append(cases, c)
		}
		for c := range rb.Cases {
			if _, ok := ra.Cases[c]; !ok {
				cases = append(cases, c)
			}
		}
		sort.Strings(cases)
		for _, c := range cases {
			va, vb := ra.Cases[c], rb.Cases[c]
			if va != vb {
				diffs = append(diffs, fmt.Sprintf("%s: %q is %s on %s but %s on %s", t, c, orNone(va), nameA, orNone(vb), nameB))
			}
		}
	}
	return diffs
}

func orNone(s string) string {
	if s == "" {
		return "absent"
	}
	return s
}

// Comparison is the outcome of running the selftests on both kernels.
type Comparison struct {
	Results     map[string][]Result `json:"results"` // "ldt", "vanilla"
	Differences []string            `json:"differences"`
	Reports     []string            `json:"kernel_reports"`
}

// CompareKernels boots the LDT kernel and then the vanilla kernel described
// by o (o.Vanilla is ignored), runs the tests on each, and compares them.
// perTest 0 means 180 s scaled by the accelerator.
func CompareKernels(ctx context.Context, o lab.Options, tests []string, perTest time.Duration, progress io.Writer) (*Comparison, error) {
	c := &Comparison{Results: map[string][]Result{}}
	for _, vanilla := range []bool{false, true} {
		name := map[bool]string{false: "ldt", true: "vanilla"}[vanilla]
		vo := o
		vo.Vanilla = vanilla
		vo.Name = o.Name + "-" + name
		if !strings.Contains(vo.Cmdline, "numa=fake") {
			vo.Cmdline = strings.TrimSpace(vo.Cmdline + " numa=fake=2") // for migration
		}
		m, err := lab.Boot(ctx, vo)
		if err != nil {
			return nil, fmt.Errorf("booting the %s kernel: %w", name, err)
		}
		limit := perTest
		if limit == 0 {
			limit = time.Duration(float64(180*time.Second) * m.Timeouts.Scale)
		}
		if progress != nil {
			fmt.Fprintf(progress, "== %s kernel %s (%s): %d selftests\n", name, m.Kernel.Meta.KernelRelease, m.Accel.Kind, len(tests))
		}
		rs, err := Run(ctx, m, tests, limit, progress)
		reps := m.Reports()
		m.Close()
		if err != nil {
			return nil, fmt.Errorf("%s kernel: %w", name, err)
		}
		for _, r := range reps {
			c.Reports = append(c.Reports, fmt.Sprintf("%s kernel: %s", name, r))
		}
		c.Results[name] = rs
	}
	c.Differences = Diff(c.Results["ldt"], c.Results["vanilla"], "ldt", "vanilla")
	return c, nil
}
