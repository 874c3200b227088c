package libvirt

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"sync"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket"
	"github.com/digitalocean/go-libvirt/socket/dialers"
)

// Why a stream of our own: go-libvirt generates DomainOpenChannel (and
// DomainOpenConsole) as receive-only calls that block until the stream
// ends, and only the console has a bidirectional variant. The guest
// channel must be written to, and the console must be known to be open
// before the paused guest is resumed (or its first lines are lost). So a
// stream is its own connection, on go-libvirt's socket layer (framing,
// dialers), speaking the few remote-protocol calls it needs: auth-list,
// connect-open, and the stream-opening call; then data packets both ways.

// Remote protocol numbers (libvirt's remote_protocol.x; go-libvirt keeps
// them in an internal package).
const (
	remoteProgram         = 0x20008086
	procConnectOpen       = 1
	procAuthList          = 66
	procDomainOpenConsole = 201
	procDomainOpenChannel = 296
	// virDomainOpenChannel/virDomainOpenConsole flag: take the device over
	// from an earlier stream (Control may reconnect).
	flagForce = 1
	// streamChunk bounds one data packet; libvirt accepts up to 256 KiB
	// of stream payload per packet.
	streamChunk = 64 << 10
)

// dialerFor maps a libvirt URI to a dialer: unix socket, TCP (go-libvirt's
// dialers) or SSH (ssh.go), as libvirt's own client understands them.
func dialerFor(u *url.URL, timeout time.Duration) (socket.Dialer, error) {
	transport := "unix"
	if s := strings.SplitN(u.Scheme, "+", 2); len(s) == 2 {
		transport = s[1]
	} else if u.Host != "" {
		transport = "tls"
	}
	switch transport {
	case "unix":
		opts := []dialers.LocalOption{dialers.WithLocalTimeout(timeout)}
		if s := u.Query().Get("socket"); s != "" {
			opts = append(opts, dialers.WithSocket(s))
		}
		return dialers.NewLocal(opts...), nil
	case "tcp":
		opts := []dialers.RemoteOption{dialers.WithRemoteTimeout(timeout)}
		if p := u.Port(); p != "" {
			opts = append(opts, dialers.UsePort(p))
		}
		return dialers.NewRemote(u.Hostname(), opts...), nil
	case "ssh":
		return newSSHDialer(u, timeout)
	}
	return nil, fmt.Errorf("libvirt URI %s: transport %q is not supported by the lab (use qemu:///system, qemu+ssh://user@host/system or qemu+tcp://host/system)", u.Redacted(), transport)
}

// stream is one libvirt stream on its own connection.
type stream struct {
	sock   *socket.Socket
	proc   uint32
	serial int32

	mu      sync.Mutex
	replies map[int32]chan reply

	pr *io.PipeReader
	pw *io.PipeWriter

	wmu       sync.Mutex // one writer at a time; packets of a Write stay together
	closeOnce sync.Once
}

type reply struct {
	status  uint32
	payload []byte
}

// Route is called by go-libvirt's socket reader for every packet.
func (s *stream) Route(h *socket.Header, buf []byte) {
	if h.Program != remoteProgram {
		return // keepalive or events: not asked for, ignored
	}
	switch h.Type {
	case socket.Reply:
		s.mu.Lock()
		ch := s.replies[h.Serial]
		delete(s.replies, h.Serial)
		s.mu.Unlock()
		if ch != nil {
			ch <- reply{h.Status, buf}
		}
	case socket.Stream:
		if h.Serial != s.serial {
			return
		}
		switch h.Status {
		case socket.StatusContinue:
			if len(buf) > 0 {
				// Blocks while the reader is behind: back-pressure
				// reaches libvirtd through TCP.
				s.pw.Write(buf)
			}
		case socket.StatusOK:
			s.pw.Close()
		default:
			s.pw.CloseWithError(fmt.Errorf("libvirt stream aborted: %w", decodeError(buf)))
		}
	}
}

// call sends a remote-protocol call and waits for its reply.
func (s *stream) call(ctx context.Context, serial int32, proc uint32, args []byte) ([]byte, error) {
	ch := make(chan reply, 1)
	s.mu.Lock()
	s.replies[serial] = ch
	s.mu.Unlock()
	if err := s.sock.SendPacket(serial, proc, remoteProgram, args, socket.Call, socket.StatusOK); err != nil {
		return nil, err
	}
	select {
	case r := <-ch:
		if r.status != socket.StatusOK {
			return nil, decodeError(r.payload)
		}
		return r.payload, nil
	case <-s.sock.Disconnected():
		return nil, errors.New("libvirtd closed the connection")
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// openStream connects to uri and opens a stream with proc (console or
// channel) for dom's device dev. It returns once libvirtd has accepted
// the stream, so no data sent from then on is lost.
func openStream(ctx context.Context, u *url.URL, proc uint32, dom golibvirt.Domain, dev string) (*stream, error) {
	timeout := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	d, err := dialerFor(u, timeout)
	if err != nil {
		return nil, err
	}
	s := &stream{proc: proc, serial: 3, replies: map[int32]chan reply{}}
	s.pr, s.pw = io.Pipe()
	s.sock = socket.New(d, s)
	if err := s.sock.Connect(); err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", u.Redacted(), err)
	}
	ok := false
	defer func() {
		if !ok {
			s.sock.Disconnect()
		}
	}()
	// libvirtd wants auth-list before connect-open even without auth.
	if _, err := s.call(ctx, 1, procAuthList, nil); err != nil {
		return nil, fmt.Errorf("libvirt auth-list: %w", err)
	}
	var open xdrBuf
	open.optString(string(golibvirt.RemoteURI(u)))
	open.uint32(0)
	if _, err := s.call(ctx, 2, procConnectOpen, open.Bytes()); err != nil {
		return nil, fmt.Errorf("libvirt connect-open: %w", err)
	}
	var args xdrBuf
	args.string(dom.Name)
	args.fixed(dom.UUID[:])
	args.uint32(uint32(dom.ID))
	args.optString(dev)
	args.uint32(flagForce)
	if _, err := s.call(ctx, s.serial, proc, args.Bytes()); err != nil {
		return nil, fmt.Errorf("opening %s of %s: %w", dev, dom.Name, err)
	}
	ok = true
	go func() {
		<-s.sock.Disconnected()
		s.pw.CloseWithError(io.ErrUnexpectedEOF)
	}()
	return s, nil
}

func (s *stream) Read(p []byte) (int, error) { return s.pr.Read(p) }

func (s *stream) Write(p []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	n := 0
	for len(p) > 0 {
		c := min(len(p), streamChunk)
		if err := s.sock.SendPacket(s.serial, s.proc, remoteProgram, p[:c], socket.Stream, socket.StatusContinue); err != nil {
			return n, fmt.Errorf("writing to the libvirt stream: %w", err)
		}
		n += c
		p = p[c:]
	}
	return n, nil
}

// Close ends the stream (end-of-file to libvirtd) and the connection.
func (s *stream) Close() error {
	s.closeOnce.Do(func() {
		// Unblock the socket reader first: it may be stuck handing data
		// to a reader that is gone, and Disconnect waits for it.
		s.pr.CloseWithError(io.ErrClosedPipe)
		// Say end-of-stream, unless a Write is stuck (libvirtd stopped
		// reading): then Disconnect, which closes the socket without
		// go-libvirt's write lock, unsticks it.
		sent := make(chan struct{})
		go func() {
			s.wmu.Lock()
			s.sock.SendPacket(s.serial, s.proc, remoteProgram, nil, socket.Stream, socket.StatusOK)
			s.wmu.Unlock()
			close(sent)
		}()
		select {
		case <-sent:
		case <-time.After(time.Second):
		}
		s.sock.Disconnect()
	})
	return nil
}

// xdrBuf encodes the few XDR shapes the calls above need.
type xdrBuf struct{ bytes.Buffer }

func (b *xdrBuf) uint32(v uint32) { binary.Write(&b.Buffer, binary.BigEndian, v) }

func (b *xdrBuf) fixed(p []byte) {
	b.Write(p)
	b.pad(len(p))
}

func (b *xdrBuf) string(s string) {
	b.uint32(uint32(len(s)))
	b.WriteString(s)
	b.pad(len(s))
}

// optString is libvirt's remote_string: an optional (0 or 1 element) string.
func (b *xdrBuf) optString(s string) {
	if s == "" {
		b.uint32(0)
		return
	}
	b.uint32(1)
	b.string(s)
}

func (b *xdrBuf) pad(n int) {
	if r := n % 4; r != 0 {
		b.Write(make([]byte, 4-r))
	}
}

// decodeError reads the message out of a remote_error payload (code,
// domain, optional message, …).
func decodeError(p []byte) error {
	if len(p) >= 16 {
		code := binary.BigEndian.Uint32(p[0:4])
		if binary.BigEndian.Uint32(p[8:12]) == 1 {
			n := binary.BigEndian.Uint32(p[12:16])
			if int(n) <= len(p)-16 {
				return fmt.Errorf("libvirt error %d: %s", code, p[16:16+n])
			}
		}
		return fmt.Errorf("libvirt error %d", code)
	}
	return errors.New("libvirt error (undecodable)")
}
