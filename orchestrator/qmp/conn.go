package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"
)

// Conn is a plain QMP connection on a unix socket, one command at a time,
// that can hand QEMU a file descriptor (getfd), which go-qemu's Monitor
// cannot: `labctl dump` gives QEMU a file it opened itself, so that the
// file is the user's and appears only when complete. Events are skipped.
type Conn struct {
	c *net.UnixConn
	r *bufio.Reader
}

// DialConn connects to the QMP server at path and negotiates
// capabilities, within ctx (or DefaultTimeout).
func DialConn(ctx context.Context, path string) (*Conn, error) {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("qmp: dial %s: %w", path, err)
	}
	c := &Conn{c: nc.(*net.UnixConn), r: bufio.NewReaderSize(nc, 64<<10)}
	stop := c.bound(ctx)
	line, err := c.r.ReadBytes('\n')
	stop()
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("qmp: reading the greeting on %s: %w", path, c.ctxErr(ctx, err))
	}
	var greet struct {
		QMP *json.RawMessage `json:"QMP"`
	}
	if json.Unmarshal(line, &greet) != nil || greet.QMP == nil {
		c.Close()
		return nil, fmt.Errorf("qmp: %s is not a QMP monitor (it said %.80q)", path, line)
	}
	if _, err := c.Execute(ctx, "qmp_capabilities", nil); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Close ends the connection.
func (c *Conn) Close() error { return c.c.Close() }

// Execute runs one command and returns its "return" value; a QMP error
// response is an *Error.
func (c *Conn) Execute(ctx context.Context, cmd string, args any) (json.RawMessage, error) {
	return c.exec(ctx, cmd, args, nil)
}

// SendFD hands f to QEMU under name (QMP getfd): commands then name it
// as "fd:NAME". QEMU holds its own copy; the caller may close f.
func (c *Conn) SendFD(ctx context.Context, name string, f *os.File) error {
	_, err := c.exec(ctx, "getfd", map[string]string{"fdname": name}, syscall.UnixRights(int(f.Fd())))
	return err
}

func (c *Conn) exec(ctx context.Context, cmd string, args any, oob []byte) (json.RawMessage, error) {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("qmp: encoding %s: %w", cmd, err)
	}
	stop := c.bound(ctx)
	defer stop()
	// The descriptor travels with the command's first byte: QEMU takes
	// it from the message that carries the getfd request.
	if _, _, err := c.c.WriteMsgUnix(append(b, '\n'), oob, nil); err != nil {
		return nil, fmt.Errorf("qmp: %s: %w", cmd, c.ctxErr(ctx, err))
	}
	for {
		line, err := c.r.ReadBytes('\n')
		if err != nil {
			return nil, fmt.Errorf("qmp: %s: %w", cmd, c.ctxErr(ctx, err))
		}
		var resp struct {
			Return json.RawMessage `json:"return"`
			Error  *Error          `json:"error"`
			Event  string          `json:"event"`
		}
		if err := json.Unmarshal(line, &resp); err != nil {
			return nil, fmt.Errorf("qmp: %s: unreadable response %.80q: %w", cmd, line, err)
		}
		switch {
		case resp.Event != "":
			continue
		case resp.Error != nil:
			return nil, resp.Error
		case resp.Return != nil:
			return resp.Return, nil
		}
		return nil, fmt.Errorf("qmp: %s: response without return or error: %.80q", cmd, line)
	}
}

// bound makes the socket's reads and writes fail at ctx's deadline or
// cancellation; stop undoes it.
func (c *Conn) bound(ctx context.Context) (stop func()) {
	if dl, ok := ctx.Deadline(); ok {
		c.c.SetDeadline(dl)
	}
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			c.c.SetDeadline(time.Unix(1, 0)) // now: unblocks the reader
		case <-done:
		}
	}()
	return func() {
		close(done)
		c.c.SetDeadline(time.Time{})
	}
}

// ctxErr says that an I/O error was the deadline (or cancellation) when
// it was.
func (c *Conn) ctxErr(ctx context.Context, err error) error {
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		return err
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	// The socket's deadline is ctx's: its timer may fire first.
	if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
		return context.DeadlineExceeded
	}
	return err
}
