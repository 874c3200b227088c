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

// feedBytes feeds log to s in random chunks, as a console delivers it:
// lines are cut anywhere.
func feedBytes(s *Stream, log []byte, rng *rand.Rand) {
	for len(log) > 0 {
		n := min(len(log), 1+rng.IntN(400))
		s.Write(log[:n])
		log = log[n:]
	}
}

// feed writes whole lines.
func feed(s *Stream, lines ...string) {
	s.Write([]byte(strings.Join(lines, "\n") + "\n"))
}

// Every golden log gives the same reports fed line by line (in random
// batches) as parsed whole: a report is never cut where a batch ends.
func TestStreamMatchesParseOnGoldenLogs(t *testing.T) {
	logs, err := filepath.Glob(filepath.Join("testdata", "*.log"))
	require.NoError(t, err)
	require.NotEmpty(t, logs)
	for _, path := range logs {
		t.Run(filepath.Base(path), func(t *testing.T) {
			log, err := os.ReadFile(path)
			require.NoError(t, err)
			want := titles(Parse(log))
			for seed := uint64(1); seed <= 3; seed++ {
				s := NewStream()
				feedBytes(s, log, rand.New(rand.NewPCG(seed, 0)))
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
					assert.Equal(t, r.Text, Parse(log[r.Start:min(r.End, len(log))])[0].Text, "offsets locate the report's span")
				}
			}
		})
	}
}

// A report that has begun is pending until its end marker, and Since
// attributes it to where it began.
func TestStreamPendingAndSince(t *testing.T) {
	s := NewStream()
	feed(s, "[    1.000000] booting", "[    1.100000] more boot")
	mark := s.Offset()
	assert.False(t, s.Pending())
	feed(s, "[    2.000000] ------------[ cut here ]------------",
		"[    2.000001] WARNING: CPU: 0 PID: 1 at mm/ldt.c:10 ldt_collect+0x10/0x20",
		"[    2.000002] Modules linked in:",
		"[    2.000003] RIP: 0010:ldt_collect+0x10/0x20")
	assert.True(t, s.Pending(), "no end marker yet")
	assert.Empty(t, s.All(), "not emitted before it is whole")
	feed(s, "[    2.000004] Call Trace:", "[    2.000005]  <TASK>", "[    2.000006]  ldt_ioctl+0x1/0x2", "[    2.000007]  </TASK>",
		"[    2.000008] ---[ end trace 0000000000000000 ]---")
	assert.True(t, s.Pending(), "a finished report may still absorb the next lines")
	feed(s, "[    2.100000] a", "[    2.100001] b", "[    2.100002] c")
	assert.False(t, s.Pending())

	// A finished report in a console that goes quiet is emitted too.
	q := NewStream()
	feed(q, "[    2.000000] ------------[ cut here ]------------",
		"[    2.000001] WARNING: CPU: 0 PID: 1 at mm/ldt.c:10 ldt_collect+0x10/0x20",
		"[    2.000003] RIP: 0010:ldt_collect+0x10/0x20",
		"[    2.000008] ---[ end trace 0000000000000000 ]---")
	assert.True(t, q.Pending())
	assert.Eventually(t, func() bool { return len(q.All()) == 1 }, 5*time.Second, 50*time.Millisecond)
	got := s.Since(mark)
	require.Len(t, got, 1)
	assert.Equal(t, "WARNING in ldt_collect", got[0].Title)
	assert.Empty(t, s.Since(s.Offset()), "nothing began after the end")
	feed(s, "[    3.000000] quiet", "[    3.000001] quiet", "[    3.000002] quiet", "[    3.000003] quiet")
	assert.Len(t, s.All(), 1, "emitted once")
}

// A flood without an end is bounded: emitted truncated, window reset.
func TestStreamBoundsAnEndlessReport(t *testing.T) {
	s := NewStream()
	feed(s, "[    2.000000] ------------[ cut here ]------------",
		"[    2.000001] WARNING: CPU: 0 PID: 1 at mm/ldt.c:10 ldt_collect+0x10/0x20")
	line := "[    2.000002] " + strings.Repeat("x", 1000)
	batch := make([]string, 100)
	for i := range batch {
		batch[i] = line
	}
	for i := 0; i < (maxOpen/100000)+2; i++ {
		feed(s, batch...)
	}
	assert.False(t, s.Pending())
	require.Len(t, s.All(), 1)
	assert.Equal(t, "WARNING in ldt_collect", s.All()[0].Title)
}

// A guest printing without newlines costs the stream neither memory nor
// time, and what follows the endless line is still seen.
func TestStreamBoundsAnEndlessLine(t *testing.T) {
	s := NewStream()
	feed(s, "[    1.000000] booting")
	chunk := []byte(strings.Repeat("A", 64<<10))
	start := time.Now()
	for i := 0; i < 1024; i++ { // 64 MiB
		s.Write(chunk)
		s.mu.Lock()
		held := len(s.buf)
		s.mu.Unlock()
		require.LessOrEqual(t, held, maxLine+len(chunk)+100, "window after %d KiB", (i+1)*64)
	}
	t.Logf("64 MiB without a newline in %v", time.Since(start))
	s.Write([]byte("\n"))
	mark := s.Offset()
	feed(s, "[    2.000000] WARNING: CPU: 0 PID: 1 at mm/ldt.c:10 ldt_collect+0x10/0x20",
		"[    2.000001] RIP: 0010:ldt_collect+0x10/0x20",
		"[    2.000002] ---[ end trace 0000000000000000 ]---")
	s.Flush()
	got := s.Since(mark)
	require.Len(t, got, 1)
	assert.Equal(t, "WARNING in ldt_collect", got[0].Title)
	assert.Equal(t, mark, got[0].Start, "offsets count the bytes of the cut line")
}

// The full parse runs only when a line could open a report: a long busy
// console without one is looked at line by line, never parsed.
func TestStreamParsesOnlyOnAHit(t *testing.T) {
	log := read(t, "guest-busy-clean-sanitize.log")
	s := NewStream()
	feedBytes(s, log, rand.New(rand.NewPCG(1, 0)))
	assert.Empty(t, s.All())
	assert.Zero(t, s.parses, "a clean console is never parsed")
	s.mu.Lock()
	held := len(s.buf)
	s.mu.Unlock()
	assert.Less(t, held, 64<<10, "the window keeps a little context only")

	w := NewStream()
	feedBytes(w, read(t, "guest-warn.log"), rand.New(rand.NewPCG(1, 0)))
	w.Flush()
	assert.Len(t, w.All(), 1)
	assert.NotZero(t, w.parses)
	t.Logf("clean console: %d bytes, %d parses; a console with a WARNING: %d parses", len(log), s.parses, w.parses)
}
