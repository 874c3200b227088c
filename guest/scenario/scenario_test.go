package scenario

import (
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestMain(m *testing.M) {
	MaybeChild()
	os.Exit(m.Run())
}

// TestHostPagemapScan runs the scenarios that need neither swap, cgroups
// nor /dev/ldt under pagemap-scan, which works on the host kernel.
func TestHostPagemapScan(t *testing.T) {
	for _, name := range []string{"kernel-writes", "writeback", "mprotect", "thp-split-collapse", "concurrency"} {
		t.Run(name, func(t *testing.T) {
			s, ok := Lookup(name)
			if !ok {
				t.Skipf("%s not in the catalogue", name)
			}
			res := RunCell(s, Config{Tracker: "pagemap-scan", Seed: 1, Epochs: 3, DataDir: t.TempDir(), Progress: testWriter{t}})
			t.Logf("%+v", res)
			if res.Outcome == Skip {
				t.Skip(res.Reason)
			}
			assert.Equal(t, Pass, res.Outcome, res.Reason)
			assert.Zero(t, res.Missed)
			assert.Zero(t, res.Corrupted)
			require.GreaterOrEqual(t, len(res.Written), 3)
		})
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) { w.t.Log(string(b)); return len(b), nil }
