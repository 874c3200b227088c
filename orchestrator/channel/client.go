package channel

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"sort"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"
	"golang.org/x/term"
)

// Client is one SSH connection to the guest agent.
type Client struct {
	ssh *ssh.Client
}

// RunOptions are the standard streams and extra environment of a command.
// Nil streams mean empty input and discarded output.
type RunOptions struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	Env            map[string]string
}

// Dial runs the SSH handshake on conn (normally a stream from Mux.Open),
// bounded by ctx. On failure conn is closed.
func Dial(ctx context.Context, conn net.Conn, keys *Keys) (*Client, error) {
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	c, chans, reqs, err := ssh.NewClientConn(conn, HostKeyAlias, keys.ClientConfig())
	if !stop() {
		if err == nil {
			c.Close()
		}
		err = ctx.Err()
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("ssh handshake with guest agent: %w", err)
	}
	_ = conn.SetDeadline(time.Time{})
	return &Client{ssh: ssh.NewClient(c, chans, reqs)}, nil
}

// SSH is the underlying x/crypto/ssh client.
func (c *Client) SSH() *ssh.Client { return c.ssh }

// Close closes the connection; running commands are killed by the agent.
func (c *Client) Close() error { return c.ssh.Close() }

// Ping sends a keepalive request and waits for the answer (any answer) until
// ctx is done.
func (c *Client) Ping(ctx context.Context) error {
	done := make(chan error, 1)
	go func() {
		_, _, err := c.ssh.SendRequest("keepalive@openssh.com", true, nil)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("pinging guest agent: %w", err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("pinging guest agent: %w", ctx.Err())
	}
}

// Run runs cmd with the guest shell and returns its exit code. A non-zero
// exit is not an error; a command killed by signal N gives 128+N. err is
// reserved for transport failures and ctx: when ctx is done the remote
// process group is killed and the returned error wraps ctx.Err().
func (c *Client) Run(ctx context.Context, cmd string, opts RunOptions) (int, error) {
	s, err := c.newSession(opts.Env)
	if err != nil {
		return -1, fmt.Errorf("run %q: %w", cmd, err)
	}
	defer s.Close()
	// Gates: once Run gives up on a dead guest, late output is dropped
	// instead of racing with the caller reading its buffers.
	stdout, stderr := &gate{w: opts.Stdout}, &gate{w: opts.Stderr}
	s.Stdin = opts.Stdin
	if opts.Stdout != nil {
		s.Stdout = stdout
	}
	if opts.Stderr != nil {
		s.Stderr = stderr
	}
	if err := s.Start(cmd); err != nil {
		return -1, fmt.Errorf("run %q: starting: %w", cmd, err)
	}
	code, err := wait(ctx, s, stdout, stderr)
	if err != nil {
		return -1, fmt.Errorf("run %q: %w", cmd, err)
	}
	return code, nil
}

// Output runs cmd and collects its output.
func (c *Client) Output(ctx context.Context, cmd string) (stdout, stderr []byte, code int, err error) {
	var o, e bytes.Buffer
	code, err = c.Run(ctx, cmd, RunOptions{Stdout: &o, Stderr: &e})
	return o.Bytes(), e.Bytes(), code, err
}

// Shell runs cmd (a login shell when empty). When in is a terminal, as
// ssh does: on a pty sized like out (or in), with TERM from the
// environment, in put in raw mode for the duration and SIGWINCH forwarded
// as window-change; the pty merges the command's stdout and stderr into
// out. Otherwise no pty: the command (the shell reading its commands from
// in) gets in, out and errw as plain streams and ends at in's EOF.
func (c *Client) Shell(ctx context.Context, in, out, errw *os.File, cmd string) (int, error) {
	what := "shell"
	if cmd != "" {
		what = fmt.Sprintf("shell %q", cmd)
	}
	s, err := c.newSession(nil)
	if err != nil {
		return -1, fmt.Errorf("%s: %w", what, err)
	}
	defer s.Close()

	if !term.IsTerminal(int(in.Fd())) {
		stdout, stderr := &gate{w: out}, &gate{w: errw}
		s.Stdin, s.Stdout, s.Stderr = in, stdout, stderr
		if cmd == "" {
			err = s.Shell()
		} else {
			err = s.Start(cmd)
		}
		if err != nil {
			return -1, fmt.Errorf("%s: starting: %w", what, err)
		}
		code, err := wait(ctx, s, stdout, stderr)
		if err != nil {
			return -1, fmt.Errorf("%s: %w", what, err)
		}
		return code, nil
	}

	cols, rows := termSize(out, in)
	termName := os.Getenv("TERM")
	if termName == "" {
		termName = "xterm-256color"
	}
	if err := s.RequestPty(termName, rows, cols, ssh.TerminalModes{}); err != nil {
		return -1, fmt.Errorf("%s: requesting pty: %w", what, err)
	}
	st, err := term.MakeRaw(int(in.Fd()))
	if err != nil {
		return -1, fmt.Errorf("%s: raw mode: %w", what, err)
	}
	defer term.Restore(int(in.Fd()), st)
	winch := make(chan os.Signal, 1)
	signal.Notify(winch, syscall.SIGWINCH)
	defer signal.Stop(winch)
	stopWinch := make(chan struct{})
	defer close(stopWinch)
	go func() {
		for {
			select {
			case <-winch:
				cols, rows := termSize(out, in)
				_ = s.WindowChange(rows, cols)
			case <-stopWinch:
				return
			}
		}
	}()

	s.Stdin, s.Stdout, s.Stderr = in, out, out
	if cmd == "" {
		err = s.Shell()
	} else {
		err = s.Start(cmd)
	}
	if err != nil {
		return -1, fmt.Errorf("%s: starting: %w", what, err)
	}
	code, err := wait(ctx, s)
	if err != nil {
		return -1, fmt.Errorf("%s: %w", what, err)
	}
	return code, nil
}

// termSize returns the size of the first terminal among fs, 80x24 otherwise.
func termSize(fs ...*os.File) (cols, rows int) {
	for _, f := range fs {
		if f == nil {
			continue
		}
		if w, h, err := term.GetSize(int(f.Fd())); err == nil && w > 0 && h > 0 {
			return w, h
		}
	}
	return 80, 24
}

func (c *Client) newSession(env map[string]string) (*ssh.Session, error) {
	s, err := c.ssh.NewSession()
	if err != nil {
		return nil, fmt.Errorf("opening ssh session: %w", err)
	}
	// Sorted so that a failure is reported deterministically.
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if err := s.Setenv(k, env[k]); err != nil {
			s.Close()
			return nil, fmt.Errorf("setting %s: %w", k, err)
		}
	}
	return s, nil
}

// wait waits for a started session. On ctx done it sends KILL and closes the
// channel; the agent kills the process group either way.
func wait(ctx context.Context, s *ssh.Session, gates ...*gate) (int, error) {
	done := make(chan error, 1)
	go func() { done <- s.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		_ = s.Signal(ssh.SIGKILL)
		s.Close()
		// A live agent closes the channel at once; a dead guest (panic,
		// hang) never will, and Wait would block until the connection
		// is torn down. Give up after a grace period.
		select {
		case <-done:
		case <-time.After(abandonGrace):
		}
		for _, g := range gates {
			g.close()
		}
		return -1, ctx.Err()
	}
	return exitCode(err)
}

// abandonGrace bounds the wait for a cancelled session to close.
var abandonGrace = 2 * time.Second

// gate forwards writes until closed, then drops them.
type gate struct {
	mu     sync.Mutex
	w      io.Writer
	closed bool
}

func (g *gate) Write(p []byte) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed || g.w == nil {
		return len(p), nil
	}
	return g.w.Write(p)
}

func (g *gate) close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
}

// exitCode maps the result of Session.Wait to a shell-style exit code.
func exitCode(err error) (int, error) {
	var ee *ssh.ExitError
	switch {
	case err == nil:
		return 0, nil
	case errors.As(err, &ee):
		if sig := ee.Signal(); sig != "" {
			if n := unix.SignalNum("SIG" + sig); n != 0 {
				return 128 + int(n), nil
			}
			return 128, nil
		}
		return ee.ExitStatus(), nil
	}
	return -1, err
}
