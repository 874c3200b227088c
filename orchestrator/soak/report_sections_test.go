package soak

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// smokeDir is a soak directory holding testdata/smoke-journal.jsonl: the
// journal of a real 6-minute soak (2026-12-07, debug kernel, TCG, 2
// guests, seed 20261664; catalogue cut to two entries), copied while its
// round 4 was still running, so round 4's two cells must not count.
func smokeDir(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("testdata/smoke-journal.jsonl")
	require.NoError(t, err)
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, JournalName), b, 0o644))
	return dir
}

// The report's sections, rendered from real journal lines: each row is
// what the journal's cells add up to (worked out by hand from the
// journal: e.g. ldt's pages are its three scenario cells 1016+192+160,
// its stress run's 326036 copied pages and its fuzz pages 5432+2631).
func TestReportSectionsFromARealJournal(t *testing.T) {
	dir := smokeDir(t)
	md, html, err := WriteReport(dir)
	require.NoError(t, err)
	mb, err := os.ReadFile(md)
	require.NoError(t, err)
	hb, err := os.ReadFile(html)
	require.NoError(t, err)
	cases := []struct {
		section string
		md      []string
		html    []string
	}{
		{"what ran", []string{
			"- ldtlab commit: `43f28b0d90208e7bbbee6682aada2cda0c716399`",
			"- patch series: 14 patches of kmod/patches, sha256 of the series in order `b126a975720f38e38e7f4c429ba7a3d05bf808033b2a0d21095d1b65f85582ad`",
			"- kernel config: debug; build key `b4dd4efb28d1bfc5a481ba46`",
			"- QEMU: QEMU emulator version 7.2.22",
			"- accelerator: tcg (tcg: /dev/kvm is PVM-only (kvm\\_pvm loaded",
			"- host: AMD EPYC, 2 cores, 24 GiB RAM; load average at the start 27.56 20.52 11.26",
		}, []string{"<li>ldtlab commit: <code>43f28b0d90208e7bbbee6682aada2cda0c716399</code></li>", "<li>QEMU: QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)</li>"}},
		{"fuzz sequences in the verdict table", []string{
			"| fuzz |  |  |  |  | 2 PASS |",
			// ldt 2+1 sequences; naive CAUGHT in one of the first step's
			// two and in the second's one; softdirty and pagemap-scan N/A
			// on one sequence each (a sequence they cannot run: ldt-fuzz NotFor).
			"| fuzz sequences | 3 PASS | 2 CAUGHT, 1 PASS | 1 KNOWN-GAP, 1 N/A, 1 PASS | 1 KNOWN-GAP, 1 N/A, 1 PASS |  |",
		}, nil},
		{"per tracker", []string{
			"| tracker | scenario cells | stress runs | fuzz sequences | checkpoint runs | migrations | pages verified | failures |",
			"| ldt | 3 | 2 | 3 | 0 | 0 | 335.5k | 1 |",
			"| naive | 2 | 0 | 3 | 0 | 0 | 8292 | 0 |",
			"| softdirty | 3 | 0 | 2 | 1 | 0 | 29.0k | 0 |",
			"| pagemap-scan | 2 | 0 | 2 | 0 | 0 | 6008 | 0 |",
		}, []string{"<tr><td>ldt</td><td>3</td><td>2</td><td>3</td><td>0</td><td>0</td><td>335.5k</td><td>1</td></tr>"}},
		{"agitators", []string{
			"| migrate | 1 | 173 | 5275 pages asked to move; 2650 pages migrated to the other node |",
			"| pageout | 1 | 87 | 2717 pages advised out; 776 pages not resident right after (swapped out) |",
			"| odirect | 1 | 0 | – |",
			"1 of 2 stress runs recorded no agitators",
		}, []string{"<td>2717 pages advised out; 776 pages not resident right after (swapped out)</td>"}},
		{"fuzz operations", []string{
			"| migrate (pages now on the target node) | 1568 | 0 |",
			"| madvise collapse | 0 | 3 |",
			"| uring-reg | 40 | 0 |",
		}, []string{"<tr><td>madvise collapse</td><td>0</td><td>3</td></tr>"}},
		{"vmstat per round", []string{
			"| round | worker | steps | cells | pswpin | pswpout | thp\\_fault\\_alloc |",
			"| 1 | 2 | 4 scenario, fuzz, checkpoint | 6/6 | 6988 | 6988 |",
			"| 3 | 2 | scenario, stress | 2/2 | 2797 | 2805 | 0 | 0 | 0 | 0 | 0 | 0 | 2651 | 0 | 227 | 1 |",
			"| all |  |  |  | 12690 | 12799 | 16 | 5 | 24 | 1 | 0 | 0 | 3164 | 0 | 238 | 66 |",
		}, []string{"<tr><td>3</td><td>2</td><td>scenario, stress</td><td>2/2</td><td>2797</td><td>2805</td>"}},
		{"every counter that moved", []string{
			"| pgmigrate\\_success | 3164 | 2 |",
			"| sys\\_ksm\\_pages\\_sharing | 0 | 2 |",
		}, nil},
	}
	for _, c := range cases {
		t.Run(c.section, func(t *testing.T) {
			for _, w := range c.md {
				assert.Contains(t, string(mb), w)
			}
			for _, w := range c.html {
				assert.Contains(t, string(hb), w)
			}
		})
	}
}

// On the same real journal: every finished round's vmstat is the sum of
// its cells' deltas, and a round's count of sampled cells is right.
func TestRoundVMStatIsTheSumOfItsCells(t *testing.T) {
	recs, err := Replay(smokeDir(t))
	require.NoError(t, err)
	cells := map[int]VMStat{}
	sampled := map[int]int{}
	for _, r := range recs {
		if r.Type == "cell" && r.Cell.VMStat != nil {
			if cells[r.Cell.Round] == nil {
				cells[r.Cell.Round] = VMStat{}
			}
			cells[r.Cell.Round].Add(r.Cell.VMStat)
			sampled[r.Cell.Round]++
		}
	}
	rounds := 0
	for _, r := range recs {
		if r.Type != "round" {
			continue
		}
		rounds++
		assert.Equal(t, cells[r.Round.Round], r.Round.VMStat, "round %d", r.Round.Round)
		assert.Equal(t, sampled[r.Round.Round], r.Round.VMStatCells, "round %d", r.Round.Round)
		assert.NotZero(t, r.Round.VMStat["pswpout"], "every round of this soak swapped (round %d)", r.Round.Round)
	}
	assert.Equal(t, 3, rounds)
}
