// Package lines holds the small text helper the lab's error messages
// share: the last lines of a log.
package lines

import "strings"

// Last returns the last n lines of s, without a trailing newline
// (n < 0: all of them).
func Last(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if n >= 0 && len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}
