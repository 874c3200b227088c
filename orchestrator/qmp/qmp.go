// Package qmp is a small QEMU Machine Protocol client.
//
// It exists because go-qemu is not served by the module proxy here, and it
// avoids go-qemu's failure modes the lab cannot afford: every command has a
// deadline (a wedged QEMU must never hang the lab), Close never blocks, and
// responses are matched to commands by the QMP "id" field so that concurrent
// calls and late answers to timed-out calls cannot be mixed up.
package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultTimeout bounds a call whose context has no deadline.
const DefaultTimeout = 5 * time.Second

// EventBuffer is the capacity of the Events channel. When it is full the
// oldest event is dropped: memory stays bounded if nobody reads, and the
// newest events (SHUTDOWN, STOP…), which matter most, are kept.
const EventBuffer = 256

// ErrClosed is wrapped by errors from a Monitor whose connection has ended.
var ErrClosed = errors.New("qmp: monitor closed")

// Error is a QMP error response.
type Error struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *Error) Error() string { return "qmp: " + e.Class + ": " + e.Desc }

// Event is an asynchronous QMP event.
type Event struct {
	Name string
	Data json.RawMessage
	Time time.Time // QEMU's timestamp; zero if absent
}

// message is any object QEMU sends: greeting, response or event.
type message struct {
	QMP       json.RawMessage `json:"QMP"`
	Return    json.RawMessage `json:"return"`
	Error     *Error          `json:"error"`
	ID        json.RawMessage `json:"id"`
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	Timestamp *struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

type request struct {
	Execute   string          `json:"execute"`
	Arguments json.RawMessage `json:"arguments,omitempty"`
	ID        string          `json:"id"`
}

type response struct {
	ret json.RawMessage
	err error
}

// Monitor is a QMP connection. Its methods are safe for concurrent use.
// The zero Monitor behaves like a closed one.
type Monitor struct {
	conn   net.Conn
	wsem   chan struct{} // one writer at a time; a channel so waiting honours ctx
	events chan Event
	done   chan struct{} // closed when the reader goroutine ends

	mu      sync.Mutex
	pending map[string]chan response
	nextID  uint64
	err     error // why the connection ended; set before done is closed

	closeOnce sync.Once
	closeErr  error
	closed    atomic.Bool // Close was called (as opposed to QEMU hanging up)
}

// Dial connects to a QMP server ("unix", path or "tcp", host:port), reads the
// greeting and negotiates capabilities, all within ctx (or DefaultTimeout).
func Dial(ctx context.Context, network, addr string) (*Monitor, error) {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("qmp: dial %s %s: %w", network, addr, err)
	}
	return New(ctx, conn)
}

// New runs the QMP handshake over conn, within ctx (or DefaultTimeout). On
// failure conn is closed; on success the Monitor owns it.
func New(ctx context.Context, conn net.Conn) (*Monitor, error) {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()

	dec := json.NewDecoder(conn)
	if err := readGreeting(ctx, conn, dec); err != nil {
		conn.Close()
		return nil, err
	}
	m := &Monitor{
		conn:    conn,
		wsem:    make(chan struct{}, 1),
		events:  make(chan Event, EventBuffer),
		done:    make(chan struct{}),
		pending: make(map[string]chan response),
	}
	go m.readLoop(dec)
	if _, err := m.Run(ctx, "qmp_capabilities", nil); err != nil {
		m.Close()
		return nil, fmt.Errorf("qmp: negotiating capabilities: %w", err)
	}
	return m, nil
}

func withDefaultTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, DefaultTimeout)
}

// readGreeting reads the {"QMP": …} banner. The read deadline makes the
// context bind a blocking Read; interruptOnDone covers early cancellation.
func readGreeting(ctx context.Context, conn net.Conn, dec *json.Decoder) error {
	dl, _ := ctx.Deadline()
	if err := conn.SetReadDeadline(dl); err != nil {
		return fmt.Errorf("qmp: greeting: %w", err)
	}
	stop := interruptOnDone(ctx, conn.SetReadDeadline)
	var g message
	err := dec.Decode(&g)
	stop()
	if err != nil {
		if cerr := deadlineErr(ctx, err); cerr != nil {
			err = cerr
		}
		return fmt.Errorf("qmp: reading greeting: %w", err)
	}
	if g.QMP == nil {
		return errors.New("qmp: server did not send a QMP greeting")
	}
	// Clear the deadline so that the reader goroutine can wait for events forever.
	if err := conn.SetReadDeadline(time.Time{}); err != nil {
		return fmt.Errorf("qmp: greeting: %w", err)
	}
	return nil
}

// interruptOnDone calls set(time.Now()) when ctx ends, to unblock I/O in
// progress. Unlike a bare context.AfterFunc, once the returned stop has
// returned set is guaranteed not to run: a late callback must not cut short
// the reader's or the next writer's I/O.
func interruptOnDone(ctx context.Context, set func(time.Time) error) (stop func()) {
	var mu sync.Mutex
	active := true
	stopAF := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if active {
			set(time.Now())
		}
	})
	return func() {
		stopAF()
		mu.Lock()
		active = false
		mu.Unlock()
	}
}

// readLoop dispatches everything QEMU sends until the connection ends.
func (m *Monitor) readLoop(dec *json.Decoder) {
	var err error
	for {
		var msg message
		if err = dec.Decode(&msg); err != nil {
			break
		}
		switch {
		case msg.Event != "":
			m.pushEvent(msg)
		case msg.Return != nil || msg.Error != nil:
			m.deliver(msg)
		}
		// Anything else (a second greeting, unknown shapes) is ignored: the
		// protocol may grow and an unknown message must not kill the monitor.
	}

	m.mu.Lock()
	m.err = fmt.Errorf("%w: %v", ErrClosed, err)
	pending := m.pending
	m.pending = nil
	m.mu.Unlock()
	for _, ch := range pending {
		ch <- response{err: m.err}
	}
	// A decode error leaves the stream unusable; close so writers fail fast.
	m.closeConn()
	close(m.events)
	close(m.done)
}

func (m *Monitor) deliver(msg message) {
	var id string
	if json.Unmarshal(msg.ID, &id) != nil {
		return // not one of ours
	}
	m.mu.Lock()
	ch, ok := m.pending[id]
	delete(m.pending, id)
	m.mu.Unlock()
	if !ok {
		return // the caller gave up (deadline); drop the late answer
	}
	if msg.Error != nil {
		ch <- response{err: msg.Error}
		return
	}
	ch <- response{ret: msg.Return}
}

// pushEvent never blocks: only this goroutine sends, so after making room by
// discarding the oldest event the send is guaranteed to succeed.
func (m *Monitor) pushEvent(msg message) {
	ev := Event{Name: msg.Event, Data: msg.Data}
	if ts := msg.Timestamp; ts != nil && (ts.Seconds != 0 || ts.Microseconds != 0) {
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
	if m == nil || m.conn == nil {
		return nil, ErrClosed
	}
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()

	req := request{Execute: cmd}
	if args != nil {
		b, err := json.Marshal(args)
		if err != nil {
			return nil, fmt.Errorf("qmp: %s: arguments: %w", cmd, err)
		}
		// A typed nil (nil map, nil pointer) means "no arguments" too:
		// QEMU rejects "arguments": null.
		if string(b) != "null" {
			req.Arguments = b
		}
	}

	ch := make(chan response, 1) // buffered: deliver never blocks on a gone caller
	m.mu.Lock()
	if m.pending == nil {
		err := m.err
		m.mu.Unlock()
		return nil, fmt.Errorf("qmp: %s: %w", cmd, err)
	}
	m.nextID++
	id := strconv.FormatUint(m.nextID, 10)
	m.pending[id] = ch
	m.mu.Unlock()

	req.ID = id
	if err := m.send(ctx, req); err != nil {
		m.forget(id)
		return nil, fmt.Errorf("qmp: %s: %w", cmd, err)
	}
	select {
	case r := <-ch:
		if r.err != nil {
			var qe *Error
			if errors.As(r.err, &qe) {
				return nil, qe
			}
			return nil, fmt.Errorf("qmp: %s: %w", cmd, r.err)
		}
		return r.ret, nil
	case <-ctx.Done():
		m.forget(id)
		return nil, fmt.Errorf("qmp: %s: no response: %w", cmd, ctx.Err())
	}
}

func (m *Monitor) forget(id string) {
	m.mu.Lock()
	delete(m.pending, id)
	m.mu.Unlock()
}

// send writes one request. A write that fails after sending part of the
// request leaves QEMU's parser mid-object, so the connection is closed.
func (m *Monitor) send(ctx context.Context, req request) error {
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	select {
	case m.wsem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	case <-m.done:
		return m.closedErr()
	}
	defer func() { <-m.wsem }()

	dl, _ := ctx.Deadline()
	m.conn.SetWriteDeadline(dl)
	stop := interruptOnDone(ctx, m.conn.SetWriteDeadline)
	n, err := m.conn.Write(b)
	stop()
	if err == nil {
		return nil
	}
	if n > 0 {
		m.closeConn()
	}
	if cerr := deadlineErr(ctx, err); cerr != nil {
		return cerr
	}
	return fmt.Errorf("%w: %v", ErrClosed, err)
}

// deadlineErr reports an I/O error caused by ctx as a context error. The
// conn deadline may fire a moment before ctx's own timer, so an I/O timeout
// counts as the context's deadline even while ctx.Err() is still nil.
func deadlineErr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%w (%v)", cerr, err)
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("%w (%v)", context.DeadlineExceeded, err)
	}
	return nil
}

func (m *Monitor) closedErr() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err != nil {
		return m.err
	}
	return ErrClosed
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

// Close ends the connection. It is idempotent and never waits: pending calls
// fail with ErrClosed once the reader goroutine sees the closed connection.
func (m *Monitor) Close() error {
	if m == nil || m.conn == nil {
		return nil
	}
	m.closed.Store(true)
	return m.closeConn()
}

func (m *Monitor) closeConn() error {
	m.closeOnce.Do(func() { m.closeErr = m.conn.Close() })
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
