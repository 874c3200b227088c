package channel_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ldtlab/guest/agent/wire"
	"ldtlab/orchestrator/channel"
)

func TestRunExitCodes(t *testing.T) {
	c := newLab(t).dial(t)
	tests := []struct {
		cmd  string
		code int
	}{
		{"true", 0},
		{"exit 3", 3},
		{"false", 1},
		{"kill -KILL $$", 128 + 9},
		{"kill -TERM $$", 128 + 15},
		{"kill -BUS $$", 128 + 7},
		{"/nonexistent/program", 127},
	}
	for _, tt := range tests {
		t.Run(tt.cmd, func(t *testing.T) {
			code, err := c.Run(testCtx(t), tt.cmd, channel.RunOptions{})
			require.NoError(t, err)
			assert.Equal(t, tt.code, code)
		})
	}
}

func TestOutputSeparatesStreams(t *testing.T) {
	c := newLab(t).dial(t)
	out, errOut, code, err := c.Output(testCtx(t), "echo out; echo err >&2; echo out2; exit 5")
	require.NoError(t, err)
	assert.Equal(t, 5, code)
	assert.Equal(t, "out\nout2\n", string(out))
	assert.Equal(t, "err\n", string(errOut))
}

func TestStdinRoundTrip(t *testing.T) {
	c := newLab(t).dial(t)
	data := make([]byte, 3<<20) // several yamux and ssh windows
	_, err := rand.Read(data)
	require.NoError(t, err)
	var out bytes.Buffer
	code, err := c.Run(testCtx(t), "cat", channel.RunOptions{Stdin: bytes.NewReader(data), Stdout: &out})
	require.NoError(t, err)
	assert.Equal(t, 0, code)
	assert.True(t, bytes.Equal(data, out.Bytes()), "stdin came back changed (%d bytes in, %d out)", len(data), out.Len())

	// Without stdin the command sees EOF at once instead of hanging.
	out.Reset()
	code, err = c.Run(testCtx(t), "wc -c", channel.RunOptions{Stdout: &out})
	require.NoError(t, err)
	assert.Equal(t, 0, code)
	assert.Equal(t, "0", strings.TrimSpace(out.String()))
}

func TestEnvironment(t *testing.T) {
	l := newLab(t)
	c := l.dial(t)
	var out bytes.Buffer
	code, err := c.Run(testCtx(t), `printf '%s|%s|%s|%s' "$FOO" "$PATH" "$HOME" "$(pwd)"`, channel.RunOptions{
		Stdout: &out,
		Env:    map[string]string{"FOO": "bar baz"},
	})
	require.NoError(t, err)
	require.Equal(t, 0, code)
	assert.Equal(t, "bar baz|/usr/sbin:/usr/bin:/sbin:/bin|"+l.home+"|"+l.home, out.String())
}

func TestCancelKillsProcessGroup(t *testing.T) {
	c := newLab(t).dial(t)
	dir := t.TempDir()
	shPid, sleepPid := filepath.Join(dir, "sh"), filepath.Join(dir, "sleep")
	ctx, cancel := context.WithCancel(testCtx(t))
	type result struct {
		code int
		err  error
	}
	done := make(chan result, 1)
	go func() {
		cmd := fmt.Sprintf("echo $$ > %s; sleep 300 & echo $! > %s; wait", shPid, sleepPid)
		code, err := c.Run(ctx, cmd, channel.RunOptions{})
		done <- result{code, err}
	}()
	sh, err := strconv.Atoi(waitFile(t, shPid))
	require.NoError(t, err)
	sl, err := strconv.Atoi(waitFile(t, sleepPid))
	require.NoError(t, err)
	require.False(t, processGone(sl), "sleep should be running")

	cancel()
	select {
	case r := <-done:
		require.Error(t, r.err)
		assert.ErrorIs(t, r.err, context.Canceled)
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	assert.Eventually(t, func() bool { return processGone(sh) && processGone(sl) }, 10*time.Second, 10*time.Millisecond,
		"shell %d and its sleep %d must be killed", sh, sl)

	// The connection is still usable afterwards.
	out, _, code, err := c.Output(testCtx(t), "echo alive")
	require.NoError(t, err)
	assert.Equal(t, 0, code)
	assert.Equal(t, "alive\n", string(out))
}

func TestClosingClientKillsCommand(t *testing.T) {
	l := newLab(t)
	c := l.dial(t)
	pidFile := filepath.Join(t.TempDir(), "pid")
	go func() {
		_, _ = c.Run(context.Background(), "sleep 300 & echo $! > "+pidFile+"; wait", channel.RunOptions{})
	}()
	pid, err := strconv.Atoi(waitFile(t, pidFile))
	require.NoError(t, err)
	require.NoError(t, c.Close())
	assert.Eventually(t, func() bool { return processGone(pid) }, 10*time.Second, 10*time.Millisecond)
}

// hostPty is a host terminal of a given size whose output is collected.
func hostPty(t *testing.T, rows, cols uint16) (*os.File, *os.File, *syncBuffer) {
	t.Helper()
	ptmx, tty, err := pty.Open()
	require.NoError(t, err)
	require.NoError(t, pty.Setsize(ptmx, &pty.Winsize{Rows: rows, Cols: cols}))
	out := &syncBuffer{}
	go func() { _, _ = io.Copy(out, ptmx) }()
	t.Cleanup(func() { tty.Close(); ptmx.Close() })
	return ptmx, tty, out
}

func TestShellPty(t *testing.T) {
	c := newLab(t).dial(t)
	_, tty, out := hostPty(t, 33, 101)
	code, err := c.Shell(testCtx(t), tty, tty, tty, "tty; stty size; exit 4")
	require.NoError(t, err)
	assert.Equal(t, 4, code)
	assert.Eventually(t, func() bool { return strings.Contains(out.String(), "33 101") }, 5*time.Second, 10*time.Millisecond)
	assert.Regexp(t, `/dev/pts/\d+`, out.String())
}

func TestShellWindowChange(t *testing.T) {
	c := newLab(t).dial(t)
	ptmx, tty, out := hostPty(t, 24, 80)
	ctx, cancel := context.WithCancel(testCtx(t))
	done := make(chan error, 1)
	go func() {
		_, err := c.Shell(ctx, tty, tty, tty, "while :; do stty size; sleep 0.05; done")
		done <- err
	}()
	require.Eventually(t, func() bool { return strings.Contains(out.String(), "24 80") }, 10*time.Second, 10*time.Millisecond)
	require.NoError(t, pty.Setsize(ptmx, &pty.Winsize{Rows: 40, Cols: 120}))
	// The terminal's own SIGWINCH goes to its foreground group, which is
	// not us; send it the way a terminal emulator's shell would get it.
	require.NoError(t, syscall.Kill(os.Getpid(), syscall.SIGWINCH))
	assert.Eventually(t, func() bool { return strings.Contains(out.String(), "40 120") }, 10*time.Second, 10*time.Millisecond)
	cancel()
	select {
	case err := <-done:
		assert.ErrorIs(t, err, context.Canceled)
	case <-time.After(10 * time.Second):
		t.Fatal("Shell did not return after cancel")
	}
}

func TestLoginShell(t *testing.T) {
	c := newLab(t).dial(t)
	ptmx, tty, out := hostPty(t, 24, 80)
	done := make(chan int, 1)
	go func() {
		code, err := c.Shell(testCtx(t), tty, tty, tty, "")
		assert.NoError(t, err)
		done <- code
	}()
	_, err := io.WriteString(ptmx, "echo hello-$((40+2)); exit 7\r")
	require.NoError(t, err)
	select {
	case code := <-done:
		assert.Equal(t, 7, code)
	case <-time.After(10 * time.Second):
		t.Fatal("login shell did not exit")
	}
	assert.Eventually(t, func() bool { return strings.Contains(out.String(), "hello-42") }, 5*time.Second, 10*time.Millisecond)
}

func TestTransferRoundTrip(t *testing.T) {
	c := newLab(t).dial(t)
	src := t.TempDir()
	remoteRoot := t.TempDir() // the "guest" is this host
	dst := t.TempDir()

	type entry struct {
		path string
		mode os.FileMode
		data string // "" for a directory
	}
	tree := []entry{
		{"tree", 0o750, ""},
		{"tree/run.sh", 0o755, "#!/bin/sh\necho hi\n"},
		{"tree/secret", 0o600, "s3cret"},
		{"tree/sub", 0o711, ""},
		{"tree/sub/data.bin", 0o644, strings.Repeat("0123456789", 100000)},
		{"tree/sub/ro", 0o444, "read only"},
	}
	for _, e := range tree {
		p := filepath.Join(src, e.path)
		if e.data == "" {
			require.NoError(t, os.Mkdir(p, 0o700))
		} else {
			require.NoError(t, os.WriteFile(p, []byte(e.data), 0o600))
		}
	}
	for i := len(tree) - 1; i >= 0; i-- { // children first: parents may be read-only
		require.NoError(t, os.Chmod(filepath.Join(src, tree[i].path), tree[i].mode))
	}

	check := func(root string) {
		t.Helper()
		for _, e := range tree {
			p := filepath.Join(root, e.path)
			fi, err := os.Lstat(p)
			require.NoError(t, err, e.path)
			assert.Equal(t, e.mode, fi.Mode().Perm(), e.path)
			if e.data != "" {
				b, err := os.ReadFile(p)
				require.NoError(t, err)
				assert.Equal(t, e.data, string(b), e.path)
			}
		}
	}

	ctx := testCtx(t)
	require.NoError(t, c.Upload(ctx, filepath.Join(src, "tree"), filepath.Join(remoteRoot, "tree"), channel.CopyOptions{}))
	check(remoteRoot)
	require.NoError(t, c.Download(ctx, filepath.Join(remoteRoot, "tree"), filepath.Join(dst, "tree"), channel.CopyOptions{}))
	check(dst)

	// A single file, under another name.
	require.NoError(t, c.Upload(ctx, filepath.Join(src, "tree/run.sh"), filepath.Join(remoteRoot, "x.sh"), channel.CopyOptions{}))
	fi, err := os.Stat(filepath.Join(remoteRoot, "x.sh"))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o755), fi.Mode().Perm())
	require.NoError(t, c.Download(ctx, filepath.Join(remoteRoot, "x.sh"), filepath.Join(dst, "y.sh"), channel.CopyOptions{}))
	b, err := os.ReadFile(filepath.Join(dst, "y.sh"))
	require.NoError(t, err)
	assert.Equal(t, "#!/bin/sh\necho hi\n", string(b))

	err = c.Download(ctx, filepath.Join(remoteRoot, "missing"), filepath.Join(dst, "missing"), channel.CopyOptions{})
	assert.ErrorIs(t, err, os.ErrNotExist)
}

func TestConcurrentConnections(t *testing.T) {
	l := newLab(t)
	c1, c2 := l.dial(t), l.dial(t)
	pr, pw := io.Pipe()
	var out1 syncBuffer
	done1 := make(chan error, 1)
	go func() {
		_, err := c1.Run(testCtx(t), `read x; echo "one-$x"`, channel.RunOptions{Stdin: pr, Stdout: &out1})
		done1 <- err
	}()
	// c2 completes while c1 is still blocked on its stdin.
	out2, _, code, err := c2.Output(testCtx(t), "echo two")
	require.NoError(t, err)
	assert.Equal(t, 0, code)
	assert.Equal(t, "two\n", string(out2))
	select {
	case <-done1:
		t.Fatal("first command finished before it got its input")
	default:
	}
	_, err = io.WriteString(pw, "go\n")
	require.NoError(t, err)
	pw.Close()
	require.NoError(t, <-done1)
	assert.Equal(t, "one-go\n", out1.String())
}

func TestKeyMismatchRejected(t *testing.T) {
	l := newLab(t)
	other, err := channel.GenerateKeys(privateDir(t))
	require.NoError(t, err)

	// Right host key, wrong client key.
	wrongClientDir := privateDir(t)
	_, err = channel.GenerateKeys(wrongClientDir)
	require.NoError(t, err)
	pub, err := os.ReadFile(l.keys.HostPubPath())
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(wrongClientDir, channel.HostPubFile), pub, 0o600))
	wrongClient, err := channel.LoadKeys(wrongClientDir)
	require.NoError(t, err)

	tests := []struct {
		name string
		keys *channel.Keys
		want string
	}{
		{"wrong client key", wrongClient, "unable to authenticate"},
		{"unexpected host key", other, "host key mismatch"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := testCtx(t)
			conn, err := l.mux.Open(ctx)
			require.NoError(t, err)
			_, err = channel.Dial(ctx, conn, tt.keys)
			require.Error(t, err)
			assert.Contains(t, err.Error(), "ssh handshake with guest agent")
			assert.Contains(t, err.Error(), tt.want)
		})
	}
	// The mux survives failed logins.
	out, _, _, err := l.dial(t).Output(testCtx(t), "echo ok")
	require.NoError(t, err)
	assert.Equal(t, "ok\n", string(out))
}

func TestPing(t *testing.T) {
	c := newLab(t).dial(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, c.Ping(ctx))
}

func TestMuxServe(t *testing.T) {
	l := newLab(t)
	sock := filepath.Join(t.TempDir(), "ssh.sock")
	ln, err := net.Listen("unix", sock)
	require.NoError(t, err)
	served := make(chan error, 1)
	go func() { served <- l.mux.Serve(ln) }()

	for i := 0; i < 2; i++ {
		conn, err := net.Dial("unix", sock)
		require.NoError(t, err)
		c, err := channel.Dial(testCtx(t), conn, l.keys)
		require.NoError(t, err)
		out, _, code, err := c.Output(testCtx(t), "echo via-proxy")
		require.NoError(t, err)
		assert.Equal(t, 0, code)
		assert.Equal(t, "via-proxy\n", string(out))
		c.Close()
	}

	// When the session dies, Serve returns and Done is closed.
	require.NoError(t, l.mux.Close())
	select {
	case err := <-served:
		assert.ErrorIs(t, err, channel.ErrClosed)
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after the mux closed")
	}
	select {
	case <-l.mux.Done():
	default:
		t.Fatal("Done not closed")
	}
}

func TestHandshakeTimeout(t *testing.T) {
	_, host := socketPair(t) // the agent never says READY
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := channel.Handshake(ctx, host)
	require.Error(t, err)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Less(t, time.Since(start), 3*time.Second)
}

func TestHandshakeSkipsJunk(t *testing.T) {
	guest, host := socketPair(t)
	errc := make(chan error, 1)
	go func() {
		// Stale bytes from an earlier session, then the protocol.
		junk := append(bytes.Repeat([]byte{0, 1, 2, 0xff}, 5000), "partial"...)
		_, err := guest.Write(append(junk, "LDTLAB-AGENT/1 READY\nLDTLAB-AGENT/1 READY\n"...))
		if err != nil {
			errc <- err
			return
		}
		buf := make([]byte, len(wire.AckLine))
		if _, err := io.ReadFull(guest, buf); err != nil {
			errc <- err
			return
		}
		if string(buf) != wire.AckLine {
			errc <- fmt.Errorf("got %q, want ACK", buf)
			return
		}
		_, err = guest.Write([]byte("LDTLAB-AGENT/1 READY\nLDTLAB-AGENT/1 START\n"))
		errc <- err
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	mux, err := channel.Handshake(ctx, host)
	require.NoError(t, err)
	require.NoError(t, <-errc)
	mux.Close()
}

func TestKeysFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	keys, err := channel.GenerateKeys(dir)
	require.NoError(t, err)
	for _, p := range []string{keys.ClientKeyPath(), keys.ClientPubPath(), keys.HostKeyPath(), keys.HostPubPath(), keys.AuthorizedKeyPath(), keys.KnownHostsPath()} {
		fi, err := os.Stat(p)
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), p)
	}
	fi, err := os.Stat(dir)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o700), fi.Mode().Perm())

	kh, err := os.ReadFile(keys.KnownHostsPath())
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(string(kh), channel.HostKeyAlias+" ssh-ed25519 "), string(kh))
	pem, err := os.ReadFile(keys.ClientKeyPath())
	require.NoError(t, err)
	assert.Contains(t, string(pem), "BEGIN OPENSSH PRIVATE KEY")

	loaded, err := channel.LoadKeys(dir)
	require.NoError(t, err)
	assert.Equal(t, keys.HostPublicKey().Marshal(), loaded.HostPublicKey().Marshal())
	assert.Equal(t, "root", loaded.ClientConfig().User)

	// Loose permissions are refused.
	loose := t.TempDir()
	require.NoError(t, os.Chmod(loose, 0o755))
	_, err = channel.GenerateKeys(loose)
	assert.ErrorContains(t, err, "group or others")
	require.NoError(t, os.Chmod(dir, 0o750))
	_, err = channel.LoadKeys(dir)
	assert.ErrorContains(t, err, "group or others")
	require.NoError(t, os.Chmod(dir, 0o700))
	require.NoError(t, os.Chmod(keys.ClientKeyPath(), 0o644))
	_, err = channel.LoadKeys(dir)
	assert.ErrorContains(t, err, "group or others")
}

// TestShellWithoutTerminal: with no terminal on stdin, Shell allocates no
// pty (as ssh does): the shell reads its commands from stdin and ends at
// its EOF, instead of hanging on a pty that never sees the EOF (issue 24
// item 8: `labctl shell x </dev/null` hung and printed ^[[6n).
func TestShellWithoutTerminal(t *testing.T) {
	c := newLab(t).dial(t)
	shell := func(in *os.File, cmd string) (int, string, string) {
		t.Helper()
		out, err := os.CreateTemp(t.TempDir(), "out")
		require.NoError(t, err)
		errf, err := os.CreateTemp(t.TempDir(), "err")
		require.NoError(t, err)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		code, err := c.Shell(ctx, in, out, errf, cmd)
		require.NoError(t, err, "the shell must end at stdin's EOF")
		o, _ := os.ReadFile(out.Name())
		e, _ := os.ReadFile(errf.Name())
		return code, string(o), string(e)
	}
	devnull, err := os.Open(os.DevNull)
	require.NoError(t, err)
	defer devnull.Close()
	code, out, _ := shell(devnull, "")
	assert.Equal(t, 0, code)
	assert.NotContains(t, out, "\x1b[", "no terminal query without a terminal")

	script := filepath.Join(t.TempDir(), "script")
	require.NoError(t, os.WriteFile(script, []byte("echo hi-$((40+2)); tty; echo oops >&2; exit 5\n"), 0o600))
	in, err := os.Open(script)
	require.NoError(t, err)
	defer in.Close()
	code, out, errOut := shell(in, "")
	assert.Equal(t, 5, code)
	assert.Contains(t, out, "hi-42")
	assert.Contains(t, out, "not a tty")
	assert.Equal(t, "oops\n", errOut, "stderr kept apart without a pty")

	// With a command: stdin is the command's.
	in, err = os.Open(script)
	require.NoError(t, err)
	defer in.Close()
	code, out, _ = shell(in, "wc -l")
	assert.Equal(t, 0, code)
	assert.Equal(t, "1", strings.TrimSpace(out))
}

// The client offers chacha20-poly1305 first (cheap for an emulated guest
// CPU), and the agent accepts it.
func TestClientPrefersChaCha(t *testing.T) {
	keys, err := channel.GenerateKeys(privateDir(t))
	require.NoError(t, err)
	assert.Equal(t, "chacha20-poly1305@openssh.com", keys.ClientConfig().Ciphers[0])
	c := newLab(t).dial(t)
	out, _, code, err := c.Output(testCtx(t), "echo ok")
	require.NoError(t, err)
	assert.Equal(t, 0, code)
	assert.Equal(t, "ok\n", string(out))
}
