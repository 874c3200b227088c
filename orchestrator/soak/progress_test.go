package soak

import (
	"bytes"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// On a terminal the progress line is rewritten in place (\r + erase) and
// events are printed above it; elsewhere both are plain lines.
func TestProgressLine(t *testing.T) {
	s := &Soak{start: time.Now(), deadline: time.Now().Add(time.Hour), stats: Stats{Rounds: 3, Pages: 12345, CrashUnique: 1, CrashTotal: 2}}
	s.logFile, _ = os.Open(os.DevNull)
	defer s.logFile.Close()

	var plain bytes.Buffer
	p := newProgress(s, &plain)
	assert.False(t, p.tty)
	p.event("round 1: found %s", "x")
	assert.Regexp(t, `^\d\d:\d\d:\d\d round 1: found x\n$`, plain.String())

	ptmx, tty, err := pty.Open()
	require.NoError(t, err)
	defer ptmx.Close()
	p = newProgress(s, tty)
	require.True(t, p.tty)
	p.event("crash y")
	tty.Close()
	b, _ := io.ReadAll(ptmx)
	out := string(b)
	assert.True(t, strings.HasPrefix(out, "\r\x1b[K"), "%q", out)
	assert.Contains(t, out, "crash y")
	assert.Contains(t, out, "3 rounds")
	assert.Contains(t, out, "12.3k pages verified")
	assert.Contains(t, out, "crashes 1 unique / 2 total")
}
