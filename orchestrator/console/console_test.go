package console

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func newCapture(t *testing.T, mirror io.Writer) *Capture {
	t.Helper()
	c, err := New(filepath.Join(t.TempDir(), "console.log"), mirror)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

func write(t *testing.T, c *Capture, s string) {
	t.Helper()
	n, err := c.Write([]byte(s))
	require.NoError(t, err)
	require.Equal(t, len(s), n)
}

// collect reads lines until the channel closes or timeout.
func collect(t *testing.T, ch <-chan string, timeout time.Duration) []string {
	t.Helper()
	var got []string
	deadline := time.After(timeout)
	for {
		select {
		case l, ok := <-ch:
			if !ok {
				return got
			}
			got = append(got, l)
		case <-deadline:
			t.Fatalf("subscriber channel did not close within %s; got %d lines", timeout, len(got))
		}
	}
}

// waitSubscribers waits until n subscriptions are registered.
func waitSubscribers(t *testing.T, c *Capture, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c.mu.Lock()
		have := len(c.subs)
		c.mu.Unlock()
		if have >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d subscribers after 5s, want %d", have, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// waitSubscribers0 waits until every subscription is gone (WaitFor
// cancels its own).
func waitSubscribers0(t *testing.T, c *Capture) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c.mu.Lock()
		have := len(c.subs)
		c.mu.Unlock()
		if have == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d subscribers left behind", have)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestNewTruncatesAndPath(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	require.NoError(t, os.WriteFile(path, []byte("old run\n"), 0o644))
	c, err := New(path, nil)
	require.NoError(t, err)
	defer c.Close()
	assert.Equal(t, path, c.Path())
	assert.Empty(t, c.Bytes())

	_, err = New(filepath.Join(t.TempDir(), "no", "dir", "console.log"), nil)
	assert.Error(t, err)
}

func TestTail(t *testing.T) {
	cases := []struct {
		name   string
		writes []string
		n      int
		want   string
	}{
		{"empty", nil, 5, ""},
		{"last n", []string{"a\nb\nc\nd\n"}, 2, "c\nd"},
		{"all when n<=0", []string{"a\nb\n"}, 0, "a\nb"},
		{"fewer than n", []string{"a\n"}, 10, "a"},
		{"crlf stripped", []string{"a\r\nb\r\n"}, 5, "a\nb"},
		{"partial last line included", []string{"a\nb\npar", "tial"}, 2, "b\npartial"},
		{"line split across writes", []string{"hel", "lo\nwor", "ld\n"}, 5, "hello\nworld"},
		{"cr split from lf", []string{"a\r", "\nb\r\n"}, 5, "a\nb"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cp := newCapture(t, nil)
			for _, w := range c.writes {
				write(t, cp, w)
			}
			assert.Equal(t, c.want, cp.Tail(c.n))
		})
	}
}

func TestTailBounded(t *testing.T) {
	c := newCapture(t, nil)
	line := strings.Repeat("x", 1023) + "\n"
	for i := 0; i < 600; i++ { // 600 KiB > tailBytes
		write(t, c, fmt.Sprintf("%05d", i)+line[5:])
	}
	all := c.Tail(0)
	assert.LessOrEqual(t, len(all), tailBytes)
	assert.True(t, strings.HasPrefix(c.Tail(1), "00599"), "the newest line is kept")
	assert.Len(t, c.Bytes(), 600*1024, "the file keeps everything")
}

func TestWriteMirrorAndBytes(t *testing.T) {
	var mirror bytes.Buffer
	c := newCapture(t, &mirror)
	write(t, c, "one\r\n")
	write(t, c, "two\npart")
	assert.Equal(t, "one\r\ntwo\npart", string(c.Bytes()), "the file has the raw bytes")
	assert.EqualValues(t, 2, c.Lines())
	require.NoError(t, c.Close())
	assert.Equal(t, "one\r\ntwo\npart", mirror.String(), "Close flushes the mirror")
	assert.Equal(t, "one\r\ntwo\npart", string(c.Bytes()), "still readable after Close")
	// Writes after Close are accepted and dropped.
	n, err := c.Write([]byte("late\n"))
	assert.NoError(t, err)
	assert.Equal(t, 5, n)
	assert.Equal(t, "one\r\ntwo\npart", string(c.Bytes()))
	assert.NotContains(t, mirror.String(), "late")
}

func TestLastOutput(t *testing.T) {
	c := newCapture(t, nil)
	assert.True(t, c.LastOutput().IsZero())
	before := time.Now()
	write(t, c, "x")
	first := c.LastOutput()
	assert.False(t, first.Before(before))
	time.Sleep(2 * time.Millisecond)
	write(t, c, "y")
	assert.True(t, c.LastOutput().After(first))
}

func TestSubscribeLines(t *testing.T) {
	c := newCapture(t, nil)
	write(t, c, "before subscribe\n")
	write(t, c, "half of a ")
	lines, cancel := c.Subscribe()
	defer cancel()
	write(t, c, "line\r\nsecond\n\nthird")
	write(t, c, " line\n")
	write(t, c, "unterminated")
	require.NoError(t, c.Close())
	got := collect(t, lines, 5*time.Second)
	// The partial line written before Subscribe completes after it and is
	// delivered whole; the unterminated tail is flushed by Close.
	assert.Equal(t, []string{"half of a line", "second", "", "third line", "unterminated"}, got)
}

func TestSubscribeManyWritesSlowSubscriber(t *testing.T) {
	c := newCapture(t, nil)
	fast, cancelFast := c.Subscribe()
	defer cancelFast()
	slow, cancelSlow := c.Subscribe()
	defer cancelSlow()

	const n = 20000
	var want []string
	for i := range n {
		want = append(want, fmt.Sprintf("line %d", i))
	}
	// The writer must not block on subscribers that read nothing yet.
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		for i, l := range want {
			// Mix partial and multi-line writes.
			if i%3 == 0 {
				c.Write([]byte(l[:2]))
				c.Write([]byte(l[2:] + "\n"))
			} else {
				c.Write([]byte(l + "\r\n"))
			}
		}
	}()
	select {
	case <-wrote:
	case <-time.After(10 * time.Second):
		t.Fatal("writer blocked by subscribers that do not read")
	}
	require.NoError(t, c.Close())

	var wg sync.WaitGroup
	var gotFast, gotSlow []string
	wg.Add(2)
	go func() { defer wg.Done(); gotFast = collect(t, fast, 10*time.Second) }()
	go func() {
		defer wg.Done()
		for l := range slow {
			if len(gotSlow)%5000 == 0 {
				time.Sleep(time.Millisecond)
			}
			gotSlow = append(gotSlow, l)
		}
	}()
	wg.Wait()
	assert.Equal(t, want, gotFast)
	assert.Equal(t, want, gotSlow)
}

func TestSubscribeConcurrentWithWrites(t *testing.T) {
	c := newCapture(t, nil)
	lines, cancel := c.Subscribe()
	defer cancel()
	const n = 5000
	done := make(chan []string)
	go func() {
		var got []string
		for l := range lines {
			got = append(got, l)
		}
		done <- got
	}()
	for i := range n {
		fmt.Fprintf(c, "%d\n", i)
	}
	require.NoError(t, c.Close())
	select {
	case got := <-done:
		require.Len(t, got, n)
		for i, l := range got {
			if l != fmt.Sprint(i) {
				t.Fatalf("line %d is %q: order lost", i, l)
			}
		}
	case <-time.After(10 * time.Second):
		t.Fatal("subscriber did not finish")
	}
}

func TestSubscribeCancel(t *testing.T) {
	c := newCapture(t, nil)
	lines, cancel := c.Subscribe()
	write(t, c, "a\nb\n") // never read
	cancel()
	cancel() // idempotent
	collect(t, lines, 5*time.Second)
	// The writer keeps working after a subscriber left.
	write(t, c, "c\n")
	c.mu.Lock()
	assert.Empty(t, c.subs)
	c.mu.Unlock()
}

func TestSubscribeAfterClose(t *testing.T) {
	c := newCapture(t, nil)
	require.NoError(t, c.Close())
	require.NoError(t, c.Close(), "Close is idempotent")
	lines, cancel := c.Subscribe()
	defer cancel()
	assert.Empty(t, collect(t, lines, 5*time.Second))
}

func TestSubscriberClosesOnClose(t *testing.T) {
	c := newCapture(t, nil)
	lines, cancel := c.Subscribe()
	defer cancel()
	write(t, c, "x\n")
	assert.Equal(t, "x", <-lines)
	require.NoError(t, c.Close())
	select {
	case _, ok := <-lines:
		assert.False(t, ok, "no more lines after Close")
	case <-time.After(5 * time.Second):
		t.Fatal("subscriber channel not closed by Close")
	}
}

func TestWaitFor(t *testing.T) {
	t.Run("success", func(t *testing.T) {
		c := newCapture(t, nil)
		errc := make(chan error, 1)
		go func() { errc <- c.WaitFor(context.Background(), "login:") }()
		waitSubscribers(t, c, 1)
		write(t, c, "booting\nwelcome, log")
		write(t, c, "in: \n")
		select {
		case err := <-errc:
			assert.NoError(t, err)
		case <-time.After(5 * time.Second):
			t.Fatal("WaitFor did not return")
		}
		waitSubscribers0(t, c)
	})
	t.Run("ctx timeout", func(t *testing.T) {
		c := newCapture(t, nil)
		write(t, c, "needle\n") // before the call: not seen
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		err := c.WaitFor(ctx, "needle")
		assert.ErrorIs(t, err, context.DeadlineExceeded)
	})
	t.Run("EOF after Close", func(t *testing.T) {
		c := newCapture(t, nil)
		errc := make(chan error, 1)
		go func() { errc <- c.WaitFor(context.Background(), "never") }()
		waitSubscribers(t, c, 1)
		write(t, c, "something else\n")
		require.NoError(t, c.Close())
		select {
		case err := <-errc:
			assert.True(t, errors.Is(err, io.EOF), "got %v", err)
		case <-time.After(5 * time.Second):
			t.Fatal("WaitFor did not return after Close")
		}
	})
	t.Run("already closed", func(t *testing.T) {
		c := newCapture(t, nil)
		require.NoError(t, c.Close())
		assert.ErrorIs(t, c.WaitFor(context.Background(), "x"), io.EOF)
	})
	t.Run("partial line completed by Close", func(t *testing.T) {
		c := newCapture(t, nil)
		errc := make(chan error, 1)
		go func() { errc <- c.WaitFor(context.Background(), "Kernel panic") }()
		waitSubscribers(t, c, 1)
		// An unterminated last line is flushed to subscribers at Close.
		write(t, c, "Kernel panic - not syncing")
		require.NoError(t, c.Close())
		select {
		case err := <-errc:
			assert.NoError(t, err)
		case <-time.After(5 * time.Second):
			t.Fatal("WaitFor did not return")
		}
	})
}

// A capture file that cannot be written (a full disk) keeps the output in
// memory, says where, and Bytes still returns everything.
func TestWriteErrorKept(t *testing.T) {
	c, err := New(filepath.Join(t.TempDir(), "console.log"), nil)
	require.NoError(t, err)
	c.Write([]byte("first line\n"))
	c.file.Close() // every later write fails
	c.Write([]byte("BUG: after the failure\n"))
	require.Error(t, c.Err())
	assert.Contains(t, c.Err().Error(), "console.log")
	assert.Equal(t, "first line\nBUG: after the failure\n", string(c.Bytes()))
}

// blockingWriter blocks every Write until released.
type blockingWriter struct {
	release chan struct{}
	got     bytes.Buffer
}

func (b *blockingWriter) Write(p []byte) (int, error) {
	<-b.release
	return b.got.Write(p)
}

// A terminal that does not read must not stall the guest: writes go on,
// the mirror drops what does not fit and says so.
func TestSlowMirrorNeverBlocks(t *testing.T) {
	bw := &blockingWriter{release: make(chan struct{})}
	c := newCapture(t, bw)
	chunk := strings.Repeat("y", 63) + "\n"
	done := make(chan struct{})
	go func() {
		for i := 0; i < 2*mirrorBuffer/len(chunk); i++ {
			c.Write([]byte(chunk))
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		close(bw.release) // else Close waits for the mirror forever
		t.Fatal("console writes blocked on a slow mirror")
	}
	assert.Len(t, c.Bytes(), 2*mirrorBuffer/len(chunk)*len(chunk), "the log keeps everything")
	close(bw.release)
	require.NoError(t, c.Close())
	assert.Contains(t, bw.got.String(), "console mirror fell behind")
}

// A console that rotates keeps at most the current file and one old one.
func TestRotateBoundsTheFile(t *testing.T) {
	c := newCapture(t, nil)
	c.Rotate(10 << 10)
	line := strings.Repeat("z", 99) + "\n"
	for i := 0; i < 1000; i++ { // 100 KiB
		write(t, c, line)
	}
	cur, err := os.Stat(c.Path())
	require.NoError(t, err)
	old, err := os.Stat(c.Path() + ".1")
	require.NoError(t, err)
	assert.LessOrEqual(t, cur.Size(), int64(10<<10)+100)
	assert.LessOrEqual(t, old.Size(), int64(10<<10)+100)
	assert.EqualValues(t, 1000, c.Lines(), "every line still reached the subscribers' count")
	assert.Equal(t, strings.TrimSuffix(line, "\n"), c.Tail(1))
}
