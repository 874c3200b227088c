package libvirt

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

type packet struct {
	proc, typ, status uint32
	serial            int32
	payload           []byte
}

func readPacket(r io.Reader) (packet, error) {
	var hdr [28]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return packet{}, err
	}
	n := binary.BigEndian.Uint32(hdr[0:4])
	p := packet{
		proc:   binary.BigEndian.Uint32(hdr[12:16]),
		typ:    binary.BigEndian.Uint32(hdr[16:20]),
		serial: int32(binary.BigEndian.Uint32(hdr[20:24])),
		status: binary.BigEndian.Uint32(hdr[24:28]),
	}
	p.payload = make([]byte, n-28)
	_, err := io.ReadFull(r, p.payload)
	return p, err
}

func writePacket(w io.Writer, p packet) error {
	var b bytes.Buffer
	for _, v := range []uint32{uint32(28 + len(p.payload)), remoteProgram, 1, p.proc, p.typ, uint32(p.serial), p.status} {
		binary.Write(&b, binary.BigEndian, v)
	}
	b.Write(p.payload)
	_, err := w.Write(b.Bytes())
	return err
}

// fakeDaemon plays libvirtd for one stream connection: it answers the
// three calls (refusing the stream call when refuse is set), then echoes
// stream data upper-cased and records the end-of-stream.
func fakeDaemon(t *testing.T, refuse bool) (uri string, gotArgs chan []byte, ended chan struct{}) {
	sock := filepath.Join(t.TempDir(), "sock")
	l, err := net.Listen("unix", sock)
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	gotArgs, ended = make(chan []byte, 1), make(chan struct{})
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		for {
			p, err := readPacket(c)
			if err != nil {
				return
			}
			switch {
			case p.typ == socket.Call && p.proc == procDomainOpenChannel:
				gotArgs <- p.payload
				if refuse {
					var e xdrBuf
					e.uint32(55)
					e.uint32(10)
					e.optString("channel 'x' not found")
					e.uint32(2)
					writePacket(c, packet{proc: p.proc, typ: socket.Reply, serial: p.serial, status: socket.StatusError, payload: e.Bytes()})
					continue
				}
				writePacket(c, packet{proc: p.proc, typ: socket.Reply, serial: p.serial, status: socket.StatusOK})
			case p.typ == socket.Call:
				writePacket(c, packet{proc: p.proc, typ: socket.Reply, serial: p.serial, status: socket.StatusOK})
			case p.typ == socket.Stream && p.status == socket.StatusContinue:
				writePacket(c, packet{proc: p.proc, typ: socket.Stream, serial: p.serial, status: socket.StatusContinue, payload: bytes.ToUpper(p.payload)})
			case p.typ == socket.Stream && p.status == socket.StatusOK:
				close(ended)
				return
			}
		}
	}()
	return "qemu+unix:///system?socket=" + sock, gotArgs, ended
}

func TestStreamRoundTrip(t *testing.T) {
	uri, gotArgs, ended := fakeDaemon(t, false)
	u, _ := url.Parse(uri)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	dom := golibvirt.Domain{Name: "ldtlab-x", UUID: golibvirt.UUID{1, 2, 3}, ID: 7}
	s, err := openStream(ctx, u, procDomainOpenChannel, dom, "ldtlab.ctl")
	require.NoError(t, err)

	var want xdrBuf
	want.string("ldtlab-x")
	want.fixed(dom.UUID[:])
	want.uint32(7)
	want.optString("ldtlab.ctl")
	want.uint32(flagForce)
	assert.Equal(t, want.Bytes(), <-gotArgs, "domain, device name and FORCE on the wire")

	// More than one packet's worth, to see the chunking and reassembly.
	msg := bytes.Repeat([]byte("abcdefgh"), streamChunk/4)
	go s.Write(msg)
	got := make([]byte, len(msg))
	_, err = io.ReadFull(s, got)
	require.NoError(t, err)
	assert.Equal(t, bytes.ToUpper(msg), got)

	require.NoError(t, s.Close())
	select {
	case <-ended:
	case <-time.After(2 * time.Second):
		t.Fatal("the daemon saw no end-of-stream")
	}
	_, err = s.Read(make([]byte, 1))
	assert.Error(t, err, "a closed stream does not read")
}

func TestStreamRefused(t *testing.T) {
	uri, _, _ := fakeDaemon(t, true)
	u, _ := url.Parse(uri)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := openStream(ctx, u, procDomainOpenChannel, golibvirt.Domain{Name: "ldtlab-x"}, "x")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "opening x of ldtlab-x: libvirt error 55: channel 'x' not found")
}

func TestStreamSilentDaemon(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "sock")
	l, err := net.Listen("unix", sock)
	require.NoError(t, err)
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			defer c.Close()
			io.Copy(io.Discard, c)
		}
	}()
	u, _ := url.Parse("qemu+unix:///system?socket=" + sock)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = openStream(ctx, u, procDomainOpenConsole, golibvirt.Domain{Name: "ldtlab-x"}, "")
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Less(t, time.Since(start), 3*time.Second)
}
