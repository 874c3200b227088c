package channel_test

import (
	"bytes"
	"context"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"ldtlab/guest/agent"
	"ldtlab/orchestrator/channel"
)

// socketPair returns the two ends of a unix stream socketpair, the closest
// host stand-in for the virtio-serial port and its chardev socket.
func socketPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	conn := func(fd int, name string) net.Conn {
		f := os.NewFile(uintptr(fd), name)
		defer f.Close()
		c, err := net.FileConn(f)
		require.NoError(t, err)
		return c
	}
	return conn(fds[0], "guest"), conn(fds[1], "host")
}

type lab struct {
	keys *channel.Keys
	mux  *channel.Mux
	home string
}

// newLab runs the real agent server on one end of a socket pair and the
// host handshake on the other.
func newLab(t *testing.T) *lab {
	t.Helper()
	keys, err := channel.GenerateKeys(privateDir(t))
	require.NoError(t, err)
	signer, pub, err := agent.LoadKeyFiles(keys.HostKeyPath(), keys.AuthorizedKeyPath())
	require.NoError(t, err)
	home := t.TempDir()
	srv, err := agent.NewServer(agent.Config{HostKey: signer, AuthorizedKey: pub, Shell: "/bin/sh", Home: home, Logf: t.Logf})
	require.NoError(t, err)

	guestEnd, hostEnd := socketPair(t)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { defer close(served); _ = srv.Serve(ctx, guestEnd) }()

	hctx, hcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer hcancel()
	mux, err := channel.Handshake(hctx, hostEnd)
	require.NoError(t, err)
	t.Cleanup(func() {
		mux.Close()
		cancel()
		<-served
	})
	return &lab{keys: keys, mux: mux, home: home}
}

func (l *lab) dial(t *testing.T) *channel.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := l.mux.Open(ctx)
	require.NoError(t, err)
	c, err := channel.Dial(ctx, conn, l.keys)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// processGone reports whether pid no longer runs (gone, or a zombie that
// nobody reaped yet: it cannot run again either).
func processGone(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] == 'Z' || s[i+2] == 'X'
}

// waitFile waits until path has a non-empty first line and returns it.
func waitFile(t *testing.T, path string) string {
	t.Helper()
	var line string
	require.Eventually(t, func() bool {
		b, err := os.ReadFile(path)
		if err != nil || !bytes.HasSuffix(b, []byte("\n")) {
			return false
		}
		line = strings.TrimSpace(string(b))
		return line != ""
	}, 10*time.Second, 10*time.Millisecond)
	return line
}

// syncBuffer is a bytes.Buffer safe for one writer and a polling reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// privateDir is a 0700 temporary directory (t.TempDir follows the umask).
func privateDir(t *testing.T) string {
	t.Helper()
	d := t.TempDir()
	require.NoError(t, os.Chmod(d, 0o700))
	return d
}
