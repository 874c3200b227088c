package lab

// The guest channel: the boot handshake, the shared SSH client, and the
// reconnection to an agent the guest's init restarted.

import (
	"context"
	"errors"
	"fmt"
	"net"

	"ldtlab/orchestrator/channel"
	"ldtlab/orchestrator/vm"
)

// waitReady waits for the agent's handshake, or for the reason it will
// never come.
func (m *Machine) waitReady(ctx context.Context) error {
	bctx, cancel := context.WithTimeout(ctx, m.Timeouts.Boot)
	defer cancel()
	type result struct {
		mux *channel.Mux
		err error
	}
	ready := make(chan result, 1)
	go func() {
		mux, err := m.handshake(bctx)
		ready <- result{mux, err}
	}()
	select {
	case r := <-ready:
		if r.err == nil {
			m.mu.Lock()
			m.mux = r.mux
			m.mu.Unlock()
			return nil
		}
		// The handshake failed: find out whether the guest is to blame.
		if err := m.guestFailure(); err != nil {
			return err
		}
		if bctx.Err() != nil && ctx.Err() == nil {
			return &vm.HangError{Phase: "boot (waiting for the guest agent)", After: m.Timeouts.Boot, Tail: m.Tail(40)}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return &vm.InfraError{Op: "connecting to the guest agent", Err: r.err}
	case <-m.panic:
		return m.crashError()
	case <-m.inst.Done():
		if err := m.guestFailure(); err != nil {
			return err
		}
		return &vm.BootError{Reason: "QEMU exited before the guest agent was ready: " + m.died(), Tail: m.Tail(40)}
	}
}

// Reconnects counts how often the guest agent was found restarted (by
// the guest's init, after the OOM killer, say) and reconnected.
func (m *Machine) Reconnects() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.reconnects
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// Client returns the machine's shared SSH client, connecting on first use
// and reconnecting when the guest channel broke (a restarted agent). The
// lock is not held while dialing: Close and other callers never wait for
// a slow guest.
func (m *Machine) Client(ctx context.Context) (*channel.Client, error) {
	for {
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			return nil, &vm.InfraError{Op: "using the guest channel", Err: errors.New("the machine is closed")}
		}
		if m.client != nil && !isClosed(m.mux.Done()) {
			c := m.client
			m.mu.Unlock()
			return c, nil
		}
		if w := m.dialing; w != nil {
			m.mu.Unlock()
			select {
			case <-w:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		w := make(chan struct{})
		m.dialing = w
		old, mux := m.client, m.mux
		m.client = nil
		m.mu.Unlock()
		if old != nil {
			old.Close()
		}
		c, err := m.dial(ctx, mux)
		m.mu.Lock()
		m.dialing = nil
		if err == nil {
			if m.closed {
				c.Close()
				err = &vm.InfraError{Op: "using the guest channel", Err: errors.New("the machine is closed")}
			} else {
				m.client = c
			}
		}
		m.mu.Unlock()
		close(w)
		return c, err
	}
}

// currentMux returns a live guest channel, reconnecting if it broke.
func (m *Machine) currentMux(ctx context.Context) (*channel.Mux, error) {
	m.mu.Lock()
	mux := m.mux
	m.mu.Unlock()
	if mux != nil && !isClosed(mux.Done()) {
		return mux, nil
	}
	if _, err := m.Client(ctx); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.mux, nil
}

// dial opens an SSH connection over mux, first re-running the channel
// handshake when mux is gone while the VM runs: the agent was restarted.
func (m *Machine) dial(ctx context.Context, mux *channel.Mux) (*channel.Client, error) {
	if mux == nil || isClosed(mux.Done()) {
		if gerr := m.guestFailure(); gerr != nil {
			return nil, gerr
		}
		if mux != nil {
			mux.Close()
		}
		hctx, cancel := context.WithTimeout(ctx, m.Timeouts.Boot)
		nm, err := m.handshake(hctx)
		cancel()
		if err != nil {
			if gerr := m.guestFailure(); gerr != nil {
				return nil, gerr
			}
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, &vm.HangError{Phase: "reconnecting to a restarted guest agent (" + err.Error() + ")", After: m.Timeouts.Boot, Tail: m.Tail(40)}
		}
		m.mu.Lock()
		m.mux = nm
		m.reconnects++
		n := m.reconnects
		m.mu.Unlock()
		mux = nm
		fmt.Fprintf(m.log, "[lab] %s: the guest agent restarted; reconnected (%d so far)\n", m.Name, n)
	}
	cctx, cancel := context.WithTimeout(ctx, m.Timeouts.Ping*2)
	defer cancel()
	conn, err := mux.Open(cctx)
	if err != nil {
		return nil, &vm.InfraError{Op: "opening a guest channel stream", Err: err}
	}
	c, err := channel.Dial(cctx, conn, m.keys)
	if err != nil {
		conn.Close()
		if gerr := m.guestFailure(); gerr != nil {
			return nil, gerr
		}
		var ne net.Error
		if (cctx.Err() != nil || errors.As(err, &ne) && ne.Timeout()) && ctx.Err() == nil {
			// The agent was up once; a guest that stops answering is hung.
			return nil, &vm.HangError{Phase: "ssh handshake with the guest agent", After: m.Timeouts.Ping * 2, Tail: m.Tail(40)}
		}
		return nil, &vm.InfraError{Op: "ssh handshake with the guest agent", Err: err}
	}
	return c, nil
}

// handshake connects to the guest channel port and runs its handshake.
func (m *Machine) handshake(ctx context.Context) (*channel.Mux, error) {
	ctl, err := m.inst.Control(ctx)
	if err != nil {
		return nil, err
	}
	mux, err := channel.Handshake(ctx, ctl)
	if err != nil {
		ctl.Close()
		return nil, err
	}
	return mux, nil
}

// Serve pipes every connection accepted on l into a new stream of the
// guest channel (the supervisor's ssh.sock), across agent restarts.
func (m *Machine) Serve(l net.Listener) error {
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		go func() {
			mux, err := m.currentMux(context.Background())
			if err != nil {
				c.Close()
				return
			}
			mux.Pipe(c)
		}()
	}
}
