// Package agent is the guest side of the lab's guest channel: the line-based
// handshake on the virtio-serial port, the yamux server on top of it, and an
// SSH server (exec, shell, pty, sftp, signals) on every yamux stream.
//
// Everything here works on plain io.ReadWriteCloser / net.Conn values so that
// host tests can drive the real server over a socket pair.
package agent

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"time"

	"ldtlab/guest/agent/wire"
)

// ReadyInterval is how often READY is repeated until the host answers.
const ReadyInterval = 200 * time.Millisecond

// Handshake runs the agent side of the handshake on rw: READY every
// ReadyInterval until an ACK line arrives, then START. It returns the stream
// to run yamux on (bytes already buffered are kept). On failure rw is closed;
// ctx cancellation also closes rw, which is what unblocks a pending read.
func Handshake(ctx context.Context, rw io.ReadWriteCloser) (io.ReadWriteCloser, error) {
	stopCtx := context.AfterFunc(ctx, func() { rw.Close() })
	defer stopCtx()

	stop := make(chan struct{})
	writeErr := make(chan error, 1)
	go func() {
		t := time.NewTicker(ReadyInterval)
		defer t.Stop()
		for {
			if _, err := io.WriteString(rw, wire.ReadyLine); err != nil {
				writeErr <- err
				return
			}
			select {
			case <-stop:
				writeErr <- nil
				return
			case <-t.C:
			}
		}
	}()

	br := bufio.NewReaderSize(rw, wire.MaxLine)
	err := wire.WaitLine(br, wire.AckLine)
	if err != nil {
		rw.Close() // unblocks the READY writer
	}
	close(stop)
	werr := <-writeErr
	if err == nil && werr != nil {
		err = fmt.Errorf("writing READY: %w", werr)
	}
	if err == nil {
		if _, err = io.WriteString(rw, wire.StartLine); err != nil {
			err = fmt.Errorf("writing START: %w", err)
		}
	}
	if err != nil {
		rw.Close()
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
		return nil, fmt.Errorf("guest channel handshake: %w", err)
	}
	return &wire.Buffered{R: br, RW: rw}, nil
}
