// Package channel is the host side of the guest channel (docs/design.md,
// "Guest channel"): the handshake on the virtio-serial socket, the yamux
// client session over it, the per-VM SSH keys, and an SSH client with the
// operations the lab needs (run, shell, file transfer, liveness).
package channel

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

// Handshake lines; they must match guest/agent.
const (
	ReadyLine = "LDTLAB-AGENT/1 READY\n"
	AckLine   = "LDTLAB-HOST/1 ACK\n"
	StartLine = "LDTLAB-AGENT/1 START\n"
)

// maxLine bounds what is buffered while looking for a handshake line (the
// port may still hold yamux frames of an earlier host session).
const maxLine = 4096

// ErrClosed is returned by Mux operations once the session is gone.
var ErrClosed = errors.New("guest channel closed")

// Mux is the yamux client session over the guest channel. Every stream is
// one SSH connection to the agent.
type Mux struct {
	sess *yamux.Session
}

// Handshake runs the host side of the handshake on rw (wait for READY, write
// ACK once, discard everything through START) and starts a yamux client
// session on it. ctx bounds the whole handshake. Handshake owns rw: it is
// closed on failure, and by Mux.Close afterwards.
func Handshake(ctx context.Context, rw io.ReadWriteCloser) (*Mux, error) {
	stop := context.AfterFunc(ctx, func() { rw.Close() }) // unblocks the reads
	br := bufio.NewReaderSize(rw, maxLine)
	err := waitLine(br, ReadyLine)
	if err == nil {
		if _, err = io.WriteString(rw, AckLine); err != nil {
			err = fmt.Errorf("writing ACK: %w", err)
		}
	}
	if err == nil {
		err = waitLine(br, StartLine)
	}
	if !stop() {
		// ctx fired: rw is closed, whatever the reads said.
		err = ctx.Err()
	}
	if err != nil {
		rw.Close()
		return nil, fmt.Errorf("guest channel handshake: %w", err)
	}
	sess, err := yamux.Client(&bufferedRWC{r: br, rw: rw}, yamuxConfig())
	if err != nil {
		rw.Close()
		return nil, fmt.Errorf("guest channel yamux client: %w", err)
	}
	return &Mux{sess: sess}, nil
}

// yamuxConfig mirrors guest/agent.YamuxConfig: generous timeouts because a
// TCG guest under stress answers slowly, and a lost session kills commands.
func yamuxConfig() *yamux.Config {
	c := yamux.DefaultConfig()
	c.KeepAliveInterval = 30 * time.Second
	c.ConnectionWriteTimeout = 60 * time.Second
	c.StreamOpenTimeout = 60 * time.Second
	c.MaxStreamWindowSize = 1 << 20
	c.LogOutput = io.Discard
	return c
}

// waitLine reads until a line ending with want; junk before it is dropped.
func waitLine(br *bufio.Reader, want string) error {
	wantB := bytes.TrimRight([]byte(want), "\n")
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			line = append(line, chunk...)
			if len(line) > len(wantB) {
				line = append(line[:0], line[len(line)-len(wantB):]...)
			}
			continue
		case err != nil:
			return fmt.Errorf("waiting for %q: %w", wantB, err)
		}
		line = append(line, chunk...)
		if bytes.HasSuffix(bytes.TrimRight(line, "\r\n"), wantB) {
			return nil
		}
		line = line[:0]
	}
}

// bufferedRWC keeps bytes read past the START line for yamux.
type bufferedRWC struct {
	r  *bufio.Reader
	rw io.ReadWriteCloser
}

func (b *bufferedRWC) Read(p []byte) (int, error)  { return b.r.Read(p) }
func (b *bufferedRWC) Write(p []byte) (int, error) { return b.rw.Write(p) }
func (b *bufferedRWC) Close() error                { return b.rw.Close() }

// Open opens a new stream: one fresh SSH connection to the agent.
func (m *Mux) Open(ctx context.Context) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := m.sess.Open()
		ch <- result{c, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			if m.sess.IsClosed() {
				return nil, fmt.Errorf("opening guest channel stream: %w", ErrClosed)
			}
			return nil, fmt.Errorf("opening guest channel stream: %w", r.err)
		}
		return r.c, nil
	case <-ctx.Done():
		go func() {
			// Do not leak a stream that opens after we gave up.
			if r := <-ch; r.c != nil {
				r.c.Close()
			}
		}()
		return nil, fmt.Errorf("opening guest channel stream: %w", ctx.Err())
	}
}

// Serve accepts connections on l and pipes each into a new stream, until l
// fails or the session dies (then l is closed). It is what lets OpenSSH in
// through `labctl proxy`.
func (m *Mux) Serve(l net.Listener) error {
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-m.Done():
			l.Close()
		case <-stop:
		}
	}()
	for {
		c, err := l.Accept()
		if err != nil {
			if m.sess.IsClosed() {
				return ErrClosed
			}
			return fmt.Errorf("guest channel listener: %w", err)
		}
		go m.pipe(c)
	}
}

func (m *Mux) pipe(c net.Conn) {
	defer c.Close()
	s, err := m.sess.Open()
	if err != nil {
		return
	}
	defer s.Close()
	var wg sync.WaitGroup
	wg.Add(2)
	copyHalf := func(dst, src net.Conn) {
		defer wg.Done()
		if _, err := io.Copy(dst, src); err != nil {
			// A broken side (reset stream, dead session) ends both ways;
			// otherwise the other copy could wait forever.
			c.Close()
			s.Close()
			return
		}
		closeWrite(dst)
	}
	go copyHalf(s, c)
	go copyHalf(c, s)
	wg.Wait()
}

// closeWrite half-closes where possible so EOF travels in each direction
// independently. A yamux stream's Close is already a half close (FIN).
func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		return
	}
	_ = c.Close()
}

// Close ends the session and closes the underlying port.
func (m *Mux) Close() error { return m.sess.Close() }

// Done is closed when the session dies (closed, host or guest side failure).
func (m *Mux) Done() <-chan struct{} { return m.sess.CloseChan() }
