// Package qemu is the embedded VM backend: qemu-system-x86_64 controlled
// over QMP. The process gets its own process group and dies with its
// parent; Close stops it (QMP quit, SIGTERM, then SIGKILL after the grace
// period) and removes every socket it created.
package qemu

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
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"ldtlab/internal/fileutil"
	"ldtlab/internal/procutil"
	"ldtlab/internal/shquote"
	"ldtlab/orchestrator/accel"
	"ldtlab/orchestrator/qmp"
	"ldtlab/orchestrator/vm"
)

// Binary is the QEMU executable; LDTLAB_QEMU overrides it.
func Binary() string {
	if b := os.Getenv("LDTLAB_QEMU"); b != "" {
		return b
	}
	return "qemu-system-x86_64"
}

type backend struct{}

func init() {
	vm.Register("qemu", func(cfg vm.BackendConfig) (vm.Backend, error) {
		if cfg.Connect != "" {
			return nil, fmt.Errorf("the qemu backend runs guests on this machine only (got --connect %q; use --backend libvirt for a remote host)", cfg.Connect)
		}
		return backend{}, nil
	})
}

func (backend) Name() string { return "qemu" }

// Accel resolves the request on this machine (/dev/kvm, PVM-only hosts).
func (backend) Accel(request string) (accel.Choice, error) { return accel.ResolveHost(request) }

// Capacity is this machine's CPUs and available memory.
func (backend) Capacity() (vm.Capacity, error) {
	c := vm.Capacity{CPUs: runtime.NumCPU()}
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return c, fmt.Errorf("reading /proc/meminfo: %w", err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		var kib int
		if _, err := fmt.Sscanf(l, "MemAvailable: %d kB", &kib); err == nil {
			c.MemoryMiB = kib >> 10
		}
	}
	return c, nil
}

func (backend) Close() error { return nil }

// diskPath and fwCfgPath are where the backend keeps a VM's disks and
// fw_cfg blobs (0600 files in the private VM directory: the blobs are
// keys, so they never appear on a command line).
func diskPath(cfg vm.Config, i int) string {
	return filepath.Join(cfg.Dir, fmt.Sprintf("disk%d-%s.img", i, cfg.Disks[i].Serial))
}

func fwCfgPath(cfg vm.Config, i int) string {
	return filepath.Join(cfg.Dir, fmt.Sprintf("fwcfg%d", i))
}

// Args builds the QEMU command line for cfg (exported for repro output and
// unit tests).
func Args(cfg vm.Config) []string {
	mem := cfg.MemoryMiB
	if mem == 0 {
		mem = 1024
	}
	cpus := cfg.CPUs
	if cpus == 0 {
		cpus = 2
	}
	a := []string{
		"-name", "ldtlab-" + cfg.Name + ",debug-threads=on",
		"-machine", "pc",
		"-nodefaults", "-no-user-config", "-display", "none", "-vga", "none",
		"-m", fmt.Sprint(mem), "-smp", fmt.Sprint(cpus),
		"-kernel", cfg.Kernel.Path,
		"-append", cfg.FullCmdline(),
		// The serial console goes to our stdout pipe: the lab's console
		// sink is the only reader, and it never stops reading.
		"-chardev", "stdio,id=con,signal=off",
		"-serial", "chardev:con",
		"-qmp", "unix:" + optEscape(filepath.Join(cfg.Dir, "qmp.sock")) + ",server=on,wait=off",
		"-device", "virtio-serial-pci,id=vser",
		"-chardev", "socket,id=ctl,path=" + optEscape(filepath.Join(cfg.Dir, "ctl.sock")) + ",server=on,wait=off",
		"-device", "virtserialport,bus=vser.0,chardev=ctl,name=" + vm.ControlPort,
		"-device", "pvpanic",
		// Entropy from the host, so nothing in the guest waits for the crng.
		"-device", "virtio-rng-pci",
		// Report the panic as an event, leave the guest running so it
		// finishes printing; we decide when to kill it.
		"-action", "panic=none",
		"-no-reboot",
	}
	a = append(a, cfg.Accel.QEMUArgs()...)
	if cfg.Initrd.Path != "" {
		a = append(a, "-initrd", cfg.Initrd.Path)
	}
	for i, d := range cfg.Disks {
		id := fmt.Sprintf("disk%d", i)
		// werror/rerror=report: a host I/O error (a full disk) reaches the
		// guest as an I/O error and us as BLOCK_IO_ERROR, instead of
		// QEMU's default of pausing the VM, which looks like a hang.
		a = append(a,
			"-drive", "file="+optEscape(diskPath(cfg, i))+",if=none,id="+id+",format=raw,cache=unsafe,discard=unmap,werror=report,rerror=report",
			"-device", "virtio-blk-pci,drive="+id+",serial="+d.Serial)
	}
	for _, sh := range cfg.Shares {
		// The local backend opens every path component without
		// following symlinks (QEMU >= 2.9), so a symlink in the share
		// never leads the guest to a host file outside it; what the
		// guest resolves, it resolves in its own tree.
		fsdev := "local,id=" + sh.Tag + ",path=" + optEscape(sh.Host) + ",multidevs=remap"
		if sh.Writable {
			fsdev += ",security_model=mapped-xattr"
		} else {
			fsdev += ",security_model=none,readonly=on"
		}
		a = append(a, "-fsdev", fsdev, "-device", "virtio-9p-pci,fsdev="+sh.Tag+",mount_tag="+sh.Tag)
	}
	for i, f := range cfg.FwCfg {
		a = append(a, "-fw_cfg", "name="+f.Name+",file="+optEscape(fwCfgPath(cfg, i)))
	}
	// A second monitor for the user (`labctl dump`), in the private
	// directory like the first: QEMU serves one client per monitor, and
	// the supervisor holds the first one for the VM's whole life.
	a = append(a, "-chardev", "socket,id=umon,path="+optEscape(vm.MonitorSocket(cfg.Dir))+",server=on,wait=off",
		"-mon", "chardev=umon,mode=control")
	if cfg.GDB {
		// A unix socket in the private directory: only its owner gets
		// at guest memory (a TCP port, even on loopback, is everyone's).
		a = append(a, "-chardev", "socket,id=gdb0,path="+optEscape(vm.GDBSocket(cfg.Dir))+",server=on,wait=off",
			"-gdb", "chardev:gdb0")
	}
	return a
}

type instance struct {
	cfg  vm.Config
	cmd  *exec.Cmd
	argv []string
	mon  *qmp.Monitor
	// serialIn is QEMU's stdin, the serial console's input: what SysRq
	// types after a break.
	serialIn *os.File
	serialMu sync.Mutex
	done     chan struct{}
	stderr   *tailBuffer
	closeMu  sync.Mutex
	closed   bool
	waitErr  error

	evMu     sync.Mutex
	events   chan vm.Event
	evClosed bool
}

// Start launches QEMU and connects to its monitor. On any failure it
// tears down what it created.
func (backend) Start(ctx context.Context, cfg vm.Config) (_ vm.Instance, err error) {
	if cfg.Dir == "" {
		return nil, &vm.InfraError{Op: "starting QEMU", Err: errors.New("no VM directory")}
	}
	bin, lerr := exec.LookPath(Binary())
	if lerr != nil {
		return nil, &vm.InfraError{Op: "starting QEMU", Err: fmt.Errorf("%s not found: install Debian package qemu-system-x86 (run `labctl setup`)", Binary())}
	}
	for _, f := range []string{cfg.Kernel.Path, cfg.Initrd.Path} {
		if f == "" {
			continue
		}
		if _, err := os.Stat(f); err != nil {
			return nil, &vm.InfraError{Op: "starting QEMU", Err: err}
		}
	}
	if cfg.Timeouts.QMP == 0 {
		cfg.Timeouts = vm.Scaled(cfg.Accel.Kind)
	}
	if cfg.Console == nil {
		cfg.Console = io.Discard
	}
	if err := prepareFiles(cfg); err != nil {
		return nil, err
	}
	in := &instance{
		cfg:    cfg,
		events: make(chan vm.Event, 16),
		done:   make(chan struct{}),
		stderr: &tailBuffer{max: 16 << 10},
	}
	in.argv = append([]string{bin}, Args(cfg)...)
	in.cmd = exec.Command(bin, in.argv[1:]...)
	// The serial console reads QEMU's stdin: a pipe only SysRq writes to
	// (a break then the key is the serial console's magic SysRq).
	pr, pw, perr := os.Pipe()
	if perr != nil {
		return nil, &vm.InfraError{Op: "starting QEMU", Err: fmt.Errorf("console input pipe: %w", perr)}
	}
	in.serialIn = pw
	in.cmd.Stdin = pr
	in.cmd.Stdout = cfg.Console
	in.cmd.Stderr = in.stderr
	// Own process group (a signal to us does not hit it by accident, and
	// we can kill its whole group), and death with our thread.
	in.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmdlinePath := filepath.Join(cfg.Dir, "qemu.cmdline")
	if werr := os.WriteFile(cmdlinePath, []byte(shquote.Join(in.argv)+"\n"), 0o600); werr != nil {
		return nil, &vm.InfraError{Op: "recording the QEMU command line", Err: fileutil.Explain(cmdlinePath, werr)}
	}
	err = in.cmd.Start()
	pr.Close() // QEMU has its own copy
	if err != nil {
		pw.Close()
		return nil, &vm.InfraError{Op: "starting " + bin, Err: err}
	}
	go in.wait()
	defer func() {
		if err != nil {
			in.Close()
		}
	}()

	// The QMP socket appears once QEMU has parsed its arguments; a bad
	// argument makes QEMU exit instead, and its stderr says why.
	dctx, cancel := context.WithTimeout(ctx, cfg.Timeouts.QMP*3)
	defer cancel()
	mon, merr := dialRetry(dctx, in, func(ctx context.Context) (*qmp.Monitor, error) {
		return qmp.Dial(ctx, "unix", filepath.Join(cfg.Dir, "qmp.sock"))
	})
	if merr != nil {
		return nil, &vm.InfraError{Op: "connecting to QEMU's monitor", Err: fmt.Errorf("%w; qemu stderr: %s", merr, strings.TrimSpace(in.stderr.String()))}
	}
	in.mon = mon
	// Created before the monitor answered, with the umask's mode: the
	// 0700 directory keeps others out, the mode says so too.
	if err := os.Chmod(vm.MonitorSocket(cfg.Dir), 0o600); err != nil {
		return nil, &vm.InfraError{Op: "securing the user monitor socket", Err: err}
	}
	if cfg.GDB {
		// QEMU created it before its monitor, with the umask's mode; the
		// 0700 directory already keeps others out, this says so too.
		if err := os.Chmod(vm.GDBSocket(cfg.Dir), 0o600); err != nil {
			return nil, &vm.InfraError{Op: "securing the gdbstub socket", Err: err}
		}
	}
	go in.watchEvents()
	return in, nil
}

// prepareFiles creates the VM's blank disks (sparse) and fw_cfg blobs.
func prepareFiles(cfg vm.Config) error {
	for i, d := range cfg.Disks {
		p := diskPath(cfg, i)
		f, err := os.OpenFile(p, os.O_CREATE|os.O_TRUNC|os.O_RDWR, 0o600)
		if err != nil {
			return &vm.InfraError{Op: "creating disk image", Err: fileutil.Explain(p, err)}
		}
		err = f.Truncate(int64(d.SizeMiB) << 20)
		f.Close()
		if err != nil {
			return &vm.InfraError{Op: "sizing disk image", Err: fileutil.Explain(p, err)}
		}
	}
	for i, fc := range cfg.FwCfg {
		p := fwCfgPath(cfg, i)
		// Atomic and synced like the keys they copy: QEMU never reads
		// a torn key, and a full disk is named.
		if err := fileutil.WriteFileAtomic(p, fc.Data, 0o600); err != nil {
			return &vm.InfraError{Op: "writing fw_cfg " + fc.Name, Err: err}
		}
	}
	return nil
}

func dialRetry[T any](ctx context.Context, in *instance, dial func(context.Context) (T, error)) (T, error) {
	var zero T
	for {
		attempt, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		v, err := dial(attempt)
		cancel()
		if err == nil {
			return v, nil
		}
		select {
		case <-in.done:
			return zero, fmt.Errorf("QEMU %s", exitDetail(in.waitErr))
		case <-ctx.Done():
			return zero, fmt.Errorf("%v (last error: %v)", ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (in *instance) wait() {
	// Wait returns after the console pipe is drained into the sink.
	err := in.cmd.Wait()
	in.waitErr = err
	in.send(vm.Event{Kind: vm.EventExit, Time: time.Now(), Detail: exitDetail(err)})
	in.evMu.Lock()
	in.evClosed = true
	close(in.events)
	in.evMu.Unlock()
	close(in.done)
}

func exitDetail(err error) string {
	if err == nil {
		return "exited with status 0"
	}
	return err.Error()
}

func (in *instance) send(e vm.Event) {
	in.evMu.Lock()
	defer in.evMu.Unlock()
	if in.evClosed {
		return
	}
	if e.Kind == vm.EventExit {
		// The exit is never dropped: make room for it.
		select {
		case in.events <- e:
		default:
			<-in.events
			in.events <- e
		}
		return
	}
	select {
	case in.events <- e:
	default: // nobody listening and buffer full: drop, Done() still works
	}
}

func (in *instance) watchEvents() {
	for ev := range in.mon.Events() {
		switch ev.Name {
		case "GUEST_PANICKED":
			in.send(vm.Event{Kind: vm.EventPanic, Time: ev.Time, Detail: string(ev.Data)})
		case "SHUTDOWN":
			in.send(vm.Event{Kind: vm.EventShutdown, Time: ev.Time, Detail: string(ev.Data)})
		case "BLOCK_IO_ERROR":
			in.send(vm.Event{Kind: vm.EventIOError, Time: ev.Time, Detail: in.ioErrorDetail(ev.Data)})
		}
	}
}

// ioErrorDetail turns a BLOCK_IO_ERROR event into a sentence naming the
// host file, e.g. "write to /state/vms/x/swap.img failed: No space left
// on device".
func (in *instance) ioErrorDetail(data []byte) string {
	var e struct {
		Device    string `json:"device"`
		NodeName  string `json:"node-name"`
		Operation string `json:"operation"`
		NoSpace   bool   `json:"nospace"`
		Reason    string `json:"reason"`
	}
	json.Unmarshal(data, &e)
	file := e.Device
	if file == "" {
		file = e.NodeName
	}
	var idx int
	if _, err := fmt.Sscanf(e.Device, "disk%d", &idx); err == nil && idx >= 0 && idx < len(in.cfg.Disks) {
		file = diskPath(in.cfg, idx)
	}
	// QEMU sets nospace only for the enospc action; the reason says it
	// whatever the action.
	if e.NoSpace || strings.Contains(e.Reason, "No space left") {
		return fmt.Sprintf("no space left on %s (guest %s failed)", file, e.Operation)
	}
	return fmt.Sprintf("%s to %s failed: %s", e.Operation, file, e.Reason)
}

func (in *instance) Events() <-chan vm.Event { return in.events }
func (in *instance) Done() <-chan struct{}   { return in.done }
func (in *instance) Pid() int                { return in.cmd.Process.Pid }
func (in *instance) CommandLine() []string   { return append([]string(nil), in.argv...) }
func (in *instance) Stderr() string          { return in.stderr.String() }

// Control connects to the guest channel's host end.
func (in *instance) Control(ctx context.Context) (io.ReadWriteCloser, error) {
	path := filepath.Join(in.cfg.Dir, "ctl.sock")
	return dialRetry(ctx, in, func(ctx context.Context) (io.ReadWriteCloser, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	})
}

func (in *instance) Powerdown(ctx context.Context) error {
	if _, err := in.mon.Run(ctx, "system_powerdown", nil); err != nil {
		return err
	}
	select {
	case <-in.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("guest did not power off: %w", ctx.Err())
	}
}

// SysRq sends the serial console's magic SysRq: a break (QMP
// chardev-send-break), then the command key, which the guest's 8250
// driver hands to the SysRq handler (CONFIG_MAGIC_SYSRQ_SERIAL) even when
// its user space and agent are stuck.
func (in *instance) SysRq(ctx context.Context, key byte) error {
	if _, err := in.mon.Run(ctx, "chardev-send-break", map[string]string{"id": "con"}); err != nil {
		return fmt.Errorf("sysrq %c: serial break: %w", key, err)
	}
	in.serialMu.Lock()
	defer in.serialMu.Unlock()
	if _, err := in.serialIn.Write([]byte{key}); err != nil {
		return fmt.Errorf("sysrq %c: writing to the serial console: %w", key, err)
	}
	return nil
}

func (in *instance) Pause(ctx context.Context) error {
	_, err := in.mon.Run(ctx, "stop", nil)
	return err
}

// Close stops QEMU: QMP quit, then SIGTERM to the group, then SIGKILL.
func (in *instance) Close() error {
	in.closeMu.Lock()
	defer in.closeMu.Unlock()
	if in.closed {
		return nil
	}
	in.closed = true
	grace := in.cfg.Timeouts.Grace
	if grace == 0 {
		grace = 2 * time.Second
	}
	select {
	case <-in.done:
	default:
		if in.mon != nil {
			ctx, cancel := context.WithTimeout(context.Background(), grace)
			in.mon.Run(ctx, "quit", nil)
			cancel()
		}
		select {
		case <-in.done:
		case <-time.After(grace):
			// Its whole process group.
			procutil.Terminate(-in.cmd.Process.Pid, grace, in.done)
		}
	}
	if in.mon != nil {
		in.mon.Close()
	}
	if in.serialIn != nil {
		in.serialIn.Close()
	}
	for _, s := range []string{"qmp.sock", "ctl.sock", filepath.Base(vm.MonitorSocket(in.cfg.Dir))} {
		os.Remove(filepath.Join(in.cfg.Dir, s))
	}
	if in.cfg.GDB {
		os.Remove(vm.GDBSocket(in.cfg.Dir))
	}
	for i := range in.cfg.Disks {
		os.Remove(diskPath(in.cfg, i))
	}
	for i := range in.cfg.FwCfg {
		os.Remove(fwCfgPath(in.cfg, i))
	}
	return nil
}

// optEscape escapes a value inside QEMU's comma-separated options, where
// a literal comma is written twice.
func optEscape(v string) string { return strings.ReplaceAll(v, ",", ",,") }

// tailBuffer keeps the last max bytes written.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
	max int
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = append([]byte(nil), t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}
