package report

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func titles(reps []Report) []string {
	var out []string
	for _, r := range reps {
		out = append(out, r.String())
	}
	return out
}

// feedLines feeds log to s in random batches, as a console delivers it.
func feedLines(s *Stream, log string, rng *rand.Rand) {
	lines := strings.Split(strings.TrimSuffix(strings.ReplaceAll(log, "\r", ""), "\n"), "\n")
	for len(lines) > 0 {
		n := min(len(lines), 1+rng.IntN(7))
		s.Feed(lines[:n]...)
		lines = lines[n:]
	}
}

// Every golden log gives the same reports fed line by line (in random
// batches) as parsed whole: a report is never cut where a batch ends.
func TestStreamMatchesParseOnGoldenLogs(t *testing.T) {
	logs, err := filepath.Glob(filepath.Join("testdata", "*.log"))
	require.NoError(t, err)
	require.NotEmpty(t, logs)
	for _, path := range logs {
		t.Run(filepath.Base(path), func(t *testing.T) {
			b, err := os.ReadFile(path)
			require.NoError(t, err)
			log := strings.ReplaceAll(string(b), "\r", "")
			want := titles(Parse([]byte(log)))
			for seed := uint64(1); seed <= 3; seed++ {
				s := NewStream()
				feedLines(s, log, rand.New(rand.NewPCG(seed, 0)))
				s.Flush()
				got := titles(s.All())
				require.Len(t, got, len(want), "seed %d: %q", seed, got)
				for i := range want {
					// The one tolerated difference: an RCU stall printed
					// amid another report's lines gets its function only
					// once those lines are gone (the stream removes a
					// report's lines once it is emitted).
					if strings.HasPrefix(want[i], "rcu-stall:") && strings.HasPrefix(got[i], want[i]+" in ") {
						continue
					}
					assert.Equal(t, want[i], got[i], "seed %d", seed)
				}
				for _, r := range s.All() {
					assert.Equal(t, r.Text, Parse([]byte(log[r.Start:min(r.End, len(log))]))[0].Text, "offsets locate the report's span")
				}
			}
		})
	}
}

// A report that has begun is pending until its end marker, and Since
// attributes it to where it began.
func TestStreamPendingAndSince(t *testing.T) {
	s := NewStream()
	s.Feed("[    1.000000] booting", "[    1.100000] more boot")
	mark := s.Offset()
	assert.False(t, s.Pending())
	s.Feed("[    2.000000] ------------[ cut here ]------------",
		"[    2.000001] WARNING: CPU: 0 PID: 1 at mm/ldt.c:10 ldt_collect+0x10/0x20",
		"[    2.000002] Modules linked in:",
		"[    2.000003] RIP: 0010:ldt_collect+0x10/0x20")
	assert.True(t, s.Pending(), "no end marker yet")
	assert.Empty(t, s.All(), "not emitted before it is whole")
	s.Feed("[    2.000004] Call Trace:", "[    2.000005]  <TASK>", "[    2.000006]  ldt_ioctl+0x1/0x2", "[    2.000007]  </TASK>",
		"[    2.000008] ---[ end trace 0000000000000000 ]---")
	assert.True(t, s.Pending(), "a finished report may still absorb the next lines")
	s.Feed("[    2.100000] a", "[    2.100001] b", "[    2.100002] c")
	assert.False(t, s.Pending())

	// A finished report in a console that goes quiet is emitted too.
	q := NewStream()
	q.Feed("[    2.000000] ------------[ cut here ]------------",
		"[    2.000001] WARNING: CPU: 0 PID: 1 at mm/ldt.c:10 ldt_collect+0x10/0x20",
		"[    2.000003] RIP: 0010:ldt_collect+0x10/0x20",
		"[    2.000008] ---[ end trace 0000000000000000 ]---")
	assert.True(t, q.Pending())
	assert.Eventually(t, func() bool { return len(q.All()) == 1 }, 5*time.Second, 50*time.Millisecond)
	got := s.Since(mark)
	require.Len(t, got, 1)
	assert.Equal(t, "WARNING in ldt_collect", got[0].Title)
	assert.Empty(t, s.Since(s.Offset()), "nothing began after the end")
	s.Feed("[    3.000000] quiet", "[    3.000001] quiet", "[    3.000002] quiet", "[    3.000003] quiet")
	assert.Len(t, s.All(), 1, "emitted once")
}

// A flood without an end is bounded: emitted truncated, window reset.
func TestStreamBoundsAnEndlessReport(t *testing.T) {
	s := NewStream()
	s.Feed("[    2.000000] ------------[ cut here ]------------",
		"[    2.000001] WARNING: CPU: 0 PID: 1 at mm/ldt.c:10 ldt_collect+0x10/0x20")
	line := "[    2.000002] " + strings.Repeat("x", 1000)
	batch := make([]string, 100)
	for i := range batch {
		batch[i] = line
	}
	for i := 0; i < (maxOpen/100000)+2; i++ {
		s.Feed(batch...)
	}
	assert.False(t, s.Pending())
	require.Len(t, s.All(), 1)
	assert.Equal(t, "WARNING in ldt_collect", s.All()[0].Title)
}
