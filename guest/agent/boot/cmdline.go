// Package boot holds the duties of the guest's /init: mounting the pseudo
// filesystems, reading the kernel command line, loading the lab's modules,
// setting up swap and the data disk, and powering off on request.
//
// The pure helpers (command line and size parsing, sysfs look-ups under a
// given root) are separated from the ones that need PID 1 so that they can be
// tested on the host.
package boot

import (
	"fmt"
	"strconv"
	"strings"
)

// Cmdline is the kernel command line split into key=value words. Words
// without '=' map to "". Later words win, as with the kernel's own parsing.
type Cmdline map[string]string

// ParseCmdline splits a /proc/cmdline string. Double quotes group a value
// that contains spaces (key="a b"), the way the kernel accepts them.
func ParseCmdline(s string) Cmdline {
	c := Cmdline{}
	for _, w := range splitQuoted(s) {
		k, v, _ := strings.Cut(w, "=")
		c[k] = v
	}
	return c
}

// splitQuoted splits on whitespace outside double quotes and drops the quotes.
func splitQuoted(s string) []string {
	var words []string
	var b strings.Builder
	inQuote, inWord := false, false
	for _, r := range s {
		switch {
		case r == '"':
			inQuote = !inQuote
			inWord = true
		case !inQuote && (r == ' ' || r == '\t' || r == '\n'):
			if inWord {
				words = append(words, b.String())
				b.Reset()
				inWord = false
			}
		default:
			b.WriteRune(r)
			inWord = true
		}
	}
	if inWord {
		words = append(words, b.String())
	}
	return words
}

// Get returns the value of key, or def when key is absent or empty.
func (c Cmdline) Get(key, def string) string {
	if v, ok := c[key]; ok && v != "" {
		return v
	}
	return def
}

// Bool reports whether key is set to a true value (1, y, yes, true, on).
// A bare word counts as true so that "ldtlab.hang" alone works too.
func (c Cmdline) Bool(key string) bool {
	v, ok := c[key]
	if !ok {
		return false
	}
	switch strings.ToLower(v) {
	case "", "1", "y", "yes", "true", "on":
		return true
	}
	return false
}

// Hostname is the guest name from ldtlab.name=, "ldtlab" by default.
func (c Cmdline) Hostname() string { return c.Get("ldtlab.name", "ldtlab") }

// DefaultZramSize is used when ldtlab.zram= is absent.
const DefaultZramSize = 256 << 20

// ZramSize is the zram swap size from ldtlab.zram=; 0 means no zram.
func (c Cmdline) ZramSize() (int64, error) {
	v, ok := c["ldtlab.zram"]
	if !ok || v == "" {
		return DefaultZramSize, nil
	}
	n, err := ParseSize(v)
	if err != nil {
		return 0, fmt.Errorf("ldtlab.zram: %w", err)
	}
	return n, nil
}

// ParseSize parses a byte count with an optional binary K, M, G or T suffix
// (case-insensitive, an optional trailing "B" or "iB" is accepted).
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	u := strings.ToUpper(t)
	u = strings.TrimSuffix(u, "IB")
	if len(u) > 1 {
		u = strings.TrimSuffix(u, "B")
	}
	shift := 0
	if u != "" {
		switch u[len(u)-1] {
		case 'K':
			shift = 10
		case 'M':
			shift = 20
		case 'G':
			shift = 30
		case 'T':
			shift = 40
		}
		if shift != 0 {
			u = u[:len(u)-1]
		}
	}
	n, err := strconv.ParseInt(u, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("invalid size %q", s)
	}
	if n > (1<<63-1)>>shift {
		return 0, fmt.Errorf("size %q overflows", s)
	}
	return n << shift, nil
}
