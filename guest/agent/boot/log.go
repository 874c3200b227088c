package boot

import (
	"fmt"
	"os"
	"strings"
	"sync"
)

// Log writes progress lines to /dev/kmsg, so that they end up both in dmesg
// and on the serial console. Until /dev is mounted, or where /dev/kmsg cannot
// be opened (host tests), lines go to stderr instead.
type Log struct {
	mu     sync.Mutex
	prefix string
	kmsg   *os.File
	// KmsgPath is the kernel log device; tests point it elsewhere.
	KmsgPath string
}

// kmsgLevel is KERN_NOTICE: informative, and printed on the console with
// the default console log level.
const kmsgLevel = "<5>"

// NewLog returns a Log whose lines start with "prefix: ".
func NewLog(prefix string) *Log { return &Log{prefix: prefix, KmsgPath: "/dev/kmsg"} }

// Printf writes one line per line of the formatted message.
func (l *Log) Printf(format string, args ...any) {
	msg := strings.TrimRight(fmt.Sprintf(format, args...), "\n")
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.kmsg == nil && l.KmsgPath != "" {
		// Retried on every line: /dev appears only once init mounted it.
		if f, err := os.OpenFile(l.KmsgPath, os.O_WRONLY, 0); err == nil {
			l.kmsg = f
		}
	}
	for _, line := range strings.Split(msg, "\n") {
		if l.kmsg != nil {
			// One write per record: /dev/kmsg turns each write into a line.
			if _, err := l.kmsg.WriteString(kmsgLevel + l.prefix + ": " + line + "\n"); err == nil {
				continue
			}
		}
		fmt.Fprintf(os.Stderr, "%s: %s\n", l.prefix, line)
	}
}
