// Package channel is the host side of the guest channel (docs/design.md,
// "Guest channel"): the handshake on the virtio-serial socket, the yamux
// client session over it, the per-VM SSH keys, and an SSH client with the
// operations the lab needs (run, shell, file transfer, liveness).
package channel

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"

	"github.com/hashicorp/yamux"

	"ldtlab/guest/agent/wire"
)

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
	br := bufio.NewReaderSize(rw, wire.MaxLine)
	err := wire.WaitLine(br, wire.ReadyLine)
	if err == nil {
		if _, err = io.WriteString(rw, wire.AckLine); err != nil {
			err = fmt.Errorf("writing ACK: %w", err)
		}
	}
	if err == nil {
		err = wire.WaitLine(br, wire.StartLine)
	}
	if !stop() {
		// ctx fired: rw is closed, whatever the reads said.
		err = ctx.Err()
	}
	if err != nil {
		rw.Close()
		return nil, fmt.Errorf("guest channel handshake: %w", err)
	}
	sess, err := yamux.Client(&wire.Buffered{R: br, RW: rw}, wire.YamuxConfig())
	if err != nil {
		rw.Close()
		return nil, fmt.Errorf("guest channel yamux client: %w", err)
	}
	return &Mux{sess: sess}, nil
}

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

// Pipe joins c to a new stream until either side ends.
func (m *Mux) Pipe(c net.Conn) { m.pipe(c) }

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
