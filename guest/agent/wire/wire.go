// Package wire is the guest channel's wire format, shared by both ends
// (guest/agent and orchestrator/channel): the handshake lines, the line
// scanner that finds them among leftovers of an earlier session, and the
// yamux configuration. See docs/design.md, "Guest channel".
package wire

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/hashicorp/yamux"
)

// Handshake lines.
const (
	ReadyLine = "LDTLAB-AGENT/1 READY\n"
	AckLine   = "LDTLAB-HOST/1 ACK\n"
	StartLine = "LDTLAB-AGENT/1 START\n"
)

// MaxLine bounds the memory spent on garbage (e.g. yamux frames left over
// from a previous host session) while looking for a handshake line.
const MaxLine = 4096

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

// Buffered reads through the handshake's buffer so that no byte the peer
// sent right after its handshake line is lost.
type Buffered struct {
	R  *bufio.Reader
	RW io.ReadWriteCloser
}

func (b *Buffered) Read(p []byte) (int, error)  { return b.R.Read(p) }
func (b *Buffered) Write(p []byte) (int, error) { return b.RW.Write(p) }
func (b *Buffered) Close() error                { return b.RW.Close() }

// YamuxConfig is the yamux configuration of the guest channel. The timeouts
// are generous because a TCG guest under a stress test can be very slow to
// answer a keepalive; a spurious session loss would kill running commands.
func YamuxConfig() *yamux.Config {
	c := yamux.DefaultConfig()
	c.KeepAliveInterval = 30 * time.Second
	c.ConnectionWriteTimeout = 60 * time.Second
	c.StreamOpenTimeout = 60 * time.Second
	c.MaxStreamWindowSize = 1 << 20
	c.LogOutput = io.Discard
	return c
}
