// Package lab is the monitoring layer: it finds or builds the kernel and
// image, boots them on a VM backend, brings up the guest channel, and
// watches the console and the backend's events so that every failure comes
// back as a typed error from package vm — a kernel that did not boot, a
// kernel report, a hang, or a failure of the lab itself.
//
// One role per file: machine.go (Options, the Machine), prepare.go (find
// or build kernel and image), boot.go (boot as named steps, Close undoing
// them), watch.go (backend events, kernel reports, failure
// classification), conn.go (the guest channel and its reconnection),
// commands.go (Run, copies, Ping), sweep.go (what dead orchestrators
// left), state.go (named VMs and their supervisor), share.go (virtio-9p
// shares), keep.go (a crashed guest's logs), procs.go (a VM's processes).
package lab

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"ldtlab/images/kernel"
	"ldtlab/images/rootfs"
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

// Machine is a booted guest with a ready channel.
type Machine struct {
	Name      string
	Dir       string
	Kernel    *kernel.Build
	Image     *rootfs.Image
	Accel     accel.Choice
	Timeouts  vm.Timeouts
	slowdown  float64
	memoryMiB int
	BootTime  time.Duration // backend start → agent ready
	log       io.Writer

	backend vm.Backend
	inst    vm.Instance
	con     *console.Capture
	stream  *report.Stream // fed by the console as it writes (Tap); done when the console closes
	keys    *channel.Keys
	tempDir bool
	lock    *os.File // held while the machine lives (the sweep's sign of life)
	// cleanups is the boot's undo stack (boot.go); Close pops it.
	cleanups []cleanup

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

// Slowdown is how many times slower than the debug kernel this guest's
// kernel runs the same work (4 for sanitize), for limits that are not
// guest timeouts (a stress run's).
func (m *Machine) Slowdown() float64 { return m.slowdown }

// MemoryMiB is the guest's memory.
func (m *Machine) MemoryMiB() int { return m.memoryMiB }

// Instance exposes the backend instance (pause; vm.Process for the pid).
func (m *Machine) Instance() vm.Instance { return m.inst }

// Keys are the per-VM SSH keys.
func (m *Machine) Keys() *channel.Keys { return m.keys }
