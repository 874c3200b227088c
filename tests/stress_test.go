package tests

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestStressShort is the short stress run of `make test`: writers, a
// collector copying every reported page into a shadow and every agitator
// at once, on a guest with swap and two NUMA nodes. ldt and pagemap-scan
// must leave the shadow identical to memory; naive (the negative control)
// must lose writes, or the run has no teeth.
func TestStressShort(t *testing.T) {
	o := guestOptions(t, "stress")
	o.MemoryMiB, o.SwapMiB, o.DataMiB, o.Cmdline = 768, 512, 64, "numa=fake=2"
	m := boot(t, o)
	for _, c := range []struct {
		tracker string
		thp     bool
		lose    bool
	}{
		{"ldt", false, false},
		{"ldt", true, false},
		{"pagemap-scan", false, false},
		{"naive", false, true},
	} {
		name := fmt.Sprintf("%s/thp=%v", c.tracker, c.thp)
		t.Run(name, func(t *testing.T) {
			cmd := fmt.Sprintf("ldt-stress -tracker %s -pages 8192 -duration 8s -seed 7 -thp=%v", c.tracker, c.thp)
			r := run(t, m, cmd)
			t.Logf("%s\n%s%s", cmd, r.Stdout, r.Stderr)
			require.NotEqual(t, 2, r.Code, "the stress run itself failed: %s", r.Stderr)
			var res struct {
				LostPages   int            `json:"lost_pages"`
				Collections int            `json:"collections"`
				Copied      int            `json:"pages_copied"`
				Writes      int            `json:"writes"`
				Agitators   map[string]int `json:"agitators"`
			}
			require.NoError(t, json.Unmarshal([]byte(strings.TrimSpace(string(r.Stdout))), &res))
			assert.Greater(t, res.Writes, 0, "no writes: the run proves nothing")
			assert.Greater(t, res.Collections, 10, "too few collections to race with anything")
			for _, a := range []string{"madvfree", "pageout", "migrate", "gup-write", "odirect"} {
				assert.Greater(t, res.Agitators[a], 0, "agitator %s never acted", a)
			}
			if c.lose {
				assert.Equal(t, 1, r.Code, "naive lost no write: the stress run has no teeth")
				assert.Greater(t, res.LostPages, 0)
			} else {
				assert.Equal(t, 0, r.Code, "%s lost %d pages", c.tracker, res.LostPages)
			}
		})
	}
	for _, rep := range m.Reports() {
		t.Errorf("kernel report during the stress run: %s\n%s", rep, rep.Text)
	}
}
