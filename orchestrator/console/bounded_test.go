package console

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A guest that prints 64 MiB without a newline: the capture keeps a
// bounded partial line (not the whole input) and does not rescan it on
// every write (time linear in the input).
func TestEndlessLineBounded(t *testing.T) {
	c := newCapture(t, nil)
	lines, cancel := c.Subscribe()
	defer cancel()
	chunk := bytes.Repeat([]byte("A"), 64<<10)
	start := time.Now()
	for i := 0; i < 1024; i++ { // 64 MiB
		_, err := c.Write(chunk)
		require.NoError(t, err)
		c.mu.Lock()
		held := len(c.partial)
		c.mu.Unlock()
		require.LessOrEqual(t, held, maxLine, "partial line held after %d KiB", (i+1)*64)
	}
	took := time.Since(start)
	assert.Less(t, took, 10*time.Second, "64 MiB without a newline")
	write(t, c, "tail\nWARNING: next line\n")
	var got []string
	timeout := time.After(10 * time.Second)
	for len(got) < 2 {
		select {
		case l := <-lines:
			got = append(got, l)
		case <-timeout:
			t.Fatalf("lines not delivered: %d", len(got))
		}
	}
	for _, l := range got {
		assert.LessOrEqual(t, len(l), maxLine+100, "a delivered line is bounded")
	}
	assert.Contains(t, got[0], "line cut")
	assert.Equal(t, "WARNING: next line", got[len(got)-1], "lines after the long one are intact")
}

// Terminal escape sequences from the guest (a forged WARNING through
// /dev/kmsg that clears the screen, retitles the terminal) are shown
// escaped in the mirror; the console log keeps the raw bytes.
func TestMirrorEscapesControlBytes(t *testing.T) {
	var mirror bytes.Buffer
	c := newCapture(t, &mirror)
	write(t, c, "ok line\r\n\x1b[2J\x1b]0;pwned\x07fake\rWARNING\n")
	require.NoError(t, c.Close())
	got := mirror.String()
	assert.NotContains(t, got, "\x1b")
	assert.NotContains(t, got, "\x07")
	assert.NotContains(t, got, "fake\rWARNING")
	assert.Contains(t, got, "ok line\r\n", "a line end stays as it was")
	assert.Contains(t, got, `\x1b[2J`)
	assert.True(t, strings.Contains(string(c.Bytes()), "\x1b[2J"), "the log keeps what the guest printed")
}

// tapRecorder records what a tap is handed, and whether it was closed.
type tapRecorder struct {
	bytes.Buffer
	closed bool
}

func (r *tapRecorder) Close() error { r.closed = true; return nil }

// A tap has every byte when Write returns (no queue to wait on), lines
// cut anywhere, and is closed with the capture.
func TestTapIsSynchronous(t *testing.T) {
	c := newCapture(t, nil)
	var r tapRecorder
	c.Tap(&r)
	write(t, c, "[    1.0] a line\n[    1.1] half")
	assert.Equal(t, "[    1.0] a line\n[    1.1] half", r.String(), "the tap has the bytes as Write returns")
	write(t, c, " a line\n")
	require.NoError(t, c.Close())
	assert.Equal(t, "[    1.0] a line\n[    1.1] half a line\n", r.String())
	assert.True(t, r.closed)
}
