package lab

import "fmt"

// maxRunOutput bounds what RunWith keeps of each of a command's outputs:
// a guest command that floods its output must not exhaust the host's
// memory. The first and the last half are kept (a result's JSON comes
// last), with a note of what was dropped between them. A streaming
// writer given in RunOptions still receives everything.
const maxRunOutput = 16 << 20

// headTail keeps the first max/2 and the last max/2 bytes written.
type headTail struct {
	max   int
	head  []byte
	tail  []byte // the last bytes; compacted when twice the half
	total int64
}

func (b *headTail) Write(p []byte) (int, error) {
	n := len(p)
	b.total += int64(n)
	if room := b.max/2 - len(b.head); room > 0 {
		k := min(room, len(p))
		b.head = append(b.head, p[:k]...)
		p = p[k:]
	}
	half := b.max - b.max/2
	if len(p) >= half {
		b.tail = append(b.tail[:0], p[len(p)-half:]...)
		return n, nil
	}
	b.tail = append(b.tail, p...)
	if len(b.tail) > 2*half {
		b.tail = append(b.tail[:0], b.tail[len(b.tail)-half:]...)
	}
	return n, nil
}

// Dropped is how many bytes were not kept.
func (b *headTail) Dropped() int64 {
	kept := int64(len(b.head)) + int64(min(len(b.tail), b.max-b.max/2))
	return b.total - kept
}

// Bytes is what was kept: everything, or the head, a note and the tail.
func (b *headTail) Bytes() []byte {
	d := b.Dropped()
	if d == 0 {
		return append(append([]byte(nil), b.head...), b.tail...)
	}
	tail := b.tail[len(b.tail)-min(len(b.tail), b.max-b.max/2):]
	note := fmt.Sprintf("\n[ldtlab: %d bytes of output dropped here: the command printed %d bytes, more than the %d MiB kept]\n", d, b.total, b.max>>20)
	out := make([]byte, 0, len(b.head)+len(note)+len(tail))
	return append(append(append(out, b.head...), note...), tail...)
}
