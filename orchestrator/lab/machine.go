// Package lab is the monitoring layer: it finds or builds the kernel and
// image, boots them on a VM backend, brings up the guest channel, and
// watches the console and the backend's events so that every failure comes
// back as a typed error from package vm — a kernel that did not boot, a
// kernel report, a hang, or a failure of the lab itself.
package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"ldtlab/images/cache"
	"ldtlab/images/kernel"
	"ldtlab/images/rootfs"
	"ldtlab/orchestrator/accel"
	"ldtlab/orchestrator/channel"
	"ldtlab/orchestrator/report"
	"ldtlab/orchestrator/vm"
	_ "ldtlab/orchestrator/vm/libvirt" // --backend libvirt
	_ "ldtlab/orchestrator/vm/qemu"    // the embedded default backend
)

// Options describe a guest to boot.
type Options struct {
	Repo      string
	Name      string
	Config    string // kernel config: debug (default) | perf
	Vanilla   bool   // kernel without the LDT series
	Accel     string // auto (default) | kvm | tcg
	Backend   string // qemu (default)
	MemoryMiB int
	CPUs      int
	Cmdline   string // extra kernel command line
	SwapMiB   int    // disk-backed swap device size; 0 = 512, <0 = none
	DataMiB   int    // data disk (ext2 at /mnt/data, for writeback checks); 0 = none
	Dir       string // VM directory; "" = a temporary one removed on Close
	GDB       string // QEMU gdbstub address; "" = off
	Mirror    io.Writer
	Log       io.Writer // lab progress; nil = stderr
	NoBuild   bool      // fail instead of building what is missing
	Extra     []rootfs.File
}

func (o *Options) defaults() {
	if o.Name == "" {
		o.Name = "ldtlab"
	}
	if o.Backend == "" {
		o.Backend = "qemu"
	}
	if o.MemoryMiB == 0 {
		o.MemoryMiB = 1024
	}
	if o.CPUs == 0 {
		o.CPUs = 2
	}
	if o.SwapMiB == 0 {
		o.SwapMiB = 512
	}
	if o.Log == nil {
		o.Log = os.Stderr
	}
}

func (o *Options) logf(format string, args ...any) {
	fmt.Fprintf(o.Log, "[lab] %s\n", fmt.Sprintf(format, args...))
}

// KernelOptions is the kernel build o asks for.
func (o *Options) KernelOptions() kernel.Options {
	return kernel.Options{Repo: o.Repo, Config: o.Config, Vanilla: o.Vanilla, Log: o.Log}
}

// Prepare finds (or builds) the kernel and the image, saying which.
func Prepare(ctx context.Context, o Options) (*kernel.Build, *rootfs.Image, error) {
	o.defaults()
	ko := o.KernelOptions()
	var kb *kernel.Build
	if o.NoBuild {
		b, ok, err := kernel.Find(ko)
		if err != nil {
			return nil, nil, &vm.InfraError{Op: "looking up the kernel build", Err: err}
		}
		if !ok {
			return nil, nil, &vm.InfraError{Op: "looking up the kernel build", Err: fmt.Errorf("no cached %s kernel for the current sources: run `labctl build --config %s%s`", ko.Variant(), ko.Config, map[bool]string{true: " --vanilla"}[ko.Vanilla])}
		}
		kb = b
	} else {
		t := time.Now()
		b, hit, err := kernel.Ensure(ctx, ko)
		if err != nil {
			return nil, nil, &vm.InfraError{Op: "building the kernel", Err: err}
		}
		kb = b
		if hit {
			o.logf("kernel: cached %s %s (%s) in %s", ko.Variant(), b.Meta.KernelRelease, shortKey(b.Meta.Key), time.Since(t).Round(time.Millisecond))
		} else {
			o.logf("kernel: built %s %s in %s", ko.Variant(), b.Meta.KernelRelease, time.Since(t).Round(time.Second))
		}
	}
	t := time.Now()
	img, hit, err := rootfs.Ensure(ctx, rootfs.Options{Repo: o.Repo, Kernel: kb, Extra: o.Extra, Log: o.Log})
	if err != nil {
		return nil, nil, &vm.InfraError{Op: "building the guest image", Err: err}
	}
	if hit {
		o.logf("image: cached initramfs (%s) in %s", shortKey(img.Key), time.Since(t).Round(time.Millisecond))
	} else {
		o.logf("image: built initramfs (%s) in %s", shortKey(img.Key), time.Since(t).Round(time.Millisecond))
	}
	return kb, img, nil
}

func shortKey(k string) string {
	if len(k) > 12 {
		return k[:12]
	}
	return k
}

// Machine is a booted guest with a ready channel.
type Machine struct {
	Name     string
	Dir      string
	Kernel   *kernel.Build
	Image    *rootfs.Image
	Accel    accel.Choice
	Timeouts vm.Timeouts
	BootTime time.Duration // QEMU start → agent ready

	inst    vm.Instance
	mux     *channel.Mux
	keys    *channel.Keys
	tempDir bool

	mu       sync.Mutex
	client   *channel.Client
	panic    chan struct{} // closed on a pvpanic event
	once     sync.Once
	closed   bool
	exit     string        // how QEMU exited ("signal: killed")
	diskErr  string        // first host I/O error on a disk (a full disk)
	diskErrC chan struct{} // closed on the first disk error
	ready    bool          // the agent answered once
	stopping bool          // Shutdown/Close asked QEMU to go
}

// Boot prepares and boots a guest and waits until its agent answers.
func Boot(ctx context.Context, o Options) (*Machine, error) {
	o.defaults()
	kb, img, err := Prepare(ctx, o)
	if err != nil {
		return nil, err
	}
	return BootBuilt(ctx, o, kb, img)
}

// BootBuilt boots an already prepared kernel and image.
func BootBuilt(ctx context.Context, o Options, kb *kernel.Build, img *rootfs.Image) (_ *Machine, err error) {
	o.defaults()
	choice, err := accel.Resolve(o.Accel, "/")
	if err != nil {
		return nil, &vm.InfraError{Op: "choosing the accelerator", Err: err}
	}
	o.logf("accelerator: %s", choice.Reason)
	m := &Machine{Name: o.Name, Kernel: kb, Image: img, Accel: choice, Timeouts: vm.Scaled(choice.Kind), panic: make(chan struct{}), diskErrC: make(chan struct{})}
	if o.Dir == "" {
		sweepStale()
		d, err := os.MkdirTemp("", "ldtlab-vm-")
		if err != nil {
			return nil, &vm.InfraError{Op: "creating VM directory", Err: err}
		}
		m.Dir, m.tempDir = d, true
	} else {
		if err := os.MkdirAll(o.Dir, 0o700); err != nil {
			return nil, &vm.InfraError{Op: "creating VM directory", Err: err}
		}
		m.Dir = o.Dir
	}
	defer func() {
		if err != nil {
			m.Close()
		}
	}()
	if err := os.Chmod(m.Dir, 0o700); err != nil {
		return nil, &vm.InfraError{Op: "securing VM directory", Err: err}
	}
	if n := len(filepath.Join(m.Dir, "ssh.sock")); n > 100 {
		return nil, &vm.InfraError{Op: "creating VM directory", Err: fmt.Errorf("path %s is too long for unix sockets (%d bytes); set LDTLAB_STATE to a shorter directory", m.Dir, n)}
	}
	keyDir := filepath.Join(m.Dir, "keys")
	if err := os.MkdirAll(keyDir, 0o700); err != nil {
		return nil, &vm.InfraError{Op: "creating key directory", Err: err}
	}
	if m.keys, err = channel.GenerateKeys(keyDir); err != nil {
		return nil, &vm.InfraError{Op: "generating per-VM keys", Err: err}
	}
	cfg := vm.Config{
		Name: o.Name, Dir: m.Dir, Kernel: kb.BzImage, Initrd: img.Initramfs,
		Cmdline: o.Cmdline, MemoryMiB: o.MemoryMiB, CPUs: o.CPUs, Accel: choice,
		GDB: o.GDB, Mirror: o.Mirror, Timeouts: m.Timeouts,
		FwCfg: []vm.FwCfg{
			{Name: "opt/ldtlab/host_key", Path: m.keys.HostKeyPath()},
			{Name: "opt/ldtlab/authorized_key", Path: m.keys.AuthorizedKeyPath()},
		},
	}
	if o.SwapMiB > 0 {
		p, err := sparseDisk(filepath.Join(m.Dir, "swap.img"), o.SwapMiB)
		if err != nil {
			return nil, err
		}
		cfg.Disks = append(cfg.Disks, vm.Disk{Path: p, Serial: "ldtswap"})
	}
	if o.DataMiB > 0 {
		p, err := sparseDisk(filepath.Join(m.Dir, "data.img"), o.DataMiB)
		if err != nil {
			return nil, err
		}
		cfg.Disks = append(cfg.Disks, vm.Disk{Path: p, Serial: "ldtdata"})
	}
	backend, err := vm.Get(o.Backend)
	if err != nil {
		return nil, &vm.InfraError{Op: "selecting the VM backend", Err: err}
	}
	start := time.Now()
	inst, err := backend.Start(ctx, cfg)
	if err != nil {
		return nil, err
	}
	m.inst = inst
	go m.watch()
	if err := m.waitReady(ctx); err != nil {
		return nil, err
	}
	m.BootTime = time.Since(start)
	m.mu.Lock()
	m.ready = true
	m.mu.Unlock()
	o.logf("%s ready in %s (%s, kernel %s)", o.Name, m.BootTime.Round(time.Millisecond), choice.Kind, kb.Meta.KernelRelease)
	return m, nil
}

// sweepStale removes temporary VM directories left by an orchestrator that
// was killed outright (SIGKILL runs no cleanup; its QEMU died with it via
// the parent-death signal, but the directory stayed).
func sweepStale() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "ldtlab-vm-*"))
	for _, d := range dirs {
		st, err := os.Stat(d)
		if err != nil || time.Since(st.ModTime()) < time.Minute {
			continue
		}
		if b, err := os.ReadFile(filepath.Join(d, "qemu.pid")); err == nil {
			var pid int
			fmt.Sscan(string(b), &pid)
			if pid > 0 && syscall.Kill(pid, 0) == nil {
				continue // still running
			}
		}
		os.RemoveAll(d)
	}
}

func sparseDisk(path string, mib int) (string, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_RDWR, 0o600)
	if err != nil {
		return "", &vm.InfraError{Op: "creating disk image", Err: cache.Explain(path, err)}
	}
	defer f.Close()
	if err := f.Truncate(int64(mib) << 20); err != nil {
		return "", &vm.InfraError{Op: "sizing disk image", Err: cache.Explain(path, err)}
	}
	return path, nil
}

// watch turns backend events into machine state.
func (m *Machine) watch() {
	for ev := range m.inst.Events() {
		switch ev.Kind {
		case vm.EventPanic:
			m.once.Do(func() { close(m.panic) })
		case vm.EventExit:
			m.mu.Lock()
			m.exit = ev.Detail
			m.mu.Unlock()
		case vm.EventIOError:
			m.mu.Lock()
			if m.diskErr == "" {
				m.diskErr = ev.Detail
				close(m.diskErrC)
			}
			m.mu.Unlock()
		}
	}
}

// DiskError is the first host I/O error on one of the guest's disks (for
// example "no space left on /state/vms/x/swap.img (guest write failed)"),
// or "".
func (m *Machine) DiskError() string {
	m.mu.Lock()
	d := m.diskErr
	m.mu.Unlock()
	if con := m.inst.Console(); d == "" && con != nil {
		// The console capture on a full host disk: reports are still
		// detected (from memory), but say where the log stops.
		if err := con.Err(); err != nil {
			return err.Error()
		}
	}
	return d
}

// DiskFailed is closed on the first host I/O error on a disk.
func (m *Machine) DiskFailed() <-chan struct{} { return m.diskErrC }

// ExitReason says how QEMU exited ("" while it runs).
func (m *Machine) ExitReason() string {
	select {
	case <-m.inst.Done():
	default:
		return ""
	}
	// The exit event may trail Done by a moment.
	for i := 0; i < 20; i++ {
		m.mu.Lock()
		e := m.exit
		m.mu.Unlock()
		if e != "" {
			return e
		}
		time.Sleep(5 * time.Millisecond)
	}
	return "exited"
}

// died describes QEMU's unexpected exit: how it ended, what it said, and
// a disk error if one came first.
func (m *Machine) died() string {
	why := "QEMU " + m.ExitReason()
	if why == "QEMU signal: killed" {
		why = "QEMU was killed (SIGKILL)"
	} else if strings.HasPrefix(why, "QEMU signal: ") {
		why = "QEMU was stopped by " + strings.TrimPrefix(why, "QEMU signal: ")
	}
	if s := strings.TrimSpace(m.inst.Stderr()); s != "" {
		why += ": " + s
	}
	if d := m.DiskError(); d != "" {
		why += "; earlier the host disk failed: " + d
	}
	return why
}

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
		ctl, err := m.inst.Control(bctx)
		if err != nil {
			ready <- result{err: err}
			return
		}
		mux, err := channel.Handshake(bctx, ctl)
		if err != nil {
			ctl.Close()
		}
		ready <- result{mux, err}
	}()
	select {
	case r := <-ready:
		if r.err == nil {
			m.mux = r.mux
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

// guestFailure returns a typed error if the guest panicked, exited or
// printed a fatal report; nil if it looks alive.
func (m *Machine) guestFailure() error {
	select {
	case <-m.panic:
		return m.crashError()
	default:
	}
	select {
	case <-m.inst.Done():
		if r := m.fatalReport(); r != nil {
			return crash(*r, m.Tail(40))
		}
		m.mu.Lock()
		ready := m.ready
		m.mu.Unlock()
		if ready {
			return &vm.DiedError{Reason: m.died(), Tail: m.Tail(40)}
		}
		if len(m.inst.Console().Bytes()) == 0 && strings.TrimSpace(m.inst.Stderr()) != "" {
			// QEMU gave up before the guest printed a byte, saying why
			// ("cannot set up guest memory"): the lab's failure.
			return &vm.InfraError{Op: "starting QEMU", Err: errors.New(m.died())}
		}
		return &vm.BootError{Reason: m.died(), Tail: m.Tail(40)}
	default:
	}
	return nil
}

// crashError waits briefly for the rest of a panic report, then returns it.
func (m *Machine) crashError() error {
	deadline := time.After(m.Timeouts.Crash * 3)
	for {
		if bytes.Contains(m.inst.Console().Bytes(), []byte("---[ end Kernel panic")) {
			break
		}
		select {
		case <-deadline:
		case <-m.inst.Done():
		case <-time.After(50 * time.Millisecond):
			continue
		}
		break
	}
	if r := m.fatalReport(); r != nil {
		return crash(*r, m.Tail(40))
	}
	return &vm.CrashError{Type: "panic", Title: "guest panicked (pvpanic) without a parsable report", Tail: m.Tail(40)}
}

func crash(r report.Report, tail string) *vm.CrashError {
	return &vm.CrashError{Type: string(r.Type), Title: r.Title, Text: r.Text, Tail: tail}
}

// fatalReport is the last panic-like report in the console, if any.
func (m *Machine) fatalReport() *report.Report {
	reps := m.Reports()
	for i := len(reps) - 1; i >= 0; i-- {
		if reps[i].Type == "panic" || strings.Contains(reps[i].Text, "Kernel panic - not syncing") {
			return &reps[i]
		}
	}
	if len(reps) > 0 {
		return &reps[len(reps)-1]
	}
	return nil
}

// Reports parses the whole console so far.
func (m *Machine) Reports() []report.Report {
	return report.Parse(m.inst.Console().Bytes())
}

// ConsoleLog is the console captured so far.
func (m *Machine) ConsoleLog() []byte { return m.inst.Console().Bytes() }

// ConsolePath is the console capture file.
func (m *Machine) ConsolePath() string { return m.inst.Console().Path() }

// Tail is the last n console lines.
func (m *Machine) Tail(n int) string { return m.inst.Console().Tail(n) }

// Instance exposes the backend instance (pause, pid, command line).
func (m *Machine) Instance() vm.Instance { return m.inst }

// Mux is the guest channel (the supervisor serves it on a socket).
func (m *Machine) Mux() *channel.Mux { return m.mux }

// Keys are the per-VM SSH keys.
func (m *Machine) Keys() *channel.Keys { return m.keys }

// Client returns the machine's shared SSH client, connecting on first use.
func (m *Machine) Client(ctx context.Context) (*channel.Client, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.client != nil {
		return m.client, nil
	}
	cctx, cancel := context.WithTimeout(ctx, m.Timeouts.Ping*2)
	defer cancel()
	conn, err := m.mux.Open(cctx)
	if err != nil {
		return nil, &vm.InfraError{Op: "opening a guest channel stream", Err: err}
	}
	c, err := channel.Dial(cctx, conn, m.keys)
	if err != nil {
		conn.Close()
		if gerr := m.guestFailure(); gerr != nil {
			return nil, gerr
		}
		if cctx.Err() != nil && ctx.Err() == nil {
			// The agent was up once; a guest that stops answering is hung.
			return nil, &vm.HangError{Phase: "ssh handshake with the guest agent", After: m.Timeouts.Ping * 2, Tail: m.Tail(40)}
		}
		return nil, &vm.InfraError{Op: "ssh handshake with the guest agent", Err: err}
	}
	m.client = c
	return c, nil
}

// Result of one guest command.
type Result struct {
	Stdout, Stderr []byte
	Code           int
	Took           time.Duration
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
	var so, se bytes.Buffer
	if opts.Stdout == nil {
		opts.Stdout = &so
	} else {
		opts.Stdout = io.MultiWriter(opts.Stdout, &so)
	}
	if opts.Stderr == nil {
		opts.Stderr = &se
	} else {
		opts.Stderr = io.MultiWriter(opts.Stderr, &se)
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
	res := Result{Stdout: so.Bytes(), Stderr: se.Bytes(), Code: code, Took: time.Since(start)}
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

// Shutdown powers the guest off cleanly (ACPI), bounded by the scaled
// shutdown timeout, then releases everything like Close.
func (m *Machine) Shutdown(ctx context.Context) error {
	var err error
	if m.inst != nil {
		select {
		case <-m.inst.Done():
		default:
			sctx, cancel := context.WithTimeout(ctx, m.Timeouts.Shutdown)
			err = m.inst.Powerdown(sctx)
			cancel()
		}
	}
	if cerr := m.Close(); err == nil {
		err = cerr
	}
	return err
}

// Close kills the VM if it still runs and removes what the machine
// created. Idempotent.
func (m *Machine) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	c := m.client
	m.mu.Unlock()
	if c != nil {
		c.Close()
	}
	if m.mux != nil {
		m.mux.Close()
	}
	var err error
	if m.inst != nil {
		err = m.inst.Close()
	}
	if m.tempDir {
		os.RemoveAll(m.Dir)
	}
	return err
}

// Panicked is closed when the guest kernel reported a panic (pvpanic).
func (m *Machine) Panicked() <-chan struct{} { return m.panic }

// CrashError describes the panic after Panicked fired.
func (m *Machine) CrashError() error { return m.crashError() }

// Done is closed when the VM has exited.
func (m *Machine) Done() <-chan struct{} { return m.inst.Done() }

// IsGuestFault tells kernel-side failures from lab failures.
func IsGuestFault(err error) bool {
	var be *vm.BootError
	var ce *vm.CrashError
	var he *vm.HangError
	var de *vm.DiedError
	return errors.As(err, &be) || errors.As(err, &ce) || errors.As(err, &he) || errors.As(err, &de)
}
