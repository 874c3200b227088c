package libvirt

// The connection to libvirtd: dialled over a unix socket, SSH or TCP, and
// cut when a call's deadline passes.

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"sync"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket"
)

// DefaultURI is the connection used when none is given.
const DefaultURI = "qemu:///system"

// conn is a go-libvirt connection that can be cut. go-libvirt waits for
// libvirtd's answer to a call forever (a wedged daemon would hang the lab),
// so every use is bounded by a context whose end closes the socket under
// go-libvirt, which fails the pending calls.
type conn struct {
	*golibvirt.Libvirt
	u *url.URL

	mu  sync.Mutex
	raw net.Conn
}

// Dial implements socket.Dialer, keeping the net.Conn to cut.
type cuttableDialer struct {
	socket.Dialer
	c *conn
}

func (d cuttableDialer) Dial() (net.Conn, error) {
	nc, err := d.Dialer.Dial()
	if err == nil {
		d.c.mu.Lock()
		d.c.raw = nc
		d.c.mu.Unlock()
	}
	return nc, err
}

// abort closes the socket: pending and later calls fail at once.
func (c *conn) abort() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.raw != nil {
		c.raw.Close()
	}
}

// bound makes ctx's end abort the connection; call the returned stop
// when the bounded work is over.
func (c *conn) bound(ctx context.Context) (stop func() bool) {
	return context.AfterFunc(ctx, c.abort)
}

// dead says whether the connection is gone (aborted or lost).
func (c *conn) dead() bool {
	select {
	case <-c.Disconnected():
		return true
	default:
		return false
	}
}

// close says goodbye to libvirtd, within a few seconds.
func (c *conn) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	defer c.bound(ctx)()
	err := c.Disconnect()
	c.abort()
	return err
}

// connect opens a connection to uri within ctx (or 10 s).
func connect(ctx context.Context, uri string) (*conn, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return nil, fmt.Errorf("libvirt URI %q: %w", uri, err)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
	}
	dl, _ := ctx.Deadline()
	d, err := dialerFor(u, time.Until(dl))
	if err != nil {
		return nil, err
	}
	c := &conn{u: u}
	c.Libvirt = golibvirt.NewWithDialer(cuttableDialer{d, c})
	stop := c.bound(ctx)
	err = c.ConnectToURI(golibvirt.RemoteURI(u))
	stop()
	if err != nil {
		c.abort()
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		return nil, fmt.Errorf("connecting to libvirtd at %s: %w (is libvirtd running? `labctl setup --backend libvirt` starts a local one)", u.Redacted(), err)
	}
	return c, nil
}

// isLocal says whether the URI reaches this machine's daemon, where the
// lab's own accelerator probe applies.
func isLocal(u *url.URL) bool {
	h := u.Hostname()
	return h == "" || h == "localhost" || h == "127.0.0.1" || h == "::1"
}
