package tests

import (
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ldtlab/internal/cmdline"
)

// TestLDTInterface runs the in-guest checks of the /dev/ldt ABI
// (guest/cmd/ldt-selftest) on the patched debug kernel: one subtest per
// check, so a failure names the check.
func TestLDTInterface(t *testing.T) {
	o := guestOptions(t, "ldt-abi")
	o.Cmdline = cmdline.FakeNUMA(o.Cmdline, 2) // thp-migration-race moves a THP between nodes
	m := boot(t, o)
	if len(m.Kernel.Meta.Patches) == 0 {
		t.Fatal("the debug kernel was built without kmod/patches: the LDT series is missing")
	}
	r := run(t, m, "ls -l /dev/ldt")
	require.Equal(t, 0, r.Code, "/dev/ldt must exist after boot without a manual step: %s", r.Stderr)

	r = run(t, m, "ldt-selftest -v")
	out := string(r.Stdout)
	t.Logf("ldt-selftest output:\n%s%s", out, r.Stderr)
	line := regexp.MustCompile(`^(ok|FAIL|skip) ([\w-]+)(: (.*))?$`)
	n := 0
	for _, l := range strings.Split(out, "\n") {
		mm := line.FindStringSubmatch(l)
		if mm == nil {
			continue
		}
		n++
		t.Run(mm[2], func(t *testing.T) {
			switch mm[1] {
			case "skip":
				t.Skip(mm[4])
			case "FAIL":
				t.Errorf("%s", mm[4])
			}
		})
	}
	assert.GreaterOrEqual(t, n, 20, "ldt-selftest ran fewer checks than it has")
	assert.Equal(t, 0, r.Code, "ldt-selftest exit status")
	reps := m.Reports()
	for _, rep := range reps {
		t.Errorf("kernel report during the interface checks: %s\n%s", rep, rep.Text)
	}
}
