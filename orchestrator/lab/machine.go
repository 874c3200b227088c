// Package lab is the monitoring layer: it finds or builds the kernel and
// image, boots them on a VM backend, brings up the guest channel, and
// watches the console and the backend's events so that every failure comes
// back as a typed error from package vm — a kernel that did not boot, a
// kernel report, a hang, or a failure of the lab itself.
package lab

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"ldtlab/images/cache"
	"ldtlab/images/kernel"
	"ldtlab/images/rootfs"
	"ldtlab/internal/secfs"
	"ldtlab/orchestrator/accel"
	"ldtlab/orchestrator/channel"
	"ldtlab/orchestrator/console"
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
	Patches   string // only these patches of the series (kernel.Select); "" = all
	Without   string // and without these
	LDTOff    bool   // the patched kernel with CONFIG_LDT=n
	DebugInfo bool   // the kernel built with DWARF and the gdb scripts (--debuginfo)
	Accel     string // auto (default) | kvm | tcg
	Backend   string // qemu (default)
	Connect   string // the backend's host (a libvirt URI); "" = this machine
	MemoryMiB int
	CPUs      int
	Cmdline   string // extra kernel command line
	SwapMiB   int    // disk-backed swap device size; 0 = 512, <0 = none
	DataMiB   int    // data disk (ext2 at /mnt/data, for writeback checks); 0 = none
	Dir       string // VM directory; "" = a temporary one removed on Close
	GDB       bool   // QEMU gdbstub on vm.GDBSocket(Dir) (owner only); qemu backend
	Mirror    io.Writer
	Log       io.Writer // lab progress; nil = stderr
	NoBuild   bool      // fail instead of building what is missing
	// ConsoleMaxMiB rotates console.log past this size (console.log.1
	// keeps the previous part); 0 = never. Long-lived guests (the soak).
	ConsoleMaxMiB int
	Extra         []rootfs.File
	// Shares are host directories mounted in the guest over virtio-9p
	// (this machine's backends only); Boot fails if one is not mounted.
	Shares []Share
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
	return kernel.Options{Repo: o.Repo, Config: o.Config, Vanilla: o.Vanilla, Patches: o.Patches, Without: o.Without, LDTOff: o.LDTOff, DebugInfo: o.DebugInfo, Log: o.Log}
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
			return nil, nil, &vm.InfraError{Op: "looking up the kernel build", Err: fmt.Errorf("no cached %s kernel for the current sources: run `%s`", ko.Variant(), ko.BuildCommand())}
		}
		kb = b
	} else {
		t := time.Now()
		b, hit, err := kernel.Ensure(ctx, ko)
		var se *kernel.SelectionError
		if errors.As(err, &se) {
			return nil, nil, err // a --patches the series cannot apply: a usage error
		}
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
	o.logf("kernel patches: %s", kb.Meta.PatchSummary())
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
	slowdown float64
	BootTime time.Duration // backend start → agent ready
	log      io.Writer

	backend vm.Backend
	inst    vm.Instance
	con     *console.Capture
	stream  *report.Stream // fed by the console as it writes (Tap); done when the console closes
	keys    *channel.Keys
	tempDir bool
	lock    *os.File // held while the machine lives (the sweep's sign of life)

	mu         sync.Mutex
	mux        *channel.Mux
	client     *channel.Client
	dialing    chan struct{} // closed when the running (re)connect ends
	reconnects int
	panic      chan struct{} // closed on a pvpanic event
	once       sync.Once
	closed     bool
	exit       string        // how the VM exited ("signal: killed")
	diskErr    string        // first host I/O error on a disk (a full disk)
	diskErrC   chan struct{} // closed on the first disk error
	ready      bool          // the agent answered once
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
	backend, err := vm.Open(o.Backend, vm.BackendConfig{Connect: o.Connect})
	if err != nil {
		return nil, &vm.InfraError{Op: "selecting the VM backend", Err: err}
	}
	m := &Machine{Name: o.Name, Kernel: kb, Image: img, backend: backend, log: o.Log,
		panic: make(chan struct{}), diskErrC: make(chan struct{})}
	defer func() {
		if err != nil {
			m.Close()
		}
	}()
	if m.Accel, err = backend.Accel(o.Accel); err != nil {
		return nil, &vm.InfraError{Op: "choosing the accelerator", Err: err}
	}
	m.Timeouts = vm.Scaled(m.Accel.Kind)
	m.slowdown = 1
	if kb.Meta.Config == "sanitize" {
		// KASAN, lockdep and kmemleak: several times slower everywhere.
		m.slowdown = 4
		m.Timeouts = m.Timeouts.Slower(m.slowdown)
	}
	o.logf("accelerator: %s", m.Accel.Reason)
	if o.Dir == "" {
		sweepStale(ctx, backend)
		d, err := os.MkdirTemp("", "ldtlab-vm-")
		if err != nil {
			return nil, &vm.InfraError{Op: "creating VM directory", Err: err}
		}
		m.Dir, m.tempDir = d, true
	} else {
		// Ours and private before it is chmod'ed or used: a directory
		// another user planted is refused, not taken over.
		if err := MkdirState(o.Dir, 0o700); err != nil {
			return nil, &vm.InfraError{Op: "creating VM directory", Err: err}
		}
		m.Dir = o.Dir
	}
	if err := os.Chmod(m.Dir, 0o700); err != nil {
		return nil, &vm.InfraError{Op: "securing VM directory", Err: err}
	}
	if m.lock, err = holdLock(m.Dir); err != nil {
		return nil, err
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
	fwcfg, err := keyBlobs(m.keys)
	if err != nil {
		return nil, err
	}
	kernelArt, err := artifact(kb.BzImage)
	if err != nil {
		return nil, err
	}
	initrdArt, err := artifact(img.Initramfs)
	if err != nil {
		return nil, err
	}
	// The lab owns the console: capture file, tail, live subscribers
	// (the report stream below), and the mirror.
	conPath := filepath.Join(m.Dir, "console.log")
	if m.con, err = console.New(conPath, o.Mirror); err != nil {
		return nil, &vm.InfraError{Op: "creating the console log", Err: cache.Explain(conPath, err)}
	}
	if o.ConsoleMaxMiB > 0 {
		m.con.Rotate(int64(o.ConsoleMaxMiB) << 20)
	}
	m.stream = report.NewStream()
	m.con.Tap(m.stream)
	cfg := vm.Config{
		Name: o.Name, Dir: m.Dir, Kernel: kernelArt, Initrd: initrdArt,
		Cmdline: kernelCmdline(kb, o.Cmdline), MemoryMiB: o.MemoryMiB, CPUs: o.CPUs, Accel: m.Accel,
		GDB: o.GDB, Console: m.con, Timeouts: m.Timeouts, FwCfg: fwcfg,
	}
	if o.SwapMiB > 0 {
		cfg.Disks = append(cfg.Disks, vm.Disk{Serial: "ldtswap", SizeMiB: o.SwapMiB})
	}
	if o.DataMiB > 0 {
		cfg.Disks = append(cfg.Disks, vm.Disk{Serial: "ldtdata", SizeMiB: o.DataMiB})
	}
	if len(o.Shares) > 0 {
		if err := sharesHere(o); err != nil {
			return nil, err
		}
		shares, fw, err := shareConfig(o.Shares)
		if err != nil {
			return nil, fmt.Errorf("--share: %w", err)
		}
		cfg.Shares, cfg.FwCfg = shares, append(cfg.FwCfg, fw)
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
	if len(o.Shares) > 0 {
		if err := m.checkShares(ctx, o.Shares); err != nil {
			return nil, err
		}
		for _, s := range o.Shares {
			o.logf("shared %s", s.Describe())
		}
	}
	o.logf("%s ready in %s (%s, kernel %s)", o.Name, m.BootTime.Round(time.Millisecond), m.Accel.Kind, kb.Meta.KernelRelease)
	return m, nil
}

// kernelCmdline adds what a kernel build needs to boot here. The sanitize
// kernel (KASAN, lockdep, kmemleak) interprets ACPI so slowly under TCG
// that evaluating the PCI routing method (_PRT) hits ACPICA's loop
// timeout (AE_AML_LOOP_TIMEOUT): the virtio devices get no interrupt and
// the boot hangs at the first disk. acpi=noirq routes PCI interrupts
// from the MP table instead; ACPI stays on for the rest (power button).
func kernelCmdline(kb *kernel.Build, extra string) string {
	if kb.Meta.Config == "sanitize" && !strings.Contains(extra, "acpi=") {
		return strings.TrimSpace("acpi=noirq " + extra)
	}
	return extra
}

// keyBlobs are the per-VM keys the guest agent reads from fw_cfg.
func keyBlobs(k *channel.Keys) ([]vm.FwCfg, error) {
	var out []vm.FwCfg
	for _, e := range []struct{ name, path string }{
		{vm.FwCfgHostKey, k.HostKeyPath()},
		{vm.FwCfgAuthorizedKey, k.AuthorizedKeyPath()},
	} {
		b, err := os.ReadFile(e.path)
		if err != nil {
			return nil, &vm.InfraError{Op: "reading the per-VM keys", Err: err}
		}
		out = append(out, vm.FwCfg{Name: e.name, Data: b})
	}
	return out, nil
}

// artifact names a boot file by its content's SHA-256.
func artifact(path string) (vm.Artifact, error) {
	f, err := os.Open(path)
	if err != nil {
		return vm.Artifact{}, &vm.InfraError{Op: "reading a boot artifact", Err: err}
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return vm.Artifact{}, &vm.InfraError{Op: "hashing " + path, Err: err}
	}
	return vm.Artifact{Path: path, Hash: hex.EncodeToString(h.Sum(nil))}, nil
}

// holdLock takes the VM directory's lock for the machine's lifetime: the
// sweep of stale directories removes only those whose lock is free (their
// orchestrator is gone, and its QEMU died with it), so a live VM's
// directory is never removed, whatever else is or is not in it.
func holdLock(dir string) (*os.File, error) {
	p := filepath.Join(dir, "lab.lock")
	f, err := secfs.OpenFile(p, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, &vm.InfraError{Op: "creating the VM lock", Err: cache.Explain(p, err)}
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, &vm.InfraError{Op: "locking " + dir, Err: fmt.Errorf("another orchestrator uses this VM directory: %w", err)}
	}
	return f, nil
}

// sweepStale removes temporary VM directories left by an orchestrator that
// was killed outright (SIGKILL runs no cleanup; its QEMU died with it via
// the parent-death signal, but the directory stayed), and asks the backend
// to remove its own orphans.
func sweepStale(ctx context.Context, b vm.Backend) {
	if sw, ok := b.(vm.Sweeper); ok {
		sw.Sweep(ctx)
	}
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "ldtlab-vm-*"))
	for _, d := range dirs {
		// Only our own private directories (as MkdirTemp made them): in
		// a shared /tmp, another user's (or one planted for us) is not
		// ours to open or remove.
		st, err := os.Lstat(d)
		if err != nil || secfs.CheckPrivateDir(d) != nil || time.Since(st.ModTime()) < time.Minute {
			continue // may be being created right now
		}
		// Read-only, never through a symlink, never a FIFO or device: a
		// flock needs no more.
		f, err := secfs.OpenFile(filepath.Join(d, "lab.lock"), os.O_RDONLY, 0)
		if err == nil {
			err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
			f.Close()
			if err != nil {
				continue // its orchestrator lives
			}
		}
		os.RemoveAll(d)
	}
}

// feed moves console lines into the report stream as they arrive, in
// batches (one parse per batch while a report is being printed).
// watch turns backend events into machine state; the console ends with
// the instance.
func (m *Machine) watch() {
	defer m.con.Close()
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
	if con := m.con; d == "" && con != nil {
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
	if s := strings.TrimSpace(vm.Stderr(m.inst)); s != "" {
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
		if m.con.Lines() == 0 && len(m.con.Tail(1)) == 0 && strings.TrimSpace(vm.Stderr(m.inst)) != "" {
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
	m.settle(m.Timeouts.Crash * 3)
	if r := m.fatalReport(); r != nil {
		return crash(*r, m.Tail(40))
	}
	return &vm.CrashError{Type: "panic", Title: "guest panicked (pvpanic) without a parsable report", Tail: m.Tail(40)}
}

// settle waits up to max for a report still being printed to finish,
// then takes it as it is.
func (m *Machine) settle(max time.Duration) {
	deadline := time.After(max)
	for m.stream.Pending() {
		select {
		case <-deadline:
			m.stream.Flush()
			return
		case <-m.stream.Done():
			return
		case <-m.stream.Changed():
		case <-time.After(100 * time.Millisecond):
		}
	}
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

// Reports are the kernel reports found so far (a report still being
// printed is not among them yet).
func (m *Machine) Reports() []report.Report {
	return m.stream.All()
}

// ReportMark marks the console position: ReportsSince(mark) returns the
// kernel reports that began after it.
func (m *Machine) ReportMark() int {
	return m.stream.Offset()
}

// ReportsSince returns the reports that began after mark, waiting (up to
// a few crash timeouts) for one still being printed, so that a report is
// never cut where a cell ends.
func (m *Machine) ReportsSince(ctx context.Context, mark int) []report.Report {
	m.settle(m.Timeouts.Crash * 5)
	return m.stream.Since(mark)
}

// ConsoleLog is the console captured so far.
func (m *Machine) ConsoleLog() []byte { return m.con.Bytes() }

// ConsolePath is the console capture file.
func (m *Machine) ConsolePath() string { return m.con.Path() }

// Tail is the last n console lines.
func (m *Machine) Tail(n int) string { return m.con.Tail(n) }

// Slowdown is how many times slower than the debug kernel this guest's
// kernel runs the same work (4 for sanitize), for limits that are not
// guest timeouts (a stress run's).
func (m *Machine) Slowdown() float64 { return m.slowdown }

// Instance exposes the backend instance (pause; vm.Process for the pid).
func (m *Machine) Instance() vm.Instance { return m.inst }

// Keys are the per-VM SSH keys.
func (m *Machine) Keys() *channel.Keys { return m.keys }

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
// created, in the reverse order of creation. Idempotent.
func (m *Machine) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	c, mux := m.client, m.mux
	m.mu.Unlock()
	if c != nil {
		c.Close()
	}
	if mux != nil {
		mux.Close()
	}
	var err error
	if m.inst != nil {
		err = m.inst.Close()
		// The console closes when the instance's events end.
		select {
		case <-m.stream.Done():
		case <-time.After(10 * time.Second):
			m.con.Close()
		}
	} else if m.con != nil {
		m.con.Close()
	}
	if m.backend != nil {
		m.backend.Close()
	}
	if m.tempDir {
		os.RemoveAll(m.Dir)
	}
	if m.lock != nil {
		m.lock.Close()
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
