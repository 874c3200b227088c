package report

import (
	"bytes"
	"regexp"
)

// line is one console line with the printk prefixes split off.
type line struct {
	start, end int    // byte span in the input; end is past the newline
	text       string // message after the prefixes, trailing CRs removed
	caller     string // "T123" or "C0" from CONFIG_PRINTK_CALLER, else ""
	kernel     bool   // carried a printk timestamp, so the kernel wrote it
}

var (
	// "[    1.234567][    T1] ", "[ 1.2][ C0] ", "[    1.234567] " (dmesg),
	// "[    1.234567] [    T1] " (util-linux dmesg), optionally behind a
	// "<4>" syslog level as in `dmesg -r`.
	prefixRe = regexp.MustCompile(`^(?:<\d+>)?\[\s*\d+\.\d+\]\s?(?:\[\s*([TC]\d+)\]\s?)?`)
	// A kernel record glued to a partial userspace line on the serial
	// console. Only the timestamp+caller pair is trusted here, so that
	// program output such as "[1.5]" does not split lines.
	midPrefixRe = regexp.MustCompile(`\[\s*\d+\.\d+\]\[\s*[TC]\d+\]`)
	// A kernel record glued to an unfinished kernel line (a message
	// printed without its newline): a printk timestamp, six decimals.
	midStampRe = regexp.MustCompile(`\[\s*\d+\.\d{6}\] `)
	// What can stand before a kernel record on a serial console: the
	// getty prompt the record interrupted, printk's count of messages it
	// dropped to keep up.
	leadRe = regexp.MustCompile(`^(?:\*\* \d+ printk messages dropped \*\* |.*? login: )`)
	// syslog and journalctl: "Nov 29 00:12:34 host kernel: ", ISO dates
	// (short-iso), and an optional printk timestamp after it.
	syslogRe = regexp.MustCompile(`^(?:[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d|\d{4}-\d\d-\d\dT[\d:.,+-]+) \S+ kernel: (?:\[\s*\d+\.\d+\] ?)?`)
)

func splitLines(log []byte) []line {
	var out []line
	for pos := 0; pos < len(log); {
		end := len(log)
		if nl := bytes.IndexByte(log[pos:], '\n'); nl >= 0 {
			end = pos + nl + 1
		}
		body := bytes.TrimRight(log[pos:end], "\r\n")
		// The regexp only where a "][" makes a glued record possible:
		// it is the costliest step on ordinary lines.
		loc := findMidPrefix(body)
		if loc == nil && len(body) > 0 && body[0] == '[' {
			loc = findMidStamp(body)
		}
		if loc != nil && loc[0] > 0 {
			out = append(out, makeLine(pos, pos+loc[0], body[:loc[0]]))
			out = append(out, makeLine(pos+loc[0], end, body[loc[0]:]))
		} else {
			out = append(out, makeLine(pos, end, body))
		}
		pos = end
	}
	return out
}

func findMidPrefix(body []byte) []int {
	if i := bytes.Index(body, []byte("][")); i <= 0 || bytes.IndexByte(body[1:], '[') < 0 {
		return nil
	}
	return midPrefixRe.FindIndex(body)
}

// findMidStamp finds a second printk timestamp in a line that began with
// one: two kernel records on one console line.
func findMidStamp(body []byte) []int {
	m := prefixRe.FindIndex(body)
	if m == nil || bytes.IndexByte(body[m[1]:], '[') < 0 {
		return nil
	}
	loc := midStampRe.FindIndex(body[m[1]:])
	if loc == nil {
		return nil
	}
	return []int{m[1] + loc[0], m[1] + loc[1]}
}

func makeLine(start, end int, body []byte) line {
	l := line{start: start, end: end}
	if len(body) > 0 && body[0] != '[' && body[0] != '<' &&
		(bytes.HasPrefix(body, []byte("** ")) || bytes.Contains(body, []byte(" login: ["))) {
		if m := leadRe.FindIndex(body); m != nil && prefixRe.Match(body[m[1]:]) {
			body = body[m[1]:]
		}
	}
	if len(body) == 0 || (body[0] != '[' && body[0] != '<') {
		if bytes.Contains(body, []byte(" kernel: ")) {
			if m := syslogRe.FindIndex(body); m != nil {
				l.kernel = true
				body = body[m[1]:]
			}
		}
		l.text = string(bytes.TrimRight(body, "\r"))
		return l
	}
	if m := prefixRe.FindSubmatchIndex(body); m != nil {
		l.kernel = true
		if m[2] >= 0 {
			l.caller = string(body[m[2]:m[3]])
		}
		body = body[m[1]:]
	}
	l.text = string(bytes.TrimRight(body, "\r"))
	return l
}
