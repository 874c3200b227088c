// Package shquote quotes words for a POSIX shell: the guest's sh for
// `labctl run a b c`, and the copy-pasteable QEMU command line the lab
// writes next to a VM.
package shquote

import "strings"

// special are the bytes a shell reads as more than a plain word.
const special = " \t\n'\"\\$`;&|<>()*?[]{}!#~"

// Word quotes s so that sh reads it back as exactly one word: plain
// words stay as they are, anything else goes in single quotes.
func Word(s string) string {
	if s != "" && !strings.ContainsAny(s, special) {
		return s
	}
	return Always(s)
}

// Always single-quotes s, even when it needs no quoting.
func Always(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// Join quotes each word and joins them with spaces.
func Join(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = Word(a)
	}
	return strings.Join(q, " ")
}
