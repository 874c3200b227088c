package agent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"ldtlab/guest/agent/wire"
)

func TestHandshakeAgentSide(t *testing.T) {
	guest, host := net.Pipe()
	defer host.Close()
	type result struct {
		rw  io.ReadWriteCloser
		err error
	}
	done := make(chan result, 1)
	go func() {
		rw, err := Handshake(context.Background(), guest)
		done <- result{rw, err}
	}()

	br := bufio.NewReader(host)
	start := time.Now()
	for i := 0; i < 2; i++ { // READY repeats until ACK
		line, err := br.ReadString('\n')
		require.NoError(t, err)
		assert.Equal(t, wire.ReadyLine, line)
	}
	assert.GreaterOrEqual(t, time.Since(start), ReadyInterval/2)

	// Junk glued to the ACK line, and payload right behind it.
	go func() { _, _ = host.Write([]byte("\x00\x01junk" + wire.AckLine + "payload")) }()
	require.NoError(t, wire.WaitLine(br, wire.StartLine))
	r := <-done
	require.NoError(t, r.err)
	buf := make([]byte, len("payload"))
	_, err := io.ReadFull(r.rw, buf)
	require.NoError(t, err)
	assert.Equal(t, "payload", string(buf), "bytes after ACK must reach yamux")
}

func TestHandshakeAgentCancel(t *testing.T) {
	guest, host := net.Pipe()
	defer host.Close()
	go func() { _, _ = io.Copy(io.Discard, host) }()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := Handshake(ctx, guest)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
}

func TestPortWaitsForFirstData(t *testing.T) {
	// A regular file reads like a port with no host: EOF until data arrives.
	path := t.TempDir() + "/port"
	require.NoError(t, os.WriteFile(path, nil, 0o600))
	f, err := os.Open(path)
	require.NoError(t, err)
	p := &port{f: f}
	defer p.Close()
	go func() {
		time.Sleep(3 * portPoll)
		_ = os.WriteFile(path, []byte("hi"), 0o600)
	}()
	buf := make([]byte, 8)
	n, err := p.Read(buf)
	require.NoError(t, err)
	assert.Equal(t, "hi", string(buf[:n]))
	_, err = p.Read(buf)
	assert.ErrorIs(t, err, io.EOF, "after data, EOF means the host left")
}

func socketPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	conn := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "socketpair")
		defer f.Close()
		c, err := net.FileConn(f)
		require.NoError(t, err)
		return c
	}
	return conn(fds[0]), conn(fds[1])
}

// sshPair serves one SSH connection with the real server over net.Pipe.
func sshPair(t *testing.T) *ssh.Client {
	t.Helper()
	_, hostPriv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	_, clientPriv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	hostSigner, err := ssh.NewSignerFromKey(hostPriv)
	require.NoError(t, err)
	clientSigner, err := ssh.NewSignerFromKey(clientPriv)
	require.NoError(t, err)
	srv, err := NewServer(Config{HostKey: hostSigner, AuthorizedKey: clientSigner.PublicKey(), Shell: "/bin/sh", Home: t.TempDir()})
	require.NoError(t, err)
	a, b := socketPair(t) // buffered: both SSH ends send their version first
	go srv.ServeConn(a)
	conn, chans, reqs, err := ssh.NewClientConn(b, "guest", &ssh.ClientConfig{
		User:            "root",
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(clientSigner)},
		HostKeyCallback: ssh.FixedHostKey(hostSigner.PublicKey()),
	})
	require.NoError(t, err)
	c := ssh.NewClient(conn, chans, reqs)
	t.Cleanup(func() { c.Close() })
	return c
}

func TestSignalForwarding(t *testing.T) {
	c := sshPair(t)
	s, err := c.NewSession()
	require.NoError(t, err)
	defer s.Close()
	out, err := s.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, s.Start(`trap 'echo got-term; exit 9' TERM; echo ready; while :; do sleep 0.05; done`))
	br := bufio.NewReader(out)
	line, err := br.ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "ready\n", line)
	require.NoError(t, s.Signal(ssh.SIGTERM))
	rest, err := io.ReadAll(br)
	require.NoError(t, err)
	assert.Equal(t, "got-term\n", string(rest))
	var ee *ssh.ExitError
	require.ErrorAs(t, s.Wait(), &ee)
	assert.Equal(t, 9, ee.ExitStatus())
}

func TestExitSignal(t *testing.T) {
	c := sshPair(t)
	s, err := c.NewSession()
	require.NoError(t, err)
	err = s.Run("kill -USR1 $$")
	var ee *ssh.ExitError
	require.ErrorAs(t, err, &ee)
	assert.Equal(t, "USR1", ee.Signal())
}

func TestSessionRequests(t *testing.T) {
	c := sshPair(t)
	tests := []struct {
		name    string
		req     string
		payload []byte
		want    bool
	}{
		{"unknown subsystem", "subsystem", ssh.Marshal(&subsysReq{Name: "nope"}), false},
		{"unknown request", "x11-req", nil, false},
		{"env", "env", ssh.Marshal(&envReq{Name: "A", Value: "b"}), true},
		{"window-change without pty", "window-change", ssh.Marshal(&winchReq{Columns: 1, Rows: 1}), false},
		{"signal before start", "signal", ssh.Marshal(&signalReq{Signal: "TERM"}), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ch, reqs, err := c.OpenChannel("session", nil)
			require.NoError(t, err)
			defer ch.Close()
			go ssh.DiscardRequests(reqs)
			ok, err := ch.SendRequest(tt.req, true, tt.payload)
			require.NoError(t, err)
			assert.Equal(t, tt.want, ok)
		})
	}

	// Only one command per session.
	ch, reqs, err := c.OpenChannel("session", nil)
	require.NoError(t, err)
	go ssh.DiscardRequests(reqs)
	ok, err := ch.SendRequest("exec", true, ssh.Marshal(&execReq{Command: "sleep 5"}))
	require.NoError(t, err)
	assert.True(t, ok)
	ok, err = ch.SendRequest("exec", true, ssh.Marshal(&execReq{Command: "true"}))
	require.NoError(t, err)
	assert.False(t, ok)
	ch.Close()

	// Other channel types are refused; global requests are answered.
	_, _, err = c.OpenChannel("direct-tcpip", nil)
	assert.Error(t, err)
	ok, _, err = c.SendRequest("keepalive@openssh.com", true, nil)
	require.NoError(t, err)
	assert.False(t, ok)
}

func TestBackgroundJobDoesNotLoseOutput(t *testing.T) {
	c := sshPair(t)
	s, err := c.NewSession()
	require.NoError(t, err)
	var out bytes.Buffer
	s.Stdout = &out
	require.NoError(t, s.Run(`for i in 1 2 3; do echo line$i; done; (sleep 0.2; echo late) &`))
	assert.Equal(t, "line1\nline2\nline3\nlate\n", out.String(), "output is drained before the exit status, as sshd does")
	assert.False(t, strings.Contains(out.String(), "ldtlab-agent"))
}
