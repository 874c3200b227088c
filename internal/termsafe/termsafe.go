// Package termsafe makes guest text safe to print on a terminal: a
// guest (any process in it, through /dev/kmsg) can put escape sequences
// in its console that clear the screen, move the cursor, retitle the
// window or forge lines. They are shown escaped (\x1b, \r, \u009b)
// instead; newlines and tabs pass, and so does a carriage return right
// before a newline (the serial console's line end).
package termsafe

import (
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// String escapes the control characters of s, as the package says.
func String(s string) string {
	if clean(s) {
		return s
	}
	var b strings.Builder
	escape(&b, []byte(s), true)
	return b.String()
}

// Line is String for one line: newlines are escaped too.
func Line(s string) string {
	return strings.ReplaceAll(String(s), "\n", `\n`)
}

func clean(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 && c != '\n' && c != '\t' || c == 0x7f || c >= 0x80 {
			return false
		}
	}
	return true
}

// escape writes p escaped; final says that nothing follows p (a lone
// trailing \r is escaped rather than kept for the next write). It
// returns how many bytes of p it consumed (the rest, a possible start of
// a UTF-8 sequence or a \r, waits for more).
func escape(b *strings.Builder, p []byte, final bool) int {
	i := 0
	for i < len(p) {
		c := p[i]
		switch {
		case c == '\n' || c == '\t' || (c >= 0x20 && c < 0x7f):
			b.WriteByte(c)
			i++
		case c == '\r':
			if i+1 < len(p) {
				if p[i+1] == '\n' {
					b.WriteString("\r\n")
					i += 2
				} else {
					b.WriteString(`\r`)
					i++
				}
				continue
			}
			if !final {
				return i
			}
			b.WriteString(`\r`)
			i++
		case c < 0x80:
			fmt.Fprintf(b, `\x%02x`, c)
			i++
		default:
			if !final && !utf8.FullRune(p[i:]) {
				return i
			}
			r, n := utf8.DecodeRune(p[i:])
			switch {
			case r == utf8.RuneError && n <= 1:
				fmt.Fprintf(b, `\x%02x`, c)
				i++
			case r >= 0x80 && r < 0xa0, r == 0x2028, r == 0x2029, r >= 0x202a && r <= 0x202e, r >= 0x2066 && r <= 0x2069:
				// C1 controls (0x9b is a CSI on some terminals),
				// line separators and bidi overrides.
				fmt.Fprintf(b, `\u%04x`, r)
				i += n
			default:
				b.Write(p[i : i+n])
				i += n
			}
		}
	}
	return i
}

// Writer escapes what is written to it before passing it on. Close
// flushes a held back partial sequence.
type Writer struct {
	w    io.Writer
	hold []byte
}

// NewWriter returns a Writer to w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// Write escapes p; it reports len(p) written when w took everything.
func (t *Writer) Write(p []byte) (int, error) {
	buf := append(t.hold, p...)
	var b strings.Builder
	n := escape(&b, buf, false)
	t.hold = append([]byte(nil), buf[n:]...)
	if _, err := io.WriteString(t.w, b.String()); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Flush writes what was held back (a trailing \r, a cut UTF-8 sequence).
func (t *Writer) Flush() error {
	if len(t.hold) == 0 {
		return nil
	}
	var b strings.Builder
	escape(&b, t.hold, true)
	t.hold = nil
	_, err := io.WriteString(t.w, b.String())
	return err
}
