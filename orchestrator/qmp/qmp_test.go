package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	goqmp "github.com/digitalocean/go-qemu/qmp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeQMP is the server end of a net.Pipe speaking just enough QMP.
type fakeQMP struct {
	conn net.Conn
	dec  *json.Decoder
	wmu  sync.Mutex
}

type fakeReq struct {
	Execute   string          `json:"execute"`
	Arguments json.RawMessage `json:"arguments"`
	ID        json.RawMessage `json:"id"`
}

const greeting = `{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}`

func (f *fakeQMP) sendRaw(s string) error {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	_, err := f.conn.Write([]byte(s + "\r\n")) // QEMU ends lines with CRLF
	return err
}

func (f *fakeQMP) reply(r fakeReq, ret string) error {
	return f.sendRaw(fmt.Sprintf(`{"return": %s%s}`, ret, idField(r)))
}

// idField echoes the request's id, if it had one (go-qemu sends none).
func idField(r fakeReq) string {
	if r.ID == nil {
		return ""
	}
	return `, "id": ` + string(r.ID)
}

func (f *fakeQMP) event(name string, i int) error {
	return f.sendRaw(fmt.Sprintf(`{"timestamp": {"seconds": 1700000000, "microseconds": %d}, "event": %q, "data": {"n": %d}}`, i, name, i))
}

func (f *fakeQMP) recv() (fakeReq, error) {
	var r fakeReq
	err := f.dec.Decode(&r)
	return r, err
}

// handshake plays QEMU's side of the greeting and capabilities negotiation.
func (f *fakeQMP) handshake() error {
	if err := f.sendRaw(greeting); err != nil {
		return err
	}
	r, err := f.recv()
	if err != nil {
		return err
	}
	if r.Execute != "qmp_capabilities" {
		return fmt.Errorf("first command %q, want qmp_capabilities", r.Execute)
	}
	return f.reply(r, "{}")
}

// listenFake serves one fake QMP connection on a unix socket, as QEMU's
// -qmp unix:…,server=on does; accept waits for the client.
func listenFake(t *testing.T) (sock string, accept func() (*fakeQMP, error)) {
	t.Helper()
	sock = filepath.Join(t.TempDir(), "qmp.sock")
	l, err := net.Listen("unix", sock)
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	return sock, func() (*fakeQMP, error) {
		c, err := l.Accept()
		if err != nil {
			return nil, err
		}
		t.Cleanup(func() { c.Close() })
		return &fakeQMP{conn: c, dec: json.NewDecoder(c)}, nil
	}
}

// startFake connects a Monitor to a fake server that completes the handshake
// and then runs serve. The server's error, if any, fails the test at cleanup.
func startFake(t *testing.T, serve func(f *fakeQMP) error) *Monitor {
	t.Helper()
	sock, accept := listenFake(t)
	errc := make(chan error, 1)
	go func() {
		f, err := accept()
		if err == nil {
			err = f.handshake()
		}
		if err == nil && serve != nil {
			err = serve(f)
		}
		errc <- err
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	m, err := Dial(ctx, "unix", sock)
	require.NoError(t, err)
	t.Cleanup(func() {
		m.Close()
		select {
		case err := <-errc:
			assert.NoError(t, err, "fake server")
		case <-time.After(2 * time.Second):
			t.Error("fake server did not finish")
		}
	})
	return m
}

// idle waits until the client hangs up, reading and ignoring everything.
func idle(f *fakeQMP) error {
	for {
		if _, err := f.recv(); err != nil {
			return nil
		}
	}
}

func TestHandshake(t *testing.T) {
	tests := []struct {
		name    string
		server  func(f *fakeQMP)
		wantErr string
	}{
		{"ok", func(f *fakeQMP) { f.handshake(); idle(f) }, ""},
		{"silent", func(f *fakeQMP) { idle(f) }, "deadline exceeded"},
		{"closes at once", func(f *fakeQMP) { f.conn.Close() }, "handshake: EOF"},
		{"capabilities refused", func(f *fakeQMP) {
			f.sendRaw(greeting)
			r, _ := f.recv()
			f.sendRaw(`{"error": {"class": "CommandNotFound", "desc": "nope"}}` + idField(r))
			idle(f)
		}, "handshake: nope"},
		{"capabilities never answered", func(f *fakeQMP) { f.sendRaw(greeting); idle(f) }, "deadline exceeded"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sock, accept := listenFake(t)
			hungUp := make(chan struct{})
			go func() {
				defer close(hungUp)
				if f, err := accept(); err == nil {
					tt.server(f)
				}
			}()
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			start := time.Now()
			m, err := Dial(ctx, "unix", sock)
			assert.Less(t, time.Since(start), time.Second, "bounded by ctx")
			if tt.wantErr == "" {
				require.NoError(t, err)
				assert.NoError(t, m.Close())
			} else {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
			}
			// Either way the client's socket is closed: the server sees EOF.
			select {
			case <-hungUp:
			case <-time.After(time.Second):
				t.Fatal("client socket left open")
			}
		})
	}
}

func TestDialNoServer(t *testing.T) {
	_, err := Dial(context.Background(), "unix", filepath.Join(t.TempDir(), "none.sock"))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "qmp: dial unix")
}

// TestRunConcurrent: concurrent callers each get their own answer.
func TestRunConcurrent(t *testing.T) {
	const n = 8
	m := startFake(t, func(f *fakeQMP) error {
		for range n {
			r, err := f.recv()
			if err != nil {
				return err
			}
			if err := f.reply(r, string(r.Arguments)); err != nil {
				return err
			}
		}
		return idle(f)
	})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			ret, err := m.Run(context.Background(), "echo", map[string]int{"i": i})
			if assert.NoError(t, err) {
				assert.JSONEq(t, fmt.Sprintf(`{"i": %d}`, i), string(ret))
			}
		})
	}
	wg.Wait()
}

func TestEventsInterleaved(t *testing.T) {
	m := startFake(t, func(f *fakeQMP) error {
		r, err := f.recv()
		if err != nil {
			return err
		}
		f.event("STOP", 1)
		f.reply(r, `{"status": "paused", "running": false}`)
		f.event("RESUME", 2)
		return idle(f)
	})
	st, err := m.Status(context.Background())
	require.NoError(t, err)
	assert.Equal(t, "paused", st)

	want := []string{"STOP", "RESUME"}
	for i, name := range want {
		select {
		case ev := <-m.Events():
			assert.Equal(t, name, ev.Name)
			assert.JSONEq(t, fmt.Sprintf(`{"n": %d}`, i+1), string(ev.Data))
			assert.Equal(t, time.Unix(1700000000, int64(i+1)*1000), ev.Time)
		case <-time.After(time.Second):
			t.Fatalf("event %s not received", name)
		}
	}
}

// TestEventsDropOldest floods events nobody reads: go-qemu's reader must
// keep going (the command still gets its answer) and the newest are kept.
func TestEventsDropOldest(t *testing.T) {
	const extra = 10
	m := startFake(t, func(f *fakeQMP) error {
		r, err := f.recv()
		if err != nil {
			return err
		}
		for i := range EventBuffer + extra {
			if err := f.event("E", i); err != nil {
				return err
			}
		}
		f.reply(r, "{}")
		return idle(f)
	})
	_, err := m.Run(context.Background(), "cmd", nil)
	require.NoError(t, err)
	// The answer came after the last event, but the pump may still be
	// moving the last ones across (reading makes room, so fewer may be
	// dropped): read until the newest arrives; the first read must be
	// past the oldest, and the newest must come.
	first, last := -1, -1
	require.Eventually(t, func() bool {
		select {
		case ev := <-m.Events():
			var d struct{ N int }
			require.NoError(t, json.Unmarshal(ev.Data, &d))
			if first < 0 {
				first = d.N
			}
			last = d.N
			return last == EventBuffer+extra-1
		default:
			return false
		}
	}, 5*time.Second, time.Millisecond)
	assert.Positive(t, first, "the oldest events were dropped, not the reader blocked")
}

func TestErrorResponse(t *testing.T) {
	m := startFake(t, func(f *fakeQMP) error {
		r, err := f.recv()
		if err != nil {
			return err
		}
		f.sendRaw(`{"error": {"class": "GenericError", "desc": "Device 'x' not found"}}` + idField(r))
		return idle(f)
	})
	_, err := m.Run(context.Background(), "device_del", map[string]string{"id": "x"})
	var qe *Error
	require.ErrorAs(t, err, &qe)
	assert.Equal(t, "Device 'x' not found", qe.Desc)
	assert.EqualError(t, err, "qmp: Device 'x' not found")
	assert.NotErrorIs(t, err, ErrClosed)
}

// TestLateAnswerDropped: an answer arriving after its caller timed out must
// not be handed to the next caller.
func TestLateAnswerDropped(t *testing.T) {
	m := startFake(t, func(f *fakeQMP) error {
		first, err := f.recv()
		if err != nil {
			return err
		}
		time.Sleep(150 * time.Millisecond)
		f.reply(first, `"first"`)
		second, err := f.recv()
		if err != nil {
			return err
		}
		f.reply(second, `"second"`)
		return idle(f)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := m.Run(ctx, "slow", nil)
	require.ErrorIs(t, err, context.DeadlineExceeded)

	ret, err := m.Run(context.Background(), "fast", nil)
	require.NoError(t, err)
	assert.Equal(t, `"second"`, string(ret))
}

func TestNoAnswer(t *testing.T) {
	tests := []struct {
		name    string
		timeout time.Duration // 0: no deadline on ctx, DefaultTimeout applies
	}{
		{"ctx deadline", 100 * time.Millisecond},
		{"default timeout", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			m := startFake(t, idle)
			ctx := context.Background()
			limit := tt.timeout
			// Before the deadline is set: measured after it, a busy machine
			// made "took" fall short of the timeout (98 ms of 100 in CI).
			start := time.Now()
			if tt.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.timeout)
				defer cancel()
			} else {
				limit = DefaultTimeout
			}
			_, err := m.Run(ctx, "query-status", nil)
			took := time.Since(start)
			require.ErrorIs(t, err, context.DeadlineExceeded)
			assert.GreaterOrEqual(t, took, limit)
			// Generous slack: the machine may be busy; "never" is what matters.
			assert.Less(t, took, limit+3*time.Second)
		})
	}
}

func TestServerClosesMidCall(t *testing.T) {
	m := startFake(t, func(f *fakeQMP) error {
		if _, err := f.recv(); err != nil {
			return err
		}
		return f.conn.Close()
	})
	start := time.Now()
	_, err := m.Run(context.Background(), "query-status", nil)
	require.ErrorIs(t, err, ErrClosed)
	assert.Less(t, time.Since(start), time.Second)

	_, open := <-m.Events()
	assert.False(t, open, "events closed when the connection ends")
	<-m.Done()
	_, err = m.Run(context.Background(), "query-status", nil)
	require.ErrorIs(t, err, ErrClosed)
	assert.NoError(t, m.Close())
}

func TestClose(t *testing.T) {
	t.Run("zero monitor", func(t *testing.T) {
		var m Monitor
		assert.NoError(t, m.Close())
		assert.NoError(t, m.Close())
		_, err := m.Run(context.Background(), "query-status", nil)
		assert.ErrorIs(t, err, ErrClosed)
		_, open := <-m.Events()
		assert.False(t, open)
		<-m.Done()
	})
	t.Run("nil monitor", func(t *testing.T) {
		var m *Monitor
		assert.NoError(t, m.Close())
		_, err := m.Run(context.Background(), "query-status", nil)
		assert.ErrorIs(t, err, ErrClosed)
	})
	t.Run("while a call waits", func(t *testing.T) {
		m := startFake(t, idle)
		errc := make(chan error, 1)
		go func() {
			_, err := m.Run(context.Background(), "query-status", nil)
			errc <- err
		}()
		time.Sleep(50 * time.Millisecond)
		m.Close()
		select {
		case err := <-errc:
			assert.ErrorIs(t, err, ErrClosed)
		case <-time.After(time.Second):
			t.Fatal("Run did not return after Close")
		}
	})
	t.Run("after calls, twice", func(t *testing.T) {
		m := startFake(t, func(f *fakeQMP) error {
			r, err := f.recv()
			if err != nil {
				return err
			}
			f.reply(r, "{}")
			return idle(f)
		})
		require.NoError(t, m.Stop(context.Background()))
		m.Close()
		m.Close()
		<-m.Done()
		_, open := <-m.Events()
		assert.False(t, open)
		assert.ErrorIs(t, m.Cont(context.Background()), ErrClosed)
		assert.ErrorIs(t, m.Quit(context.Background()), ErrClosed, "nothing was sent")
	})
}

func TestWrappers(t *testing.T) {
	tests := []struct {
		name     string
		call     func(m *Monitor) (string, error)
		execute  string
		args     string // expected arguments JSON, "" for none
		ret      string // "" means: close the connection instead of answering
		want     string
		wantFail bool
	}{
		{"status", func(m *Monitor) (string, error) { return m.Status(context.Background()) },
			"query-status", "", `{"running": true, "singlestep": false, "status": "running"}`, "running", false},
		{"hmp", func(m *Monitor) (string, error) { return m.HumanMonitorCommand(context.Background(), "info cpus") },
			"human-monitor-command", `{"command-line": "info cpus"}`, `"* CPU #0: thread_id=1\r\n"`, "* CPU #0: thread_id=1\r\n", false},
		{"stop", func(m *Monitor) (string, error) { return "", m.Stop(context.Background()) }, "stop", "", "{}", "", false},
		{"cont", func(m *Monitor) (string, error) { return "", m.Cont(context.Background()) }, "cont", "", "{}", "", false},
		{"powerdown", func(m *Monitor) (string, error) { return "", m.SystemPowerdown(context.Background()) }, "system_powerdown", "", "{}", "", false},
		{"quit answered", func(m *Monitor) (string, error) { return "", m.Quit(context.Background()) }, "quit", "", "{}", "", false},
		{"quit hangs up", func(m *Monitor) (string, error) { return "", m.Quit(context.Background()) }, "quit", "", "", "", false},
		{"typed nil args omitted", func(m *Monitor) (string, error) {
			ret, err := m.Run(context.Background(), "stop", map[string]int(nil))
			return string(ret), err
		}, "stop", "", "{}", "{}", false},
		{"status hangs up", func(m *Monitor) (string, error) { return m.Status(context.Background()) }, "query-status", "", "", "", true},
		{"status bad shape", func(m *Monitor) (string, error) { return m.Status(context.Background()) }, "query-status", "", `[]`, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := startFake(t, func(f *fakeQMP) error {
				r, err := f.recv()
				if err != nil {
					return err
				}
				if r.Execute != tt.execute {
					return fmt.Errorf("execute %q, want %q", r.Execute, tt.execute)
				}
				if tt.args == "" && r.Arguments != nil {
					return fmt.Errorf("unexpected arguments %s", r.Arguments)
				}
				if tt.args != "" && !assert.JSONEq(t, tt.args, string(r.Arguments)) {
					return errors.New("wrong arguments")
				}
				if tt.ret == "" {
					return f.conn.Close()
				}
				f.reply(r, tt.ret)
				return idle(f)
			})
			got, err := tt.call(m)
			if tt.wantFail {
				assert.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

// fakeMonitor is go-qemu's Monitor interface with scripted behaviour, for
// what a socket cannot easily stage.
type fakeMonitor struct {
	connect      func() error
	disconnected chan struct{}
	once         sync.Once
	events       chan goqmp.Event
}

func (f *fakeMonitor) Connect() error { return f.connect() }
func (f *fakeMonitor) Disconnect() error {
	f.once.Do(func() { close(f.disconnected); close(f.events) })
	return nil
}
func (f *fakeMonitor) Run([]byte) ([]byte, error) { <-f.disconnected; return nil, io.EOF }
func (f *fakeMonitor) Events(context.Context) (<-chan goqmp.Event, error) {
	return f.events, nil
}

// TestConnectBlocked: a Connect that never returns by itself is cut short
// at the deadline by disconnecting.
func TestConnectBlocked(t *testing.T) {
	f := &fakeMonitor{disconnected: make(chan struct{}), events: make(chan goqmp.Event)}
	f.connect = func() error { <-f.disconnected; return io.EOF }
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := New(ctx, f)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	select {
	case <-f.disconnected:
	default:
		t.Fatal("not disconnected")
	}
}

// TestEventsNoData: events without data or timestamp keep zero values.
func TestEventsNoData(t *testing.T) {
	f := &fakeMonitor{disconnected: make(chan struct{}), events: make(chan goqmp.Event)}
	f.connect = func() error { return nil }
	m, err := New(context.Background(), f)
	require.NoError(t, err)
	f.events <- goqmp.Event{Event: "POWERDOWN"}
	ev := <-m.Events()
	assert.Equal(t, Event{Name: "POWERDOWN"}, ev)
	require.NoError(t, m.Close())
	_, open := <-m.Events()
	assert.False(t, open)
}

// TestRealQEMU talks to an actual QEMU with no machine, so it needs no
// accelerator, kernel or firmware.
func TestRealQEMU(t *testing.T) {
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not installed")
	}
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	cmd := exec.Command(bin, "-machine", "none", "-nodefaults", "-display", "none",
		"-qmp", "unix:"+sock+",server=on,wait=off")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	require.NoError(t, cmd.Start())
	exited := make(chan struct{}) // closed, not sent to: both the test and cleanup wait on it
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			cmd.Process.Kill()
			<-exited
		}
	})

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var m *Monitor
	for {
		// The socket appears shortly after start; retry until it does.
		m, err = Dial(ctx, "unix", sock)
		if err == nil || ctx.Err() != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	require.NoError(t, err)
	defer m.Close()

	st, err := m.Status(ctx)
	require.NoError(t, err)
	assert.Contains(t, []string{"running", "prelaunch", "paused"}, st)

	out, err := m.HumanMonitorCommand(ctx, "info version")
	require.NoError(t, err)
	assert.NotEmpty(t, out)

	_, err = m.Run(ctx, "no-such-command", nil)
	var qe *Error
	require.ErrorAs(t, err, &qe)
	assert.Contains(t, qe.Desc, "no-such-command")

	require.NoError(t, m.Quit(ctx))
	var sawShutdown bool
	for ev := range m.Events() { // closed when QEMU hangs up
		sawShutdown = sawShutdown || ev.Name == "SHUTDOWN"
	}
	assert.True(t, sawShutdown, "SHUTDOWN event before hang-up")
	select {
	case <-exited:
	case <-ctx.Done():
		t.Fatal("qemu did not exit after quit")
	}
}
