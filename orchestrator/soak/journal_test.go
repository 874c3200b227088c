package soak

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestJournalAppendReplay(t *testing.T) {
	dir := t.TempDir()
	j, err := OpenJournal(dir)
	require.NoError(t, err)
	require.NoError(t, j.Append(Record{Type: "start", Start: &Start{Options: Options{Seed: 3}}}))
	require.NoError(t, j.Append(Record{Type: "cell", Cell: &CellRecord{Round: 1, Verdict: "PASS", Pages: 10}}))
	require.NoError(t, j.Append(Record{Type: "round", Round: &RoundRecord{Round: 1}}))
	require.NoError(t, j.Close())
	recs, err := Replay(dir)
	require.NoError(t, err)
	require.Len(t, recs, 3)
	assert.Equal(t, uint64(3), recs[0].Start.Options.Seed)
	assert.Equal(t, int64(10), recs[1].Cell.Pages)
}

func TestJournalLock(t *testing.T) {
	dir := t.TempDir()
	j, err := OpenJournal(dir)
	require.NoError(t, err)
	_, err = OpenJournal(dir)
	require.Error(t, err)
	assert.True(t, errors.Is(err, ErrLocked), "%v", err)
	assert.True(t, lockHeld(dir))
	require.NoError(t, j.Close())
	assert.False(t, lockHeld(dir))
	j, err = OpenJournal(dir)
	require.NoError(t, err, "the lock is released on Close")
	j.Close()
}

// A kill -9 in the middle of a write leaves half a line: replay ignores
// it, and a resumed session appends after it without damage.
func TestJournalTornTail(t *testing.T) {
	dir := t.TempDir()
	j, err := OpenJournal(dir)
	require.NoError(t, err)
	require.NoError(t, j.Append(Record{Type: "start", Start: &Start{}}))
	require.NoError(t, j.Append(Record{Type: "round", Round: &RoundRecord{Round: 1}}))
	j.Close()
	f, err := os.OpenFile(filepath.Join(dir, JournalName), os.O_APPEND|os.O_WRONLY, 0)
	require.NoError(t, err)
	f.WriteString(`{"type":"round","round":{"rou`)
	f.Close()

	recs, err := Replay(dir)
	require.NoError(t, err, "a torn tail is not fatal")
	assert.Len(t, recs, 2)

	j, err = OpenJournal(dir)
	require.NoError(t, err)
	require.NoError(t, j.Append(Record{Type: "start", Session: 1, Start: &Start{Resumed: true}}))
	require.NoError(t, j.Append(Record{Type: "round", Session: 1, Round: &RoundRecord{Round: 2}}))
	j.Close()
	recs, err = Replay(dir)
	require.NoError(t, err)
	require.Len(t, recs, 4)
	assert.Equal(t, 2, recs[3].Round.Round)
}

func TestJournalDamagedMiddle(t *testing.T) {
	dir := t.TempDir()
	body := "{\"type\":\"start\",\"start\":{}}\nnot json at all}\n{\"type\":\"round\",\"round\":{\"round\":1}}\n"
	require.NoError(t, os.WriteFile(filepath.Join(dir, JournalName), []byte(body), 0o644))
	_, err := Replay(dir)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "line 2")
}

func TestReplayMissing(t *testing.T) {
	_, err := Replay(t.TempDir())
	require.Error(t, err)
	assert.Contains(t, err.Error(), "no soak journal")
}
