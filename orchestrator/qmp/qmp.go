// Package qmp is the lab's QEMU Machine Protocol client: go-qemu's socket
// monitor (connection, handshake, command/response pairing, event
// demultiplexing) with what the lab needs on top of it:
//
//   - every call has a deadline (a wedged QEMU must never hang the lab):
//     go-qemu blocks until QEMU answers, so calls run on a goroutine that
//     the caller abandons at its deadline; the abandoned call still takes
//     the late answer, so the next caller cannot receive it;
//   - typed errors: a QMP error response is an *Error, an ended connection
//     wraps ErrClosed, a deadline wraps context.DeadlineExceeded;
//   - an Events channel that never blocks go-qemu's reader (bounded buffer,
//     oldest dropped) and is closed when the monitor closes.
//
// go-qemu reads QEMU's output line by line with a 64 KiB line limit: a
// longer response (query-qmp-schema, say) ends the monitor (ErrClosed).
// The lab's commands and events are far below it.
package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	goqmp "github.com/digitalocean/go-qemu/qmp"
)

// DefaultTimeout bounds a call whose context has no deadline.
const DefaultTimeout = 5 * time.Second

// EventBuffer is the capacity of the Events channel. When it is full the
// oldest event is dropped: memory stays bounded if nobody reads, and the
// newest events (SHUTDOWN, STOP…), which matter most, are kept.
const EventBuffer = 256

// ErrClosed is wrapped by errors from a Monitor whose connection has ended.
var ErrClosed = errors.New("qmp: monitor closed")

// Error is a QMP error response. go-qemu reports only the description, so
// Class is empty for responses that came through it.
type Error struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *Error) Error() string {
	if e.Class == "" {
		return "qmp: " + e.Desc
	}
	return "qmp: " + e.Class + ": " + e.Desc
}

// Event is an asynchronous QMP event.
type Event struct {
	Name string
	Data json.RawMessage
	Time time.Time // QEMU's timestamp; zero if absent
}

// Monitor is a connected QMP monitor. Its methods are safe for concurrent
// use. The zero Monitor behaves like a closed one.
type Monitor struct {
	mon    goqmp.Monitor
	events chan Event
	done   chan struct{} // closed when go-qemu's reader has ended

	closeOnce sync.Once
	closeErr  error
	closed    atomic.Bool // Close was called (as opposed to QEMU hanging up)
}

// Dial connects to a QMP server ("unix", path or "tcp", host:port) and
// negotiates capabilities, all within ctx (or DefaultTimeout).
func Dial(ctx context.Context, network, addr string) (*Monitor, error) {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	dl, _ := ctx.Deadline()
	sm, err := goqmp.NewSocketMonitor(network, addr, time.Until(dl))
	if err != nil {
		return nil, fmt.Errorf("qmp: dial %s %s: %w", network, addr, err)
	}
	return New(ctx, sm)
}

// New runs the handshake of an unconnected go-qemu monitor within ctx (or
// DefaultTimeout). On failure mon is disconnected; on success the Monitor
// owns it.
func New(ctx context.Context, mon goqmp.Monitor) (*Monitor, error) {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()

	errc := make(chan error, 1)
	go func() { errc <- mon.Connect() }()
	select {
	case err := <-errc:
		if err != nil {
			mon.Disconnect()
			return nil, fmt.Errorf("qmp: handshake: %w", err)
		}
	case <-ctx.Done():
		// Connect has no deadline of its own: closing the socket makes it
		// return. (If it succeeded in this very instant, Disconnect and
		// Connect's bookkeeping overlap; either way the socket is closed.)
		mon.Disconnect()
		<-errc
		return nil, fmt.Errorf("qmp: handshake: %w", ctx.Err())
	}
	evs, err := mon.Events(context.Background())
	if err != nil {
		mon.Disconnect()
		return nil, fmt.Errorf("qmp: subscribing to events: %w", err)
	}
	m := &Monitor{
		mon:    mon,
		events: make(chan Event, EventBuffer),
		done:   make(chan struct{}),
	}
	go m.pump(evs)
	return m, nil
}

func withDefaultTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, DefaultTimeout)
}

// pump moves go-qemu's events to ours until its reader ends (QEMU hung up
// or Close). Draining always matters: go-qemu's reader blocks on an unread
// event, and a blocked reader would also hold back command responses.
func (m *Monitor) pump(evs <-chan goqmp.Event) {
	for e := range evs {
		m.pushEvent(e)
	}
	m.closeMon() // QEMU hung up: release the socket
	close(m.events)
	close(m.done)
}

// pushEvent never blocks: only pump sends, so after making room by
// discarding the oldest event the send is guaranteed to succeed.
func (m *Monitor) pushEvent(e goqmp.Event) {
	ev := Event{Name: e.Event}
	if e.Data != nil {
		ev.Data, _ = json.Marshal(e.Data)
	}
	if ts := e.Timestamp; ts.Seconds != 0 || ts.Microseconds != 0 {
		ev.Time = time.Unix(ts.Seconds, ts.Microseconds*1000)
	}
	for {
		select {
		case m.events <- ev:
			return
		default:
		}
		select {
		case <-m.events:
		default:
		}
	}
}

// Run executes cmd with args (nil for none) and returns the raw "return"
// value. A QMP error response is returned as *Error. Run always gives up at
// ctx's deadline, or after DefaultTimeout if ctx has none.
func (m *Monitor) Run(ctx context.Context, cmd string, args any) (json.RawMessage, error) {
	if m == nil || m.mon == nil {
		return nil, ErrClosed
	}
	select {
	case <-m.done:
		return nil, fmt.Errorf("qmp: %s: %w", cmd, ErrClosed)
	default:
	}
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()

	c := goqmp.Command{Execute: cmd}
	if args != nil {
		b, err := json.Marshal(args)
		if err != nil {
			return nil, fmt.Errorf("qmp: %s: arguments: %w", cmd, err)
		}
		// A typed nil (nil map, nil pointer) means "no arguments" too:
		// QEMU rejects "arguments": null.
		if string(b) != "null" {
			c.Args = json.RawMessage(b)
		}
	}
	req, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("qmp: %s: %w", cmd, err)
	}

	type result struct {
		raw []byte
		err error
	}
	ch := make(chan result, 1) // buffered: an abandoned call does not leak past Close
	go func() {
		raw, err := m.mon.Run(req)
		ch <- result{raw, err}
	}()
	var r result
	select {
	case r = <-ch:
	case <-ctx.Done():
		return nil, fmt.Errorf("qmp: %s: no response: %w", cmd, ctx.Err())
	}
	if r.err != nil {
		if isQMPError(r.err) {
			return nil, &Error{Desc: r.err.Error()}
		}
		// The connection ended (or broke): go-qemu's reader is ending too.
		select {
		case <-m.done:
		case <-ctx.Done():
		}
		return nil, fmt.Errorf("qmp: %s: %w (%v)", cmd, ErrClosed, r.err)
	}
	var resp struct {
		Return json.RawMessage `json:"return"`
	}
	if err := json.Unmarshal(r.raw, &resp); err != nil {
		return nil, fmt.Errorf("qmp: %s: decoding the response: %w", cmd, err)
	}
	return resp.Return, nil
}

// plainErr is the type of errors.New values.
var plainErr = reflect.TypeOf(errors.New(""))

// isQMPError tells go-qemu's error for a QMP error response (an
// errors.New of QEMU's description) from I/O and decoding errors, which all
// have their own types — except the scanner's, which is a known value.
func isQMPError(err error) bool {
	return reflect.TypeOf(err) == plainErr && err != bufio.ErrTooLong && err != bufio.ErrFinalToken
}

// Events returns the event stream. It is closed when the connection ends.
func (m *Monitor) Events() <-chan Event {
	if m == nil || m.events == nil {
		return closedEvents
	}
	return m.events
}

var closedEvents = func() chan Event {
	ch := make(chan Event)
	close(ch)
	return ch
}()

// Close ends the connection. It is idempotent and does not wait for QEMU:
// calls in progress fail with ErrClosed.
func (m *Monitor) Close() error {
	if m == nil || m.mon == nil {
		return nil
	}
	m.closed.Store(true)
	return m.closeMon()
}

func (m *Monitor) closeMon() error {
	m.closeOnce.Do(func() { m.closeErr = m.mon.Disconnect() })
	return m.closeErr
}

// Done is closed when the connection has ended, for whatever reason.
func (m *Monitor) Done() <-chan struct{} {
	if m == nil || m.done == nil {
		return closedDone
	}
	return m.done
}

var closedDone = func() chan struct{} {
	ch := make(chan struct{})
	close(ch)
	return ch
}()

// runNoReturn runs a command whose return value is an empty object.
func (m *Monitor) runNoReturn(ctx context.Context, cmd string, args any) error {
	_, err := m.Run(ctx, cmd, args)
	return err
}

// Status returns the VM run state ("running", "paused", "shutdown", …).
func (m *Monitor) Status(ctx context.Context) (string, error) {
	raw, err := m.Run(ctx, "query-status", nil)
	if err != nil {
		return "", err
	}
	var st struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return "", fmt.Errorf("qmp: query-status: %w", err)
	}
	return st.Status, nil
}

// Quit makes QEMU exit. QEMU may close the socket before its answer arrives,
// so QEMU hanging up counts as success; a Monitor closed by Close does not.
func (m *Monitor) Quit(ctx context.Context) error {
	err := m.runNoReturn(ctx, "quit", nil)
	if errors.Is(err, ErrClosed) && m != nil && !m.closed.Load() {
		return nil
	}
	return err
}

// SystemPowerdown sends an ACPI power button press to the guest.
func (m *Monitor) SystemPowerdown(ctx context.Context) error {
	return m.runNoReturn(ctx, "system_powerdown", nil)
}

// Stop pauses the guest's vCPUs.
func (m *Monitor) Stop(ctx context.Context) error { return m.runNoReturn(ctx, "stop", nil) }

// Cont resumes the guest's vCPUs.
func (m *Monitor) Cont(ctx context.Context) error { return m.runNoReturn(ctx, "cont", nil) }

// HumanMonitorCommand runs an HMP command line (e.g. "info registers") and returns its output.
func (m *Monitor) HumanMonitorCommand(ctx context.Context, cmd string) (string, error) {
	raw, err := m.Run(ctx, "human-monitor-command", map[string]string{"command-line": cmd})
	if err != nil {
		return "", err
	}
	var out string
	if err := json.Unmarshal(raw, &out); err != nil {
		return "", fmt.Errorf("qmp: human-monitor-command: %w", err)
	}
	return out, nil
}
