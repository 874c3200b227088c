package libvirt

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"sync"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"ldtlab/orchestrator/accel"
	"ldtlab/orchestrator/vm"
)

// StartConfig is one VM for the libvirt backend.
type StartConfig struct {
	URI            string // libvirt connection; DefaultURI if empty
	Name           string // the lab's VM name; the domain is NamePrefix+Name
	Accel          accel.Choice
	Kernel, Initrd vm.Artifact // Hash "" = hash the file here
	Cmdline        string      // the complete kernel command line
	MemoryMiB      int
	CPUs           int
	NUMANodes      int
	Disks          []vm.Disk
	FwCfg          []vm.FwCfg
	Shares         []vm.Share
	Channel        string    // virtio-serial port name of the guest agent
	Console        io.Writer // receives the serial console stream
	Timeouts       vm.Timeouts
}

// Instance is a running transient domain.
type Instance struct {
	cfg    StartConfig
	c      *conn // replaced by a fresh one if Close finds it dead
	u      *url.URL
	dom    golibvirt.Domain
	xml    string
	vols   []golibvirt.StorageVol
	events chan vm.Event
	done   chan struct{}

	stopEvents context.CancelFunc
	console    *stream
	consoleEnd chan struct{} // closed when the console copy has ended

	cMu       sync.Mutex
	closeOnce sync.Once
	exitOnce  sync.Once
	evMu      sync.Mutex // send vs. close(events)
	exited    bool
}

// Uploaded reports, for tests and logs, which artifacts a Start had to
// upload (the others were already in the pool).
type Uploaded struct{ Kernel, Initrd bool }

// Start creates the domain (paused), attaches the console, then lets it
// run. Whatever fails, nothing it created is left behind.
func Start(ctx context.Context, c StartConfig) (_ *Instance, up Uploaded, err error) {
	if c.URI == "" {
		c.URI = DefaultURI
	}
	dt, err := domainType(c.Accel.Kind)
	if err != nil {
		return nil, up, &vm.InfraError{Op: "starting a libvirt domain", Err: err}
	}
	if c.MemoryMiB == 0 {
		c.MemoryMiB = 1024
	}
	if c.CPUs == 0 {
		c.CPUs = 2
	}
	if c.Timeouts.QMP == 0 {
		c.Timeouts = vm.Scaled(c.Accel.Kind)
	}
	cn, err := connect(ctx, c.URI)
	if err != nil {
		return nil, up, &vm.InfraError{Op: "starting a libvirt domain", Err: err}
	}
	l, u := cn.Libvirt, cn.u
	// A daemon that stops answering must not hold Start past ctx.
	defer cn.bound(ctx)()
	in := &Instance{cfg: c, c: cn, u: u, events: make(chan vm.Event, 16), done: make(chan struct{}), consoleEnd: make(chan struct{})}
	in.dom.Name = NamePrefix + c.Name
	defer func() {
		if err != nil {
			in.Close()
		}
	}()
	infra := func(op string, err error) error {
		return &vm.InfraError{Op: op + " (" + in.dom.Name + " on " + u.Redacted() + ")", Err: err}
	}

	// A domain of the same name whose orchestrator died (`labctl up x`
	// again after a SIGKILL) would block the name; its disks would clash
	// with the new ones, so this comes before they are created.
	sweep(l, func(name, desc string) bool { return name == in.dom.Name && orphaned(desc, pidAlive) })
	pool, err := ensurePool(l)
	if err != nil {
		return nil, up, infra("preparing the storage pool", err)
	}
	spec := DomainSpec{Name: in.dom.Name, Type: dt, Cmdline: c.Cmdline, MemoryMiB: c.MemoryMiB, CPUs: c.CPUs, NUMANodes: c.NUMANodes, Channel: c.Channel, Owner: owner(), Shares: c.Shares}
	if spec.Kernel, up.Kernel, err = artifactVolume(ctx, l, pool, "kernel", c.Kernel.Path, c.Kernel.Hash); err != nil {
		return nil, up, infra("placing the kernel", err)
	}
	if c.Initrd.Path != "" {
		if spec.Initrd, up.Initrd, err = artifactVolume(ctx, l, pool, "initrd", c.Initrd.Path, c.Initrd.Hash); err != nil {
			return nil, up, infra("placing the initramfs", err)
		}
	}
	for _, d := range c.Disks {
		name := fmt.Sprintf("%s-%s.img", in.dom.Name, d.Serial)
		v, err := diskVolume(l, pool, name, uint64(d.SizeMiB)<<20)
		if err != nil {
			return nil, up, infra("creating disk "+d.Serial, err)
		}
		in.vols = append(in.vols, v)
		spec.Disks = append(spec.Disks, DiskSpec{Pool: PoolName, Volume: name, Serial: d.Serial})
	}
	for i, f := range c.FwCfg {
		// The keys go to the daemon's host as 0600 volumes, which QEMU
		// reads by path: never on its command line.
		name := fwCfgVolName(in.dom.Name, i)
		v, path, err := secretVolume(l, pool, name, f.Data)
		if v.Name != "" {
			in.vols = append(in.vols, v)
		}
		if err != nil {
			return nil, up, infra("placing fw_cfg "+f.Name, err)
		}
		spec.FwCfg = append(spec.FwCfg, FwCfgEntry{Name: f.Name, File: path})
	}
	if in.xml, err = DomainXML(spec); err != nil {
		return nil, up, infra("building the domain XML", err)
	}

	// Events first, so that nothing the new domain does is missed.
	ectx, cancel := context.WithCancel(context.Background())
	in.stopEvents = cancel
	evs, err := l.LifecycleEvents(ectx)
	if err != nil {
		return nil, up, infra("subscribing to libvirt events", err)
	}
	if in.dom, err = l.DomainCreateXML(in.xml, golibvirt.DomainStartPaused); err != nil {
		in.dom.Name = spec.Name
		return nil, up, infra("creating the domain", err)
	}
	go in.watch(evs)
	// The console must be attached before the first instruction runs, or
	// the first lines of the boot are lost.
	if in.console, err = openStream(ctx, u, procDomainOpenConsole, in.dom, ""); err != nil {
		return nil, up, infra("attaching the serial console", err)
	}
	go func() {
		defer close(in.consoleEnd)
		if c.Console != nil {
			io.Copy(c.Console, in.console)
		} else {
			io.Copy(io.Discard, in.console)
		}
	}()
	if err := l.DomainResume(in.dom); err != nil {
		return nil, up, infra("starting the guest's CPUs", err)
	}
	return in, up, nil
}

// watch turns this domain's lifecycle events into vm events. It ends
// when the domain has stopped (or the connection to libvirtd is lost).
func (in *Instance) watch(evs <-chan golibvirt.DomainEventLifecycleMsg) {
	lost := in.c.Disconnected() // the connection the events come on
	for {
		var ev golibvirt.DomainEventLifecycleMsg
		var ok bool
		select {
		case ev, ok = <-evs:
		case <-lost:
			in.exit("lost the connection to libvirtd")
			return
		}
		if !ok {
			in.exit("libvirt event stream ended")
			return
		}
		if ev.Dom.UUID != in.dom.UUID {
			continue
		}
		now := time.Now()
		switch golibvirt.DomainEventType(ev.Event) {
		case golibvirt.DomainEventCrashed:
			in.send(vm.Event{Kind: vm.EventPanic, Time: now, Detail: crashDetail(ev.Detail)})
			// on_crash=preserve has paused the guest; like QEMU's
			// -action panic=none, let it finish printing its report
			// (panic=0 keeps the kernel spinning afterwards).
			go in.do(10*time.Second, func(l *golibvirt.Libvirt) error { return l.DomainResume(in.dom) })
		case golibvirt.DomainEventShutdown:
			in.send(vm.Event{Kind: vm.EventShutdown, Time: now, Detail: "guest shut down"})
		case golibvirt.DomainEventStopped:
			in.exit(stopDetail(ev.Detail))
			return
		}
	}
}

func crashDetail(d int32) string {
	if golibvirt.DomainEventCrashedDetailType(d) == golibvirt.DomainEventCrashedPanicked {
		return "guest panicked (pvpanic)"
	}
	return fmt.Sprintf("guest crashed (libvirt detail %d)", d)
}

func stopDetail(d int32) string {
	switch golibvirt.DomainEventStoppedDetailType(d) {
	case golibvirt.DomainEventStoppedShutdown:
		return "exited with status 0 (guest powered off)"
	case golibvirt.DomainEventStoppedDestroyed:
		return "domain destroyed"
	case golibvirt.DomainEventStoppedCrashed:
		return "QEMU crashed"
	case golibvirt.DomainEventStoppedFailed:
		return "QEMU failed"
	}
	return fmt.Sprintf("domain stopped (libvirt detail %d)", d)
}

// exit reports the end once: the console has been drained first (as the
// QEMU backend closes its capture before the exit event).
func (in *Instance) exit(detail string) {
	in.exitOnce.Do(func() {
		if in.console != nil {
			select {
			case <-in.consoleEnd:
			case <-time.After(2 * time.Second):
			}
		}
		in.send(vm.Event{Kind: vm.EventExit, Time: time.Now(), Detail: detail})
		in.evMu.Lock()
		in.exited = true
		close(in.events)
		in.evMu.Unlock()
		close(in.done)
	})
}

func (in *Instance) send(e vm.Event) {
	in.evMu.Lock()
	defer in.evMu.Unlock()
	if in.exited {
		return
	}
	if e.Kind == vm.EventExit {
		// The exit is never dropped: make room for it.
		select {
		case in.events <- e:
		default:
			select {
			case <-in.events:
			default:
			}
			in.events <- e
		}
		return
	}
	select {
	case in.events <- e:
	default: // nobody listening and buffer full: drop, Done() still works
	}
}

// Events delivers panics, shutdowns and the exit; closed after exit.
func (in *Instance) Events() <-chan vm.Event { return in.events }

// Done is closed when the domain has stopped.
func (in *Instance) Done() <-chan struct{} { return in.done }

// DomainName is the libvirt domain's name.
func (in *Instance) DomainName() string { return in.dom.Name }

// XML is the domain definition the instance was created from.
func (in *Instance) XML() string { return in.xml }

// URI is the connection the domain lives on.
func (in *Instance) URI() string { return in.cfg.URI }

// Control opens the guest channel as a libvirt stream. Calling it again
// takes the channel over from the previous stream (a reconnect).
func (in *Instance) Control(ctx context.Context) (io.ReadWriteCloser, error) {
	select {
	case <-in.done:
		return nil, errors.New("the domain has stopped")
	default:
	}
	s, err := openStream(ctx, in.u, procDomainOpenChannel, in.dom, in.cfg.Channel)
	if err != nil {
		return nil, fmt.Errorf("opening channel %s of %s: %w", in.cfg.Channel, in.dom.Name, err)
	}
	return s, nil
}

// Powerdown presses the ACPI power button and waits for the domain to stop.
func (in *Instance) Powerdown(ctx context.Context) error {
	if err := in.doCtx(ctx, func(l *golibvirt.Libvirt) error {
		return l.DomainShutdownFlags(in.dom, golibvirt.DomainShutdownAcpiPowerBtn)
	}); err != nil {
		return fmt.Errorf("powering down %s: %w", in.dom.Name, err)
	}
	select {
	case <-in.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("guest did not power off: %w", ctx.Err())
	}
}

// Pause freezes the guest's CPUs.
func (in *Instance) Pause(ctx context.Context) error {
	if err := in.doCtx(ctx, func(l *golibvirt.Libvirt) error { return l.DomainSuspend(in.dom) }); err != nil {
		return fmt.Errorf("pausing %s: %w", in.dom.Name, err)
	}
	return nil
}

// do runs a call on the instance's connection within timeout.
func (in *Instance) do(timeout time.Duration, fn func(l *golibvirt.Libvirt) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return in.doCtx(ctx, fn)
}

// doCtx runs a call within ctx: if libvirtd does not answer in time, the
// connection is cut (the call fails) and the instance counts as lost; its
// Close reconnects to destroy the domain.
func (in *Instance) doCtx(ctx context.Context, fn func(l *golibvirt.Libvirt) error) error {
	in.cMu.Lock()
	c := in.c
	in.cMu.Unlock()
	stop := c.bound(ctx)
	err := fn(c.Libvirt)
	if !stop() && ctx.Err() != nil {
		return fmt.Errorf("libvirtd did not answer within the deadline: %w", ctx.Err())
	}
	return err
}

// Close destroys the domain (transient: nothing stays defined), deletes
// its disks and ends the connection. It is idempotent.
func (in *Instance) Close() error {
	var err error
	in.closeOnce.Do(func() {
		grace := in.cfg.Timeouts.Grace
		if grace == 0 {
			grace = 2 * time.Second
		}
		if in.console != nil {
			in.console.Close()
		}
		// The instance's connection may have been cut (a deadline) or
		// lost: clean up through a fresh one.
		in.cMu.Lock()
		if in.c.dead() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if nc, cerr := connect(ctx, in.cfg.URI); cerr == nil {
				in.c = nc
			} else {
				err = fmt.Errorf("reconnecting to destroy %s: %w", in.dom.Name, cerr)
			}
			cancel()
		}
		in.cMu.Unlock()
		if in.dom.UUID != (golibvirt.UUID{}) {
			select {
			case <-in.done:
			default:
				derr := in.do(5*grace, func(l *golibvirt.Libvirt) error { return l.DomainDestroy(in.dom) })
				if derr != nil && !isNotFound(derr) && err == nil {
					err = fmt.Errorf("destroying %s: %w", in.dom.Name, derr)
				}
				select {
				case <-in.done:
				case <-time.After(3 * grace):
				}
			}
		}
		for _, v := range in.vols {
			derr := in.do(5*grace, func(l *golibvirt.Libvirt) error { return l.StorageVolDelete(v, 0) })
			if derr != nil && err == nil {
				err = fmt.Errorf("deleting volume %s: %w", v.Name, derr)
			}
		}
		in.exit("closed")
		in.cMu.Lock()
		in.c.close()
		in.cMu.Unlock()
		// Only now: cancelling earlier sends the event deregistration
		// concurrently with the connection's close, and libvirtd 9.0
		// frees a client's callbacks on close without its lock — it
		// segfaulted in CI. libvirtd drops a closed client's callbacks
		// itself; after the close this only ends go-libvirt's goroutine.
		if in.stopEvents != nil {
			in.stopEvents()
		}
	})
	return err
}
