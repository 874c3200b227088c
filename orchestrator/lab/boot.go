package lab

// Booting a guest as named steps, and undoing them. Each step that
// creates something pushes its undo onto the machine's cleanup stack
// (firecracker-go-sdk's handler lists are the model); Close runs the
// stack in reverse, so a boot that fails half-way releases exactly what
// it had made.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"ldtlab/images/kernel"
	"ldtlab/images/rootfs"
	"ldtlab/internal/fileutil"
	"ldtlab/internal/secfs"
	"ldtlab/orchestrator/channel"
	"ldtlab/orchestrator/console"
	"ldtlab/orchestrator/report"
	"ldtlab/orchestrator/vm"
)

// Boot prepares and boots a guest and waits until its agent answers.
func Boot(ctx context.Context, o Options) (*Machine, error) {
	o.defaults()
	kb, img, err := Prepare(ctx, o)
	if err != nil {
		return nil, err
	}
	return BootBuilt(ctx, o, kb, img)
}

// booting is what the steps of one boot share.
type booting struct {
	m     *Machine
	o     Options
	kb    *kernel.Build
	img   *rootfs.Image
	cfg   vm.Config
	start time.Time
}

// bootStep is one named step of BootBuilt. Its error is returned as it
// is (typed: vm.InfraError, BootError…); the name says what it does and
// what it pushes onto the cleanup stack.
type bootStep struct {
	name string
	run  func(ctx context.Context, b *booting) error
}

// bootSteps are BootBuilt's steps, in order.
var bootSteps = []bootStep{
	{"open the backend", openBackend},
	{"choose the accelerator", chooseAccel},
	{"make the VM directory", makeDir},
	{"generate the per-VM keys", makeKeys},
	{"hash the boot artifacts", hashArtifacts},
	{"capture the console", captureConsole},
	{"configure disks and shares", configureDevices},
	{"start the VM", startVM},
	{"wait for the guest agent", waitAgent},
	{"check the shares", verifyShares},
}

// cleanup is one entry of the machine's cleanup stack.
type cleanup struct {
	name string
	undo func() error
}

// onClose pushes undo onto the cleanup stack; Close pops it.
func (m *Machine) onClose(name string, undo func() error) {
	m.cleanups = append(m.cleanups, cleanup{name, undo})
}

// BootBuilt boots an already prepared kernel and image.
func BootBuilt(ctx context.Context, o Options, kb *kernel.Build, img *rootfs.Image) (_ *Machine, err error) {
	o.defaults()
	m := &Machine{Name: o.Name, Kernel: kb, Image: img, log: o.Log, memoryMiB: o.MemoryMiB,
		panic: make(chan struct{}), diskErrC: make(chan struct{})}
	defer func() {
		if err != nil {
			m.Close()
		}
	}()
	b := &booting{m: m, o: o, kb: kb, img: img}
	for _, s := range bootSteps {
		if err := s.run(ctx, b); err != nil {
			return nil, err
		}
	}
	o.logf("%s ready in %s (%s, kernel %s)", o.Name, m.BootTime.Round(time.Millisecond), m.Accel.Kind, kb.Meta.KernelRelease)
	return m, nil
}

func openBackend(_ context.Context, b *booting) error {
	backend, err := vm.Open(b.o.Backend, vm.BackendConfig{Connect: b.o.Connect})
	if err != nil {
		return &vm.InfraError{Op: "selecting the VM backend", Err: err}
	}
	b.m.backend = backend
	b.m.onClose("close the backend", func() error { backend.Close(); return nil })
	return nil
}

func chooseAccel(_ context.Context, b *booting) error {
	m := b.m
	var err error
	if m.Accel, err = m.backend.Accel(b.o.Accel); err != nil {
		return &vm.InfraError{Op: "choosing the accelerator", Err: err}
	}
	m.Timeouts = vm.Scaled(m.Accel.Kind)
	m.slowdown = 1
	if b.kb.Meta.Config == "sanitize" {
		// KASAN, lockdep and kmemleak: several times slower everywhere.
		m.slowdown = 4
		m.Timeouts = m.Timeouts.Slower(m.slowdown)
	}
	b.o.logf("accelerator: %s", m.Accel.Reason)
	return nil
}

// makeDir makes the VM directory (a temporary one unless Options.Dir),
// private and locked for the machine's life, and records the backend in
// it (SweepLeftover). Undo: remove a temporary directory, then release
// the lock, so a sweep never sees it unlocked while it is still there.
func makeDir(ctx context.Context, b *booting) error {
	m, o := b.m, b.o
	if o.Dir == "" {
		sweepStale(ctx, m.backend)
		d, err := os.MkdirTemp("", "ldtlab-vm-")
		if err != nil {
			return &vm.InfraError{Op: "creating VM directory", Err: err}
		}
		m.Dir, m.tempDir = d, true
	} else {
		// Ours and private before it is chmod'ed or used: a directory
		// another user planted is refused, not taken over.
		if err := MkdirState(o.Dir, 0o700); err != nil {
			return &vm.InfraError{Op: "creating VM directory", Err: err}
		}
		m.Dir = o.Dir
	}
	m.onClose("remove the temporary VM directory, release its lock", func() error {
		if m.tempDir {
			os.RemoveAll(m.Dir)
		}
		if m.lock != nil {
			m.lock.Close()
		}
		return nil
	})
	if err := os.Chmod(m.Dir, 0o700); err != nil {
		return &vm.InfraError{Op: "securing VM directory", Err: err}
	}
	var err error
	if m.lock, err = holdLock(m.Dir); err != nil {
		return err
	}
	if err := writeBackendRecord(m.Dir, o.Backend, o.Connect); err != nil {
		return err
	}
	if n := len(filepath.Join(m.Dir, "ssh.sock")); n > 100 {
		return &vm.InfraError{Op: "creating VM directory", Err: fmt.Errorf("path %s is too long for unix sockets (%d bytes); set LDTLAB_STATE to a shorter directory", m.Dir, n)}
	}
	return nil
}

func makeKeys(_ context.Context, b *booting) error {
	m := b.m
	keyDir := filepath.Join(m.Dir, "keys")
	if err := os.MkdirAll(keyDir, 0o700); err != nil {
		return &vm.InfraError{Op: "creating key directory", Err: err}
	}
	var err error
	if m.keys, err = channel.GenerateKeys(keyDir); err != nil {
		return &vm.InfraError{Op: "generating per-VM keys", Err: err}
	}
	b.cfg.FwCfg, err = keyBlobs(m.keys)
	return err
}

func hashArtifacts(_ context.Context, b *booting) error {
	var err error
	if b.cfg.Kernel, err = artifact(b.kb.BzImage); err != nil {
		return err
	}
	b.cfg.Initrd, err = artifact(b.img.Initramfs)
	return err
}

// captureConsole: the lab owns the console (capture file, tail, live
// subscribers: the report stream, and the mirror). Undo: once the VM is
// gone its events end and watch closes the console; wait for that a
// while, then close it here.
func captureConsole(_ context.Context, b *booting) error {
	m, o := b.m, b.o
	conPath := filepath.Join(m.Dir, "console.log")
	var err error
	if m.con, err = console.New(conPath, o.Mirror); err != nil {
		return &vm.InfraError{Op: "creating the console log", Err: fileutil.Explain(conPath, err)}
	}
	if o.ConsoleMaxMiB > 0 {
		m.con.Rotate(int64(o.ConsoleMaxMiB) << 20)
	}
	m.stream = report.NewStream()
	m.con.Tap(m.stream)
	m.onClose("close the console", func() error {
		if m.inst != nil {
			select {
			case <-m.stream.Done():
				return nil
			case <-time.After(10 * time.Second):
			}
		}
		m.con.Close()
		return nil
	})
	return nil
}

func configureDevices(_ context.Context, b *booting) error {
	m, o := b.m, b.o
	b.cfg.Name, b.cfg.Dir = o.Name, m.Dir
	b.cfg.Cmdline, b.cfg.MemoryMiB, b.cfg.CPUs = kernelCmdline(b.kb, o.Cmdline), o.MemoryMiB, o.CPUs
	b.cfg.Accel, b.cfg.GDB, b.cfg.Console, b.cfg.Timeouts = m.Accel, o.GDB, m.con, m.Timeouts
	if o.SwapMiB > 0 {
		b.cfg.Disks = append(b.cfg.Disks, vm.Disk{Serial: "ldtswap", SizeMiB: o.SwapMiB})
	}
	if o.DataMiB > 0 {
		b.cfg.Disks = append(b.cfg.Disks, vm.Disk{Serial: "ldtdata", SizeMiB: o.DataMiB})
	}
	if len(o.Shares) > 0 {
		if err := sharesHere(o); err != nil {
			return err
		}
		shares, fw, err := shareConfig(o.Shares)
		if err != nil {
			return fmt.Errorf("--share: %w", err)
		}
		b.cfg.Shares, b.cfg.FwCfg = shares, append(b.cfg.FwCfg, fw)
	}
	return nil
}

// startVM starts the instance and the watch of its events. Undo: stop
// the VM (its error is Close's).
func startVM(ctx context.Context, b *booting) error {
	m := b.m
	b.start = time.Now()
	inst, err := m.backend.Start(ctx, b.cfg)
	if err != nil {
		return err
	}
	m.inst = inst
	m.onClose("stop the VM", inst.Close)
	go m.watch()
	return nil
}

func waitAgent(ctx context.Context, b *booting) error {
	m := b.m
	if err := m.waitReady(ctx); err != nil {
		return err
	}
	m.BootTime = time.Since(b.start)
	m.mu.Lock()
	m.ready = true
	m.mu.Unlock()
	return nil
}

func verifyShares(ctx context.Context, b *booting) error {
	if len(b.o.Shares) == 0 {
		return nil
	}
	if err := b.m.checkShares(ctx, b.o.Shares); err != nil {
		return err
	}
	for _, s := range b.o.Shares {
		b.o.logf("shared %s", s.Describe())
	}
	return nil
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
		return nil, &vm.InfraError{Op: "creating the VM lock", Err: fileutil.Explain(p, err)}
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, &vm.InfraError{Op: "locking " + dir, Err: fmt.Errorf("another orchestrator uses this VM directory: %w", err)}
	}
	return f, nil
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
// created: the guest channel, then the boot's cleanup stack in reverse
// (VM, console, VM directory and lock, backend). Idempotent.
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
	for i := len(m.cleanups) - 1; i >= 0; i-- {
		if uerr := m.cleanups[i].undo(); uerr != nil && err == nil {
			err = uerr
		}
	}
	m.cleanups = nil
	return err
}
