package console

import (
	"fmt"
	"io"
	"sync"
)

// mirrorBuffer bounds what a slow mirror may fall behind by.
const mirrorBuffer = 1 << 20

// asyncWriter copies to w from its own goroutine. Write never blocks:
// when w falls more than max bytes behind, what does not fit is dropped
// and a note says how much.
type asyncWriter struct {
	w       io.Writer
	max     int
	mu      sync.Mutex
	buf     []byte
	dropped int
	wake    chan struct{}
	closed  bool
	done    chan struct{}
}

func newAsyncWriter(w io.Writer, max int) *asyncWriter {
	a := &asyncWriter{w: w, max: max, wake: make(chan struct{}, 1), done: make(chan struct{})}
	go a.run()
	return a
}

func (a *asyncWriter) Write(p []byte) (int, error) {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return len(p), nil
	}
	if room := a.max - len(a.buf); len(p) > room {
		a.dropped += len(p) - max(room, 0)
		p = p[:max(room, 0)]
	}
	a.buf = append(a.buf, p...)
	a.mu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
	return len(p), nil
}

func (a *asyncWriter) run() {
	defer close(a.done)
	for {
		a.mu.Lock()
		b, dropped, closed := a.buf, a.dropped, a.closed
		a.buf, a.dropped = nil, 0
		a.mu.Unlock()
		if len(b) > 0 {
			a.w.Write(b)
		}
		if dropped > 0 {
			fmt.Fprintf(a.w, "\n[ldtlab: the console mirror fell behind; %d bytes not shown here (the console log has them)]\n", dropped)
		}
		if closed && len(b) == 0 && dropped == 0 {
			return
		}
		if len(b) == 0 && dropped == 0 {
			<-a.wake
		}
	}
}

// Close flushes what is buffered and stops the goroutine.
func (a *asyncWriter) Close() {
	a.mu.Lock()
	a.closed = true
	a.mu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
	<-a.done
}
