// Package console captures a guest's serial console: every byte goes to a
// file (kept after the VM is gone), a bounded in-memory tail (for error
// messages), and any number of live line subscribers (boot progress, the
// kernel-report watcher, a terminal mirror).
package console

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"ldtlab/internal/lines"
	"ldtlab/internal/termsafe"
)

const tailBytes = 256 << 10

// Capture is an io.Writer fed by the VM backend.
type Capture struct {
	mu        sync.Mutex
	file      *os.File
	path      string
	tail      []byte
	partial   []byte
	cutting   bool // dropping the rest of a line longer than maxLine
	subs      map[int]*sub
	taps      []io.Writer
	nextID    int
	mirror    *asyncWriter
	mirrorEsc *termsafe.Writer
	size      int64 // bytes in the current file
	maxSize   int64 // rotate past this size (0: never)
	lines     int64 // complete lines written
	lastOut   time.Time
	closed    bool
	closedCh  chan struct{}
	// werr is the first failed write to the file (a full disk); what
	// could not be written is kept in unwritten (its last bytes), so
	// Bytes and report detection still see it.
	werr      error
	unwritten []byte
}

// maxUnwritten bounds what a failing capture file keeps in memory.
const maxUnwritten = 8 << 20

type sub struct {
	mu     sync.Mutex
	queue  []string
	signal chan struct{}
	done   bool
}

// New creates the capture file at path (truncating it). mirror, if not nil,
// receives a copy of every byte (a terminal, a test log), control
// characters escaped (internal/termsafe).
func New(path string, mirror io.Writer) (*Capture, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, err
	}
	c := &Capture{file: f, path: path, subs: map[int]*sub{}, closedCh: make(chan struct{})}
	if mirror != nil {
		// The mirror is a terminal (or a test log): the guest's escape
		// sequences are shown escaped there, raw in the file only.
		c.mirrorEsc = termsafe.NewWriter(mirror)
		c.mirror = newAsyncWriter(c.mirrorEsc, mirrorBuffer)
	}
	return c, nil
}

// Path is the capture file.
func (c *Capture) Path() string { return c.path }

// Write records console output.
func (c *Capture) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return len(p), nil
	}
	if c.werr != nil {
		c.keepUnwritten(p)
	} else if n, err := c.file.Write(p); err == nil {
		c.size += int64(n)
		if c.maxSize > 0 && c.size > c.maxSize {
			c.rotate()
		}
	} else {
		if errors.Is(err, syscall.ENOSPC) {
			err = fmt.Errorf("no space left on %s: console output from here on is kept in memory only", c.path)
		} else {
			err = fmt.Errorf("writing the console log %s: %w", c.path, err)
		}
		c.werr = err
		c.keepUnwritten(p[n:])
	}
	if c.mirror != nil {
		// Never blocks: a slow terminal must not stall the guest.
		c.mirror.Write(p)
	}
	c.tail = append(c.tail, p...)
	if len(c.tail) > tailBytes {
		c.tail = append([]byte(nil), c.tail[len(c.tail)-tailBytes/2:]...)
	}
	c.lastOut = time.Now()
	for _, w := range c.taps {
		w.Write(p)
	}
	c.split(p)
	return len(p), nil
}

// Tap hands w every byte written from now on, in order, as part of Write
// (no goroutine, no queue: when Write returns, w has the bytes). w must
// be quick and never block; the kernel-report stream is one. At Close, a
// w that is an io.Closer is closed.
func (c *Capture) Tap(w io.Writer) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.taps = append(c.taps, w)
}

// split cuts the new bytes into lines for the subscribers. Only the new
// bytes are scanned, and a line is held up to maxLine bytes: a longer
// one is delivered cut, with a note, and the rest of it up to its
// newline is dropped (the file and the tail keep it all). A guest that
// prints without newlines costs neither memory nor time.
func (c *Capture) split(p []byte) {
	for len(p) > 0 {
		seg, rest, ended := bytes.Cut(p, []byte{'\n'})
		p = rest
		if c.cutting {
			c.cutting = !ended
			continue
		}
		if room := maxLine - len(c.partial); len(seg) > room {
			c.partial = append(c.partial, seg[:room]...)
			c.deliver(string(c.partial) + fmt.Sprintf(cutNote, maxLine>>10))
			c.partial = c.partial[:0]
			c.cutting = !ended
			continue
		}
		c.partial = append(c.partial, seg...)
		if ended {
			c.deliver(strings.TrimRight(string(c.partial), "\r"))
			c.partial = c.partial[:0]
		}
	}
}

// maxLine bounds a console line as the subscribers see it; the kernel's
// own lines are at most 1 KiB.
const maxLine = 64 << 10

const cutNote = " [ldtlab: console line cut at %d KiB]"

func (c *Capture) deliver(line string) {
	c.lines++
	for _, s := range c.subs {
		s.push(line)
	}
}

func (s *sub) push(line string) {
	s.mu.Lock()
	s.queue = append(s.queue, line)
	s.mu.Unlock()
	select {
	case s.signal <- struct{}{}:
	default:
	}
}

// Subscribe delivers every complete line written from now on, in order,
// without ever blocking the writer (the queue grows instead). The channel
// closes when the capture closes or cancel is called.
func (c *Capture) Subscribe() (<-chan string, func()) {
	s := &sub{signal: make(chan struct{}, 1)}
	out := make(chan string)
	c.mu.Lock()
	id := c.nextID
	c.nextID++
	if !c.closed {
		c.subs[id] = s
	}
	closed := c.closed
	c.mu.Unlock()
	stop := make(chan struct{})
	var once sync.Once
	cancel := func() {
		once.Do(func() {
			c.mu.Lock()
			delete(c.subs, id)
			c.mu.Unlock()
			close(stop)
		})
	}
	go func() {
		defer close(out)
		if closed {
			return
		}
		for {
			s.mu.Lock()
			q := s.queue
			s.queue = nil
			s.mu.Unlock()
			for _, l := range q {
				select {
				case out <- l:
				case <-stop:
					return
				}
			}
			if len(q) > 0 {
				continue
			}
			select {
			case <-s.signal:
			case <-stop:
				return
			case <-c.closedCh:
				s.mu.Lock()
				empty := len(s.queue) == 0
				s.mu.Unlock()
				if empty {
					return
				}
			}
		}
	}()
	return out, cancel
}

// WaitFor blocks until a line containing substr appears (after the call),
// ctx ends, or the capture closes.
func (c *Capture) WaitFor(ctx context.Context, substr string) error {
	lines, cancel := c.Subscribe()
	defer cancel()
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				return io.EOF
			}
			if strings.Contains(l, substr) {
				return nil
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Tail returns the last n lines seen (n <= 0: all of the bounded tail).
func (c *Capture) Tail(n int) string {
	c.mu.Lock()
	t := string(c.tail)
	c.mu.Unlock()
	if n <= 0 {
		n = -1
	}
	return lines.Last(strings.ReplaceAll(t, "\r", ""), n)
}

// Bytes returns the whole console log so far, read back from the file.
func (c *Capture) Bytes() []byte {
	c.mu.Lock()
	c.file.Sync()
	extra := append([]byte(nil), c.unwritten...)
	c.mu.Unlock()
	b, _ := os.ReadFile(c.path)
	return append(b, extra...)
}

func (c *Capture) keepUnwritten(p []byte) {
	c.unwritten = append(c.unwritten, p...)
	if len(c.unwritten) > maxUnwritten {
		c.unwritten = append([]byte(nil), c.unwritten[len(c.unwritten)-maxUnwritten/2:]...)
	}
}

// Rotate bounds the capture file: past max bytes it is renamed to
// path.1 (replacing the previous one) and a new file begins, so a guest
// that runs for hours keeps at most about 2×max bytes of console on disk.
// Crash detection is not affected (it reads the live stream).
func (c *Capture) Rotate(max int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.maxSize = max
}

func (c *Capture) rotate() {
	old := c.path + ".1"
	if err := os.Rename(c.path, old); err != nil {
		return // keep writing where we are
	}
	f, err := os.OpenFile(c.path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		// Put it back: a full file beats none.
		os.Rename(old, c.path)
		return
	}
	c.file.Close()
	c.file, c.size = f, 0
}

// Lines is how many complete lines were written so far.
func (c *Capture) Lines() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lines
}

// Err is the first failed write to the capture file, or nil.
func (c *Capture) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.werr
}

// LastOutput is when the guest last printed anything.
func (c *Capture) LastOutput() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastOut
}

// Close flushes the file and ends all subscriptions.
func (c *Capture) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	if len(c.partial) > 0 {
		line := strings.TrimRight(string(c.partial), "\r")
		for _, s := range c.subs {
			s.push(line)
		}
	}
	close(c.closedCh)
	for _, w := range c.taps {
		if cl, ok := w.(io.Closer); ok {
			cl.Close()
		}
	}
	if c.mirror != nil {
		c.mirror.Close()
		c.mirrorEsc.Flush()
	}
	return c.file.Close()
}
