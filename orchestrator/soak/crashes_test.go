package soak

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Occurrences of one title share a directory; only the first 3 and the
// last 3 keep their logs; the count and last-seen keep going.
func TestStoreDedupAndBound(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenStore(dir)
	require.NoError(t, err)
	t0 := time.Date(2026, 11, 29, 1, 0, 0, 0, time.UTC)
	for i := 1; i <= 10; i++ {
		_, err := s.Record(Occurrence{Title: "warning: WARNING in x", Type: "warning", Kind: "kernel", At: t0.Add(time.Duration(i) * time.Minute),
			Round: i, Seed: uint64(100 + i), Repro: "labctl soak --round 1", Span: fmt.Sprintf("span %d", i), Log: []byte(strings.Repeat("l", 100))})
		require.NoError(t, err)
	}
	_, err = s.Record(Occurrence{Title: "panic: other", Kind: "kernel", At: t0, Span: "p"})
	require.NoError(t, err)

	cs, err := Crashes(dir)
	require.NoError(t, err)
	require.Len(t, cs, 2)
	c := cs[0]
	assert.Equal(t, "warning: WARNING in x", c.Title)
	assert.Equal(t, 10, c.Count)
	assert.Equal(t, 1, c.FirstRound)
	assert.Equal(t, uint64(101), c.Seed, "the first occurrence's seed")
	assert.Equal(t, t0.Add(time.Minute), c.FirstSeen)
	assert.Equal(t, t0.Add(10*time.Minute), c.LastSeen)
	assert.Equal(t, []int{1, 2, 3, 8, 9, 10}, c.Kept)
	for i := 1; i <= 10; i++ {
		_, err := os.Stat(filepath.Join(c.Dir, fmt.Sprint(i), "console.log"))
		if i <= 3 || i >= 8 {
			assert.NoError(t, err, "occurrence %d must be kept", i)
		} else {
			assert.True(t, os.IsNotExist(err), "occurrence %d must be dropped", i)
		}
	}
	b, err := os.ReadFile(filepath.Join(c.Dir, "title"))
	require.NoError(t, err)
	assert.Equal(t, "warning: WARNING in x\n", string(b))
	assert.Equal(t, filepath.Join(dir, "crashes", TitleHash(c.Title)), c.Dir)

	// Reopened (a resumed soak): the count continues.
	s2, err := OpenStore(dir)
	require.NoError(t, err)
	c2, err := s2.Record(Occurrence{Title: "warning: WARNING in x", At: t0.Add(time.Hour)})
	require.NoError(t, err)
	assert.Equal(t, 11, c2.Count)
	assert.Equal(t, []int{1, 2, 3, 9, 10, 11}, c2.Kept)
	u, tot := crashTotals(dir)
	assert.Equal(t, 2, u)
	assert.Equal(t, 12, tot)
}

func TestStoreLogBounded(t *testing.T) {
	dir := t.TempDir()
	s, _ := OpenStore(dir)
	c, err := s.Record(Occurrence{Title: "t", Log: make([]byte, maxLog+5000)})
	require.NoError(t, err)
	b, err := os.ReadFile(filepath.Join(c.Dir, "1", "console.log"))
	require.NoError(t, err)
	assert.Less(t, len(b), maxLog+200)
	assert.Contains(t, string(b[:100]), "5000 earlier bytes")
}

func TestKnownNotCounted(t *testing.T) {
	dir := t.TempDir()
	s, _ := OpenStore(dir)
	s.Record(Occurrence{Title: "page-table-check: WARNING in y", Kind: "known", Known: "vanilla bug"})
	u, tot := crashTotals(dir)
	assert.Equal(t, 0, u)
	assert.Equal(t, 0, tot)
}

// A finding's files (a fuzz replay) are kept once per title, beside
// crash.json, where TitleDir says; names that leave the directory are refused.
func TestStoreFiles(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenStore(dir)
	require.NoError(t, err)
	title := "fuzz: ldt lost xwrite writes to memfd (xpin, xwrite)"
	for i, body := range []string{"first", "second"} {
		_, err := s.Record(Occurrence{Title: title, Kind: "correctness", At: time.Now(), Round: i, Files: map[string][]byte{"replay.json": []byte(body)}})
		require.NoError(t, err)
	}
	b, err := os.ReadFile(filepath.Join(s.TitleDir(title), "replay.json"))
	require.NoError(t, err)
	assert.Equal(t, "first", string(b), "the first occurrence's replay stays")
	for _, bad := range []string{"../x", "crash.json", ".hidden", "a/b"} {
		_, err := s.Record(Occurrence{Title: title, Kind: "correctness", At: time.Now(), Files: map[string][]byte{bad: nil}})
		assert.Error(t, err, bad)
	}
}
