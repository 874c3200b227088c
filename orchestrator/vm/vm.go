// Package vm is the small interface between the lab and a VM backend
// (vm/qemu, vm/libvirt): what to boot, what a running instance offers, the timeouts
// every layer uses, and the typed errors that separate "the kernel failed"
// from "the lab failed". Backends know nothing about kernel reports or the
// guest agent; the monitoring layer in package lab does.
package vm

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"ldtlab/orchestrator/accel"
)

// ControlPort is the name of the virtio-serial port the guest agent
// listens on (the guest channel).
const ControlPort = "ldtlab.ctl"

// BaseCmdline is what every lab guest boots with, before Config.Cmdline.
// panic=0 keeps a panicked guest alive (pvpanic has already told us) so
// the whole report reaches the console before the lab stops it.
// no_timer_check: on a loaded host a TCG vCPU can miss the IO-APIC timer
// check's few ticks and the kernel panics "IO-APIC + timer doesn't work!"
// at boot (seen with 20+ runnable host threads on 2 cores); the check
// tests the (virtual) board, not the kernel under test.
const BaseCmdline = "console=ttyS0 panic=0 no_hash_pointers printk.devkmsg=on no_timer_check rdinit=/init"

// Names of the fw_cfg entries the guest agent reads its keys from
// (/sys/firmware/qemu_fw_cfg/by_name/<name>/raw).
const (
	FwCfgHostKey       = "opt/ldtlab/host_key"
	FwCfgAuthorizedKey = "opt/ldtlab/authorized_key"
	// FwCfgShares lists the shares the guest mounts, one per line (see
	// guest/agent/boot.EncodeShares).
	FwCfgShares = "opt/ldtlab/shares"
)

// GDBSocket is where a VM's gdbstub listens when Config.GDB is set
// (`gdb vmlinux -ex 'target remote PATH'`).
func GDBSocket(dir string) string { return filepath.Join(dir, "gdb.sock") }

// MonitorSocket is a second QMP monitor of a local QEMU (the lab's own is
// in use by the supervisor), for `labctl dump`: owner-only like
// GDBSocket.
func MonitorSocket(dir string) string { return filepath.Join(dir, "monitor.sock") }

// Artifact is a file the guest boots from (kernel, initramfs), named by
// the SHA-256 of its content so that a remote backend uploads it once.
type Artifact struct {
	Path string // on the orchestrator's machine
	Hash string // hex SHA-256 of the content
}

// Disk is a blank disk the backend creates for the guest (sparse, raw),
// attached as virtio-blk; the guest finds it by Serial.
type Disk struct {
	Serial  string
	SizeMiB int
}

// FwCfg is data handed to the guest through the firmware configuration
// device. Backends keep it off command lines (it holds keys).
type FwCfg struct {
	Name string // e.g. FwCfgHostKey
	Data []byte
}

// Share is a host directory exported to the guest over virtio-9p, which
// the guest mounts by its Tag.
type Share struct {
	// Host is an absolute path without symlinks on the backend's host
	// (this machine: both backends refuse shares on another host).
	Host string
	// Tag is the 9p mount tag (at most 31 bytes, no comma).
	Tag string
	// Writable: the guest may write. A read-only share is exported
	// read-only by the VMM (security_model=none: files as the VMM's user
	// reads them). A writable one uses security_model=mapped-xattr: the
	// guest's owners, modes and special files are xattrs on plain 0600
	// files and 0700 directories, so it cannot plant a setuid binary, a
	// device node or a file of another owner in the host directory.
	Writable bool
}

// Config describes one VM.
type Config struct {
	Name string // the lab's VM name; backends prefix it ("ldtlab-")
	// Dir is a private (0700) directory on the orchestrator's machine
	// for the backend's local state (sockets, disk images); a remote
	// backend may keep nothing there.
	Dir       string
	Kernel    Artifact
	Initrd    Artifact
	Cmdline   string // appended to BaseCmdline
	MemoryMiB int
	CPUs      int
	Accel     accel.Choice // resolved by the same backend's Accel
	Disks     []Disk
	FwCfg     []FwCfg
	Shares    []Share
	// Console receives every byte of the serial console, in order; the
	// lab owns it (capture, crash detection, mirror). Backends must not
	// block on anything else while writing to it.
	Console io.Writer
	// GDB exposes the guest's gdbstub as the unix socket GDBSocket(Dir),
	// owner-only (0600 in the 0700 Dir), never on a network port: a
	// gdbstub reads and writes guest memory without authentication.
	GDB      bool
	Timeouts Timeouts
}

// FullCmdline is the guest kernel's whole command line.
func (c Config) FullCmdline() string {
	return strings.TrimSpace(BaseCmdline + " ldtlab.name=" + c.Name + " " + c.Cmdline)
}

// EventKind classifies what an instance reports asynchronously.
type EventKind string

const (
	EventPanic    EventKind = "panic"    // pvpanic: the guest kernel panicked
	EventShutdown EventKind = "shutdown" // the guest powered off or rebooted
	EventExit     EventKind = "exit"     // the VM process exited
	EventIOError  EventKind = "io-error" // a disk's host file failed (full disk)
)

// Event is one asynchronous notification from a backend.
type Event struct {
	Kind   EventKind
	Time   time.Time
	Detail string
}

// Instance is a running VM.
type Instance interface {
	// Control connects to the host end of the guest channel port. It may
	// be called again after the connection broke (a restarted agent).
	Control(ctx context.Context) (io.ReadWriteCloser, error)
	// Events delivers panics, shutdowns, disk errors and, last, the
	// exit; it is closed right after EventExit.
	Events() <-chan Event
	// Done is closed when the VM has stopped for good.
	Done() <-chan struct{}
	// Powerdown asks the guest to power off (ACPI) and waits for the exit.
	Powerdown(ctx context.Context) error
	// Pause freezes the guest's CPUs (a hang, as far as the guest's
	// observers can tell).
	Pause(ctx context.Context) error
	// Close stops the VM (grace period, then kill) and removes what the
	// backend created for it. It is idempotent and safe at any time.
	Close() error
}

// SysRqer is implemented by instances that can type the guest kernel's
// magic SysRq on its serial console (QEMU: a break, then the key), which
// works when the guest's user space no longer answers.
type SysRqer interface {
	SysRq(ctx context.Context, key byte) error
}

// Process is implemented by instances that are a local process (QEMU):
// details for reproduction and diagnosis only.
type Process interface {
	Pid() int
	// CommandLine is the exact command that started the VM.
	CommandLine() []string
	// Stderr is what the process wrote to stderr (its last bytes).
	Stderr() string
}

// Stderr is inst's stderr if it is a local process, else "".
func Stderr(inst Instance) string {
	if p, ok := inst.(Process); ok {
		return p.Stderr()
	}
	return ""
}

// Capacity is how many guests of what size a backend can run at once.
type Capacity struct {
	CPUs      int // host CPUs available to guests
	MemoryMiB int // host memory available to guests
}

// VMs is how many guests of cpus vCPUs and mem MiB fit, at least one. TCG
// guests each keep a host CPU busy, so vCPUs are not oversubscribed.
func (c Capacity) VMs(cpus, mem int) int {
	n := 1 << 30
	if cpus > 0 && c.CPUs > 0 {
		n = min(n, c.CPUs/cpus)
	}
	if mem > 0 && c.MemoryMiB > 0 {
		n = min(n, c.MemoryMiB/mem)
	}
	if n < 1 || n == 1<<30 {
		return 1
	}
	return n
}

// Backend starts instances on one host.
type Backend interface {
	Name() string
	// Accel resolves an accelerator request (auto, kvm, tcg) on the
	// backend's host.
	Accel(request string) (accel.Choice, error)
	// Capacity says what the backend's host can run.
	Capacity() (Capacity, error)
	Start(ctx context.Context, cfg Config) (Instance, error)
	// Close releases the backend (connections); running instances are
	// not affected.
	Close() error
}

// Sweeper is implemented by backends whose guests can outlive the
// orchestrator that started them (a libvirt domain does; a QEMU child
// dies with its parent): it finds and removes them.
type Sweeper interface {
	// Sweep removes every guest on the backend's host whose
	// orchestrator died without cleaning up (a SIGKILL).
	Sweep(ctx context.Context) error
	// SweepDir removes the guest started with Config.Dir == dir if it
	// still runs (`labctl down` of a VM whose supervisor was killed);
	// no guest is no error.
	SweepDir(ctx context.Context, dir string) error
}

// BackendConfig configures a backend.
type BackendConfig struct {
	// Connect is the backend's host: a libvirt URI; "" for the local
	// QEMU backend.
	Connect string
}

// Factory constructs a backend from its configuration.
type Factory func(BackendConfig) (Backend, error)

var (
	mu        sync.Mutex
	factories = map[string]Factory{}
)

// Register makes a backend available by name; backends call it from init.
func Register(name string, f Factory) {
	mu.Lock()
	defer mu.Unlock()
	factories[name] = f
}

// Open constructs the backend called name.
func Open(name string, cfg BackendConfig) (Backend, error) {
	mu.Lock()
	f, ok := factories[name]
	var names []string
	for n := range factories {
		names = append(names, n)
	}
	mu.Unlock()
	if !ok {
		sort.Strings(names)
		return nil, fmt.Errorf("unknown VM backend %q (have %v)", name, names)
	}
	b, err := f(cfg)
	if err != nil {
		return nil, fmt.Errorf("opening the %s backend: %w", name, err)
	}
	return b, nil
}
