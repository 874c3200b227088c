package lab

// Commands and copies in the guest, each turned into a typed error when
// the guest fails under it.

import (
	"context"
	"fmt"
	"io"
	"time"

	"ldtlab/orchestrator/channel"
	"ldtlab/orchestrator/vm"
)

// Result of one guest command.
type Result struct {
	Stdout, Stderr []byte
	Code           int
	Took           time.Duration
	// Dropped counts the output bytes not kept: past maxRunOutput a
	// stream keeps its head and tail with a note between them.
	Dropped int64
}

// Run runs a shell command in the guest with the default command timeout
// (unless ctx has an earlier deadline). A non-zero exit is not an error;
// a crash or hang of the guest during the command is.
func (m *Machine) Run(ctx context.Context, cmd string) (Result, error) {
	return m.RunWith(ctx, cmd, channel.RunOptions{})
}

// RunWith is Run with stdin, streaming outputs and environment.
func (m *Machine) RunWith(ctx context.Context, cmd string, opts channel.RunOptions) (Result, error) {
	c, err := m.Client(ctx)
	if err != nil {
		return Result{}, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, m.Timeouts.Command)
		defer cancel()
	}
	so, se := &headTail{max: maxRunOutput}, &headTail{max: maxRunOutput}
	if opts.Stdout == nil {
		opts.Stdout = so
	} else {
		opts.Stdout = io.MultiWriter(opts.Stdout, so)
	}
	if opts.Stderr == nil {
		opts.Stderr = se
	} else {
		opts.Stderr = io.MultiWriter(opts.Stderr, se)
	}
	// The command is abandoned the moment the guest panics or dies.
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-m.panic:
			cancel()
		case <-m.inst.Done():
			cancel()
		case <-rctx.Done():
		}
	}()
	start := time.Now()
	code, err := c.Run(rctx, cmd, opts)
	res := Result{Stdout: so.Bytes(), Stderr: se.Bytes(), Code: code, Took: time.Since(start), Dropped: so.Dropped() + se.Dropped()}
	if err == nil {
		return res, nil
	}
	if ctx.Err() == nil {
		// A dropped connection usually means the VM is going away: give
		// the exit (or panic) event a moment to arrive, so the error says
		// what happened to the guest rather than what happened to the
		// connection.
		select {
		case <-m.inst.Done():
		case <-m.panic:
		case <-time.After(time.Second):
		}
	}
	if gerr := m.guestFailure(); gerr != nil {
		return res, gerr
	}
	if d := m.DiskError(); d != "" {
		return res, &vm.InfraError{Op: "running " + quote(cmd), Err: fmt.Errorf("%v (the host disk failed: %s)", err, d)}
	}
	m.mu.Lock()
	broke := m.mux != nil && isClosed(m.mux.Done())
	m.mu.Unlock()
	if broke && ctx.Err() == nil {
		// The VM runs and the kernel reported nothing: the agent went away
		// (the OOM killer, a kill); init restarts it and the next command
		// reconnects.
		return res, &vm.InfraError{Op: "running " + quote(cmd), Err: fmt.Errorf("the guest agent went away during the command (%v); it is restarted by the guest's init and reconnected on the next command", err)}
	}
	if ctx.Err() != nil {
		// Is the guest still alive, or did it hang?
		pctx, pcancel := context.WithTimeout(context.Background(), m.Timeouts.Ping)
		perr := c.Ping(pctx)
		pcancel()
		if perr != nil {
			return res, &vm.HangError{Phase: "command " + quote(cmd), After: time.Since(start), Tail: m.Tail(40)}
		}
		return res, fmt.Errorf("guest command %s: %w (the remote process was killed)", quote(cmd), ctx.Err())
	}
	return res, &vm.InfraError{Op: "running " + quote(cmd), Err: err}
}

// Download copies a guest file or directory tree to the host (SFTP over
// the guest channel).
func (m *Machine) Download(ctx context.Context, remote, local string) error {
	c, err := m.Client(ctx)
	if err != nil {
		return err
	}
	if err := c.Download(ctx, remote, local, channel.CopyOptions{}); err != nil {
		if gerr := m.guestFailure(); gerr != nil {
			return gerr
		}
		return err
	}
	return nil
}

// Upload copies a host file or directory tree into the guest.
func (m *Machine) Upload(ctx context.Context, local, remote string) error {
	c, err := m.Client(ctx)
	if err != nil {
		return err
	}
	if err := c.Upload(ctx, local, remote, channel.CopyOptions{}); err != nil {
		if gerr := m.guestFailure(); gerr != nil {
			return gerr
		}
		return err
	}
	return nil
}

func quote(s string) string {
	if len(s) > 60 {
		s = s[:57] + "..."
	}
	return fmt.Sprintf("%q", s)
}

// Ping checks that the guest agent answers within the scaled timeout.
func (m *Machine) Ping(ctx context.Context) error {
	c, err := m.Client(ctx)
	if err != nil {
		return err
	}
	pctx, cancel := context.WithTimeout(ctx, m.Timeouts.Ping)
	defer cancel()
	if err := c.Ping(pctx); err != nil {
		if gerr := m.guestFailure(); gerr != nil {
			return gerr
		}
		return &vm.HangError{Phase: "ping", After: m.Timeouts.Ping, Tail: m.Tail(40)}
	}
	return nil
}
