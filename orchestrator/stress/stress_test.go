package stress

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"ldtlab/guest/result"
)

// TestLimit: a slower kernel stretches the per-page work, never the
// guest-clock duration, and a faster one never shrinks the limit.
func TestLimit(t *testing.T) {
	o := Options{Duration: 30 * time.Second, Pages: 60000}
	assert.Equal(t, 90*time.Second+3*time.Minute, Limit(o, 1))
	assert.Equal(t, 90*time.Second+12*time.Minute, Limit(o, 4))
	assert.Equal(t, Limit(o, 1), Limit(o, 0.25))
}

// TestSwappingSet: a set that overflows the guest beside its shadow is
// compared fewer times, says so on its command line, and its limit pays
// for the comparisons it does make; a set that fits keeps ldt-stress's
// own epochs and command.
func TestSwappingSet(t *testing.T) {
	for _, c := range []struct {
		name              string
		pages, guest, sec int
		epochs            int
		flag              bool
		limit             time.Duration
	}{
		{"fits", 40000, 768, 8, 8, false, 24*time.Second + 2*time.Minute + 40*time.Second},
		{"unknown guest", 120000, 0, 8, 8, false, 24*time.Second + 2*time.Minute + 120*time.Second},
		// 4 min / (120,000 × 0.3 ms = 36 s): 6 comparisons.
		{"swaps", 120000, 768, 8, 6, true, 24*time.Second + 2*time.Minute + 120*time.Second + 2*6*36*time.Second},
		{"swaps, short", 120000, 768, 3, 3, false, 9*time.Second + 2*time.Minute + 120*time.Second + 2*3*36*time.Second},
		// 4 min / 66 s: 3.
		{"swaps hard", 220000, 768, 40, 3, true, 120*time.Second + 2*time.Minute + 220*time.Second + 2*3*66*time.Second},
		{"bigger guest", 120000, 2048, 8, 8, false, 24*time.Second + 2*time.Minute + 120*time.Second},
	} {
		t.Run(c.name, func(t *testing.T) {
			o := Options{Duration: time.Duration(c.sec) * time.Second, Pages: c.pages, GuestMiB: c.guest, Seed: 1}
			assert.Equal(t, c.epochs, Epochs(o))
			assert.Equal(t, c.flag, strings.Contains(Command("ldt", false, o), fmt.Sprintf(" -epochs %d", c.epochs)))
			assert.Equal(t, c.limit, Limit(o, 1))
		})
	}
}

func TestJudge(t *testing.T) {
	for _, c := range []struct {
		tracker    string
		code, lost int
		want       result.Verdict
	}{
		{"ldt", 0, 0, "PASS"},
		{"ldt", 1, 3, "FAIL"},
		{"pagemap-scan", 1, 1, "FAIL"},
		{"naive", 1, 5, "CAUGHT"},
		{"naive", 0, 0, "NO-TEETH"},
		{"ldt", 2, 0, "ERROR"},
		{"ldt", 1, 0, "ERROR"}, // exit status and count disagree
		{"ldt", 0, 2, "ERROR"},
	} {
		got := result.JudgeStress(c.tracker, c.code, c.lost)
		assert.Equal(t, c.want, got, "%+v", c)
		assert.Equal(t, c.want != "PASS" && c.want != "CAUGHT", Run{Verdict: got}.Failed())
	}
}

func TestKnown(t *testing.T) {
	text := "WARNING in __page_table_check_ptes_set\n make_uffd_wp_pte.isra.0+0xdb/0x100\n"
	assert.NotEmpty(t, result.KnownStressReport("pagemap-scan", text))
	assert.Empty(t, result.KnownStressReport("ldt", text), "never excused for ldt")
	assert.Empty(t, result.KnownStressReport("pagemap-scan", "WARNING in something_else"))
	assert.False(t, Run{Verdict: "KNOWN-GAP"}.Failed())
}

func TestKnownLost(t *testing.T) {
	assert.NotEmpty(t, result.StressGap("pagemap-scan", map[string]int{"odirect": 3}))
	assert.Empty(t, result.StressGap("pagemap-scan", map[string]int{"odirect": 3, "cpu": 1}), "a CPU write lost is a failure")
	assert.Empty(t, result.StressGap("ldt", map[string]int{"odirect": 3}), "never excused for ldt")
	assert.Empty(t, result.StressGap("pagemap-scan", nil))
}

func TestPlan(t *testing.T) {
	for _, c := range []struct {
		name string
		o    Options
		want []Planned
	}{
		{"defaults", Options{}, []Planned{{"ldt", false}, {"pagemap-scan", false}, {"naive", false}}},
		{"thp: ldt twice", Options{THP: true}, []Planned{{"ldt", false}, {"ldt", true}, {"pagemap-scan", false}, {"naive", false}}},
		{"no ldt, no thp run", Options{Trackers: []string{"naive"}, THP: true}, []Planned{{"naive", false}}},
	} {
		t.Run(c.name, func(t *testing.T) { assert.Equal(t, c.want, Plan(c.o)) })
	}
}
