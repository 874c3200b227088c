// Package vm is the small interface between the lab and a VM backend
// (QEMU today): what to boot, what a running instance offers, the timeouts
// every layer uses, and the typed errors that separate "the kernel failed"
// from "the lab failed". Backends know nothing about kernel reports or the
// guest agent; the monitoring layer in package lab does.
package vm

import (
	"context"
	"fmt"
	"io"
	"sort"
	"sync"
	"time"

	"ldtlab/orchestrator/accel"
	"ldtlab/orchestrator/console"
)

// Disk is a raw image attached as virtio-blk; the guest finds it by Serial.
type Disk struct {
	Path   string
	Serial string
}

// FwCfg is a file handed to the guest through QEMU's fw_cfg.
type FwCfg struct {
	Name string // e.g. opt/ldtlab/host_key
	Path string
}

// Config describes one VM.
type Config struct {
	Name      string
	Dir       string // private (0700) directory for sockets and logs
	Kernel    string
	Initrd    string
	Cmdline   string // appended to the lab's base command line
	MemoryMiB int
	CPUs      int
	Accel     accel.Choice
	Disks     []Disk
	FwCfg     []FwCfg
	GDB       string    // QEMU gdbstub address, e.g. tcp:127.0.0.1:1234; "" = off
	Mirror    io.Writer // optional live copy of the console
	Timeouts  Timeouts
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
	// Console is the captured serial console.
	Console() *console.Capture
	// Control is the host end of the guest channel port (virtio-serial).
	Control(ctx context.Context) (io.ReadWriteCloser, error)
	// Events delivers panics, shutdowns and the exit; closed after exit.
	Events() <-chan Event
	// Done is closed when the VM process has exited.
	Done() <-chan struct{}
	// Powerdown asks the guest to power off (ACPI) and waits for the exit.
	Powerdown(ctx context.Context) error
	// Pause freezes the guest's CPUs (a hang, as far as the guest's
	// observers can tell).
	Pause(ctx context.Context) error
	// Close stops the VM (grace period, then kill) and removes its sockets.
	// It is idempotent and safe at any time.
	Close() error
	// Pid is the VM process id.
	Pid() int
	// CommandLine is the exact command that started the VM (for repro).
	CommandLine() []string
	// Stderr is what the VM process wrote to stderr.
	Stderr() string
}

// Backend starts instances.
type Backend interface {
	Start(ctx context.Context, cfg Config) (Instance, error)
}

var (
	mu       sync.Mutex
	backends = map[string]Backend{}
)

// Register makes a backend available by name; backends call it from init.
func Register(name string, b Backend) {
	mu.Lock()
	defer mu.Unlock()
	backends[name] = b
}

// Get returns a registered backend.
func Get(name string) (Backend, error) {
	mu.Lock()
	defer mu.Unlock()
	if b, ok := backends[name]; ok {
		return b, nil
	}
	var names []string
	for n := range backends {
		names = append(names, n)
	}
	sort.Strings(names)
	return nil, fmt.Errorf("unknown VM backend %q (have %v)", name, names)
}
