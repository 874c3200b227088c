package termsafe

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestString(t *testing.T) {
	for in, want := range map[string]string{
		"plain WARNING: x\n\tok": "plain WARNING: x\n\tok",
		"a\x1b[2Jb":              `a\x1b[2Jb`,
		"title\x1b]0;pwned\x07":  `title\x1b]0;pwned\x07`,
		"line\r\n":               "line\r\n",
		"fake\rWARNING":          `fake\rWARNING`,
		"x\x00\x7f":              `x\x00\x7f`,
		"c1 \u009b31m":           `c1 \u009b31m`,
		"bad \xff utf8":          `bad \xff utf8`,
		"bidi \u202egnp.exe":     `bidi \u202egnp.exe`,
		"ünïcode ok — 日本":        "ünïcode ok — 日本",
		"trailing cr\r":          `trailing cr\r`,
	} {
		assert.Equal(t, want, String(in), "%q", in)
	}
	assert.Equal(t, `a\nb\x1b`, Line("a\nb\x1b"))
}

// A stream cut anywhere (inside \r\n, inside a UTF-8 sequence) escapes
// as the whole would.
func TestWriterChunks(t *testing.T) {
	in := []byte("ok\r\nü\x1b[1m日\rX\r\n\xff")
	want := String(string(in))
	for cut := 0; cut <= len(in); cut++ {
		var out bytes.Buffer
		w := NewWriter(&out)
		_, err := w.Write(in[:cut])
		require.NoError(t, err)
		_, err = w.Write(in[cut:])
		require.NoError(t, err)
		require.NoError(t, w.Flush())
		assert.Equal(t, want, out.String(), "cut at %d", cut)
	}
}
