package agent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"sync"
	"syscall"
)

// pkg/sftp's server resolves every path of a request against its working
// directory (the home directory), the target of SSH_FXP_SYMLINK included:
// a link to "a" was created as a link to "/root/a". A symlink's target is
// not a path to resolve but its content, stored as sent. So the agent
// reads the SFTP packets itself, answers SYMLINK requests (the link's own
// path resolved as the server would, the target kept verbatim) and hands
// every other packet to the server. Replies of both go out whole, one
// packet at a time.

// SFTP packet types and status codes (draft-ietf-secsh-filexfer-02).
const (
	fxpSymlink = 20
	fxpStatus  = 101

	fxOK               = 0
	fxNoSuchFile       = 2
	fxPermissionDenied = 3
	fxFailure          = 4
	fxBadMessage       = 5
)

// maxSFTPPacket bounds what the filter buffers; pkg/sftp's own limit on
// a request is 256 KiB, so anything longer is refused there or here.
const maxSFTPPacket = 1 << 20

// sftpFilter serves the SYMLINK requests read from r (the SSH channel)
// and passes the other packets to the server through a pipe.
type sftpFilter struct {
	home string
	in   io.Reader      // the channel
	pr   *io.PipeReader // the server reads packets here
	pw   *io.PipeWriter
	out  *packetWriter
}

func newSFTPFilter(ch io.ReadWriter, home string) *sftpFilter {
	pr, pw := io.Pipe()
	return &sftpFilter{home: home, in: ch, pr: pr, pw: pw, out: &packetWriter{w: ch}}
}

// serverConn is what the SFTP server reads from and writes to; closing it
// stops the filter too.
func (f *sftpFilter) serverConn(closeCh func() error) io.ReadWriteCloser {
	return &filterConn{f: f, closeCh: closeCh}
}

type filterConn struct {
	f       *sftpFilter
	closeCh func() error
}

func (c *filterConn) Read(p []byte) (int, error)  { return c.f.pr.Read(p) }
func (c *filterConn) Write(p []byte) (int, error) { return c.f.out.Write(p) }
func (c *filterConn) Close() error {
	c.f.pr.Close()
	return c.closeCh()
}

// run copies packets until the channel ends (EOF: the server sees EOF
// too) or fails.
func (f *sftpFilter) run() {
	f.pw.CloseWithError(f.loop())
}

func (f *sftpFilter) loop() error {
	var hdr [4]byte
	for {
		if _, err := io.ReadFull(f.in, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return nil // between packets: a clean end
			}
			return err
		}
		n := binary.BigEndian.Uint32(hdr[:])
		if n == 0 || n > maxSFTPPacket {
			return fmt.Errorf("sftp: packet of %d bytes", n)
		}
		pkt := make([]byte, 4+n)
		copy(pkt, hdr[:])
		if _, err := io.ReadFull(f.in, pkt[4:]); err != nil {
			return fmt.Errorf("sftp: truncated packet: %w", err)
		}
		if pkt[4] == fxpSymlink {
			if err := f.symlink(pkt[5:]); err != nil {
				return err
			}
			continue
		}
		if _, err := f.pw.Write(pkt); err != nil {
			return err
		}
	}
}

// symlink serves one SYMLINK request: id, target, link path (in the order
// OpenSSH, and pkg/sftp with it, put them on the wire).
func (f *sftpFilter) symlink(b []byte) error {
	if len(b) < 4 {
		return errors.New("sftp: SYMLINK request without an id")
	}
	id := binary.BigEndian.Uint32(b)
	target, rest, ok := sftpString(b[4:])
	link, _, ok2 := sftpString(rest)
	if !ok || !ok2 {
		return f.status(id, fxBadMessage, "malformed SYMLINK request")
	}
	if !path.IsAbs(link) {
		link = path.Join(f.home, link)
	}
	err := os.Symlink(target, link)
	code, msg := uint32(fxOK), ""
	var errno syscall.Errno
	switch {
	case err == nil:
	case errors.As(err, &errno) && errno == syscall.ENOENT:
		code, msg = fxNoSuchFile, err.Error()
	case errors.As(err, &errno) && (errno == syscall.EACCES || errno == syscall.EPERM || errno == syscall.EROFS):
		code, msg = fxPermissionDenied, err.Error()
	default:
		code, msg = fxFailure, err.Error()
	}
	return f.status(id, code, msg)
}

// status sends an SSH_FXP_STATUS reply.
func (f *sftpFilter) status(id, code uint32, msg string) error {
	b := make([]byte, 0, 4+1+4+4+4+len(msg)+4)
	b = binary.BigEndian.AppendUint32(b, 0) // length, below
	b = append(b, fxpStatus)
	b = binary.BigEndian.AppendUint32(b, id)
	b = binary.BigEndian.AppendUint32(b, code)
	b = binary.BigEndian.AppendUint32(b, uint32(len(msg)))
	b = append(b, msg...)
	b = binary.BigEndian.AppendUint32(b, 0) // language tag ""
	binary.BigEndian.PutUint32(b, uint32(len(b)-4))
	return f.out.writePacket(b)
}

func sftpString(b []byte) (string, []byte, bool) {
	if len(b) < 4 {
		return "", nil, false
	}
	n := binary.BigEndian.Uint32(b)
	if uint64(n) > uint64(len(b)-4) {
		return "", nil, false
	}
	return string(b[4 : 4+n]), b[4+n:], true
}

// packetWriter writes whole SFTP packets to w: the server writes a packet
// as several writes (header, then payload), which are gathered here so
// that a reply of the filter never lands inside one of its packets.
type packetWriter struct {
	mu  sync.Mutex // one packet at a time on w
	bmu sync.Mutex // buf
	buf []byte
	w   io.Writer
}

// Write gathers the server's bytes and sends every complete packet.
func (p *packetWriter) Write(b []byte) (int, error) {
	p.bmu.Lock()
	defer p.bmu.Unlock()
	p.buf = append(p.buf, b...)
	for len(p.buf) >= 4 {
		n := 4 + int(binary.BigEndian.Uint32(p.buf))
		if len(p.buf) < n {
			break
		}
		if err := p.writePacket(p.buf[:n]); err != nil {
			return 0, err
		}
		p.buf = p.buf[n:]
	}
	if len(p.buf) == 0 {
		p.buf = nil // do not keep a large packet's array
	}
	return len(b), nil
}

func (p *packetWriter) writePacket(b []byte) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, err := p.w.Write(b)
	return err
}
