package lab

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"ldtlab/guest/agent"
	"ldtlab/images/kernel"
	"ldtlab/images/rootfs"
	"ldtlab/orchestrator/accel"
	"ldtlab/orchestrator/vm"
)

// fakeBackend runs "guests" in this process: the console is whatever the
// test writes, and the guest channel is the real agent server on one end
// of a socket pair — the lab above it is the real one.
type fakeBackend struct{ last chan *fakeInstance }

func (fakeBackend) Name() string { return "fake" }
func (fakeBackend) Accel(string) (accel.Choice, error) {
	return accel.Choice{Kind: accel.KVM, Reason: "fake"}, nil
}
func (fakeBackend) Capacity() (vm.Capacity, error) {
	return vm.Capacity{CPUs: 64, MemoryMiB: 1 << 20}, nil
}
func (fakeBackend) Close() error { return nil }
func (b fakeBackend) Start(ctx context.Context, cfg vm.Config) (vm.Instance, error) {
	in := &fakeInstance{cfg: cfg, events: make(chan vm.Event, 16), done: make(chan struct{})}
	for _, f := range cfg.FwCfg {
		switch f.Name {
		case vm.FwCfgHostKey:
			k, err := ssh.ParsePrivateKey(f.Data)
			if err != nil {
				return nil, err
			}
			in.hostKey = k
		case vm.FwCfgAuthorizedKey:
			k, _, _, _, err := ssh.ParseAuthorizedKey(f.Data)
			if err != nil {
				return nil, err
			}
			in.authKey = k
		}
	}
	fmt.Fprintf(cfg.Console, "[    0.000000] Linux version 6.12.0-fake\n[    0.100000] Run /init as init process\n")
	in.startAgent()
	select {
	case b.last <- in:
	default:
	}
	return in, nil
}

type fakeInstance struct {
	cfg       vm.Config
	hostKey   ssh.Signer
	authKey   ssh.PublicKey
	mu        sync.Mutex
	hostEnd   net.Conn
	stopAgent context.CancelFunc
	served    chan struct{}
	events    chan vm.Event
	done      chan struct{}
	closeOnce sync.Once
	hung      bool
	frozen    atomic.Bool
}

// freezable is the guest end of the port: a frozen guest reads and
// writes nothing (the connection stays open, as with a paused VM).
type freezable struct {
	net.Conn
	in *fakeInstance
}

func (f *freezable) wait() error {
	if f.in.frozen.Load() {
		<-f.in.done
		return net.ErrClosed
	}
	return nil
}

func (f *freezable) Read(p []byte) (int, error) {
	n, err := f.Conn.Read(p)
	if werr := f.wait(); werr != nil {
		return 0, werr
	}
	return n, err
}

func (f *freezable) Write(p []byte) (int, error) {
	if err := f.wait(); err != nil {
		return 0, err
	}
	return f.Conn.Write(p)
}

// startAgent starts a fresh agent (as the guest's init does after the
// agent died) on a new port connection.
func (in *fakeInstance) startAgent() {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		panic(err)
	}
	conn := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "port")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			panic(err)
		}
		return c
	}
	guestEnd, hostEnd := &freezable{Conn: conn(fds[0]), in: in}, conn(fds[1])
	srv, err := agent.NewServer(agent.Config{HostKey: in.hostKey, AuthorizedKey: in.authKey, Shell: "/bin/sh", Home: os.TempDir()})
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(ctx, guestEnd)
		guestEnd.Close()
	}()
	in.mu.Lock()
	in.hostEnd, in.stopAgent, in.served = hostEnd, cancel, served
	in.mu.Unlock()
}

// killAgent is the OOM killer taking the agent; init starts a new one.
func (in *fakeInstance) killAgent() {
	in.mu.Lock()
	stop, served, old := in.stopAgent, in.served, in.hostEnd
	in.mu.Unlock()
	stop()
	<-served
	old.Close()
	fmt.Fprintf(in.cfg.Console, "[   10.000000] Out of memory: Killed process 99 (ldtlab-agent)\n")
	in.startAgent()
}

func (in *fakeInstance) panic() {
	fmt.Fprint(in.cfg.Console, `[   20.000000] Kernel panic - not syncing: sysrq triggered crash
[   20.000001] CPU: 0 UID: 0 PID: 1 Comm: sh Not tainted 6.12.0-fake #1
[   20.000002] Call Trace:
[   20.000003]  <TASK>
[   20.000004]  dump_stack_lvl+0x1/0x2
[   20.000005]  panic+0x1/0x2
[   20.000006]  sysrq_handle_crash+0x1/0x2
[   20.000007]  </TASK>
[   20.000008] Kernel Offset: disabled
[   20.000009] ---[ end Kernel panic - not syncing: sysrq triggered crash ]---
`)
	in.events <- vm.Event{Kind: vm.EventPanic, Time: time.Now()}
}

func (in *fakeInstance) Control(ctx context.Context) (io.ReadWriteCloser, error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.hung {
		// A hung guest: the port connects, nobody answers.
		a, b := net.Pipe()
		go func() { <-in.done; a.Close(); b.Close() }()
		return b, nil
	}
	return in.hostEnd, nil
}

func (in *fakeInstance) Events() <-chan vm.Event { return in.events }
func (in *fakeInstance) Done() <-chan struct{}   { return in.done }
func (in *fakeInstance) Powerdown(ctx context.Context) error {
	return in.Close()
}
func (in *fakeInstance) Pause(context.Context) error {
	// Freeze the agent: the channel stays open, nothing answers.
	in.mu.Lock()
	defer in.mu.Unlock()
	in.hung = true
	in.frozen.Store(true)
	return nil
}

func (in *fakeInstance) Close() error {
	in.closeOnce.Do(func() {
		in.mu.Lock()
		stop, served, end := in.stopAgent, in.served, in.hostEnd
		in.mu.Unlock()
		close(in.done) // unfreezes a frozen agent
		stop()
		end.Close()
		<-served
		in.events <- vm.Event{Kind: vm.EventExit, Time: time.Now(), Detail: "exited with status 0"}
		close(in.events)
	})
	return nil
}

var fakeStarted = make(chan *fakeInstance, 1)

func init() {
	vm.Register("fake", func(vm.BackendConfig) (vm.Backend, error) { return fakeBackend{last: fakeStarted}, nil })
}

func fakeBuild(t testing.TB) (*kernel.Build, *rootfs.Image) {
	dir := t.TempDir()
	for _, f := range []string{"bzImage", "initramfs"} {
		require.NoError(t, os.WriteFile(filepath.Join(dir, f), []byte(f), 0o600))
	}
	kb := &kernel.Build{BzImage: filepath.Join(dir, "bzImage")}
	kb.Meta.KernelRelease = "6.12.0-fake"
	return kb, &rootfs.Image{Initramfs: filepath.Join(dir, "initramfs")}
}

func bootFake(t testing.TB) (*Machine, *fakeInstance) {
	t.Helper()
	kb, img := fakeBuild(t)
	for len(fakeStarted) > 0 {
		<-fakeStarted
	}
	m, err := BootBuilt(context.Background(), Options{Name: "fake", Backend: "fake", Log: io.Discard}, kb, img)
	require.NoError(t, err)
	return m, <-fakeStarted
}

func TestFakeBootRunAndClose(t *testing.T) {
	m, _ := bootFake(t)
	res, err := m.Run(context.Background(), "echo hello; exit 3")
	require.NoError(t, err)
	assert.Equal(t, "hello\n", string(res.Stdout))
	assert.Equal(t, 3, res.Code)
	assert.Contains(t, m.Tail(5), "Run /init as init process", "the lab's console sink got the backend's output")
	dir := m.Dir
	require.NoError(t, m.Close())
	_, err = os.Stat(dir)
	assert.True(t, os.IsNotExist(err), "the temporary VM directory is removed")
}

func TestFakeCrashIsTypedAndTitled(t *testing.T) {
	m, in := bootFake(t)
	defer m.Close()
	mark := m.ReportMark()
	in.panic()
	_, err := m.Run(context.Background(), "sleep 30")
	var ce *vm.CrashError
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, "kernel panic: sysrq triggered crash", ce.Title)
	reps := m.ReportsSince(context.Background(), mark)
	require.Len(t, reps, 1, "the report is attributed to the cell it began in")
	assert.True(t, vm.IsGuestFault(err))
}

func TestFakeHangIsDetected(t *testing.T) {
	m, in := bootFake(t)
	defer m.Close()
	m.Timeouts.Ping = 300 * time.Millisecond
	m.Timeouts.Boot = time.Second
	require.NoError(t, in.Pause(context.Background()))
	err := m.Ping(context.Background())
	var he *vm.HangError
	require.ErrorAs(t, err, &he, "got %v", err)
	assert.True(t, vm.IsGuestFault(err))
}

// The agent killed inside the guest (the OOM killer) is restarted by init;
// the lab reconnects instead of failing every later command.
func TestFakeAgentRestartReconnects(t *testing.T) {
	m, in := bootFake(t)
	defer m.Close()
	_, err := m.Run(context.Background(), "true")
	require.NoError(t, err)
	in.killAgent()
	var res Result
	require.Eventually(t, func() bool {
		res, err = m.Run(context.Background(), "echo again")
		return err == nil
	}, 20*time.Second, 50*time.Millisecond, "last error: %v", err)
	assert.Equal(t, "again\n", string(res.Stdout))
	assert.Equal(t, 1, m.Reconnects())
}

// Hundreds of boots leave no goroutine behind (events closed, console
// subscriptions ended, watchers gone).
func TestFakeBootsLeakNoGoroutines(t *testing.T) {
	warm, _ := bootFake(t)
	warm.Close()
	time.Sleep(100 * time.Millisecond)
	before := runtime.NumGoroutine()
	for i := 0; i < 200; i++ {
		m, _ := bootFake(t)
		if i%2 == 0 {
			_, err := m.Run(context.Background(), "true")
			require.NoError(t, err)
		}
		require.NoError(t, m.Close())
	}
	var after int
	require.Eventually(t, func() bool {
		after = runtime.NumGoroutine()
		return after <= before+2
	}, 5*time.Second, 50*time.Millisecond, "goroutines: %d before, %d after 200 boots", before, runtime.NumGoroutine())
}

// A command that floods its output: what RunWith keeps is bounded (its
// head and tail, with a note of what was dropped between them).
func TestFakeRunOutputBounded(t *testing.T) {
	m, _ := bootFake(t)
	defer m.Close()
	res, err := m.Run(context.Background(), "echo FIRST; head -c 48000000 /dev/zero | tr '\\0' x; echo; echo LAST; echo ERR >&2")
	require.NoError(t, err)
	assert.LessOrEqual(t, len(res.Stdout), maxRunOutput+200, "stdout kept")
	assert.True(t, strings.HasPrefix(string(res.Stdout), "FIRST\n"), "the head is kept")
	assert.True(t, strings.HasSuffix(string(res.Stdout), "LAST\n"), "the tail is kept (a result's JSON comes last)")
	assert.True(t, strings.Contains(string(res.Stdout), "bytes of output dropped"), "the drop is said")
	assert.Equal(t, "ERR\n", string(res.Stderr))
}
