// Package agent is the guest side of the lab's guest channel: the line-based
// handshake on the virtio-serial port, the yamux server on top of it, and an
// SSH server (exec, shell, pty, sftp, signals) on every yamux stream.
//
// Everything here works on plain io.ReadWriteCloser / net.Conn values so that
// host tests can drive the real server over a socket pair.
package agent

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"
)

// Handshake lines, see docs/design.md "Guest channel".
const (
	ReadyLine = "LDTLAB-AGENT/1 READY\n"
	AckLine   = "LDTLAB-HOST/1 ACK\n"
	StartLine = "LDTLAB-AGENT/1 START\n"
)

// ReadyInterval is how often READY is repeated until the host answers.
const ReadyInterval = 200 * time.Millisecond

// maxLine bounds the memory spent on garbage (e.g. yamux frames left over from
// a previous host session) while looking for a handshake line.
const maxLine = 4096

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
			if _, err := io.WriteString(rw, ReadyLine); err != nil {
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

	br := bufio.NewReaderSize(rw, maxLine)
	err := WaitLine(br, AckLine)
	if err != nil {
		rw.Close() // unblocks the READY writer
	}
	close(stop)
	werr := <-writeErr
	if err == nil && werr != nil {
		err = fmt.Errorf("writing READY: %w", werr)
	}
	if err == nil {
		if _, err = io.WriteString(rw, StartLine); err != nil {
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
	return &bufferedRWC{r: br, rw: rw}, nil
}

// WaitLine reads lines from br until one ends with want (which ends in
// "\n"); anything before it on the line, and earlier lines, are discarded.
// Suffix matching tolerates junk glued to the front of the line.
func WaitLine(br *bufio.Reader, want string) error {
	wantB := bytes.TrimRight([]byte(want), "\n")
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			// Over-long garbage: keep only a tail that may still hold the line.
			line = append(line, chunk...)
			if len(line) > len(wantB) {
				line = append(line[:0], line[len(line)-len(wantB):]...)
			}
			continue
		case err != nil:
			return fmt.Errorf("waiting for %q: %w", bytes.TrimSpace(wantB), err)
		}
		line = append(line, chunk...)
		if bytes.HasSuffix(bytes.TrimRight(line, "\r\n"), wantB) {
			return nil
		}
		line = line[:0]
	}
}

// bufferedRWC reads through the handshake's buffer so that no byte the peer
// sent right after its handshake line is lost.
type bufferedRWC struct {
	r  *bufio.Reader
	rw io.ReadWriteCloser
}

func (b *bufferedRWC) Read(p []byte) (int, error)  { return b.r.Read(p) }
func (b *bufferedRWC) Write(p []byte) (int, error) { return b.rw.Write(p) }
func (b *bufferedRWC) Close() error                { return b.rw.Close() }
