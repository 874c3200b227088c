package libvirt

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"ldtlab/internal/fileutil"
	"ldtlab/orchestrator/accel"
	"ldtlab/orchestrator/vm"
)

func init() {
	vm.Register("libvirt", func(cfg vm.BackendConfig) (vm.Backend, error) { return Open(cfg.Connect) })
}

// Backend is the libvirt vm.Backend for one host (one connection URI).
type Backend struct {
	uri string
	u   *url.URL

	mu sync.Mutex
	c  *conn // for Accel, Capacity and Sweep; instances have their own
}

// Open connects to the libvirtd behind uri (DefaultURI if empty).
func Open(uri string) (*Backend, error) {
	if uri == "" {
		uri = DefaultURI
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := connect(ctx, uri)
	if err != nil {
		return nil, err
	}
	return &Backend{uri: uri, u: c.u, c: c}, nil
}

// call runs fn on the backend's connection within ctx, reconnecting first
// if an earlier deadline cut it.
func (b *Backend) call(ctx context.Context, fn func(l *golibvirt.Libvirt) error) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.c.dead() {
		c, err := connect(ctx, b.uri)
		if err != nil {
			return err
		}
		b.c = c
	}
	stop := b.c.bound(ctx)
	err := fn(b.c.Libvirt)
	if !stop() && ctx.Err() != nil {
		return fmt.Errorf("libvirtd at %s did not answer within the deadline: %w", b.u.Redacted(), ctx.Err())
	}
	return err
}

// hostCallTimeout bounds Accel and Capacity, which take no context.
const hostCallTimeout = 30 * time.Second

// Name is "libvirt".
func (b *Backend) Name() string { return "libvirt" }

// URI is the backend's connection.
func (b *Backend) URI() string { return b.uri }

// Accel resolves the request from the host's domain capabilities (and,
// for this machine's daemon, the lab's own probe).
func (b *Backend) Accel(request string) (accel.Choice, error) {
	ctx, cancel := context.WithTimeout(context.Background(), hostCallTimeout)
	defer cancel()
	var kvmErr error
	if err := b.call(ctx, func(l *golibvirt.Libvirt) error { kvmErr = kvmCaps(l); return nil }); err != nil {
		return accel.Choice{}, err
	}
	return resolveAccel(request, kvmErr, isLocal(b.u), accel.ResolveHost)
}

// Capacity is the host's CPUs and free memory as libvirtd reports them.
func (b *Backend) Capacity() (vm.Capacity, error) {
	ctx, cancel := context.WithTimeout(context.Background(), hostCallTimeout)
	defer cancel()
	var c vm.Capacity
	err := b.call(ctx, func(l *golibvirt.Libvirt) error {
		_, _, cpus, _, _, _, _, _, err := l.NodeGetInfo()
		if err != nil {
			return fmt.Errorf("libvirt node info: %w", err)
		}
		free, err := l.NodeGetFreeMemory()
		if err != nil {
			return fmt.Errorf("libvirt free memory: %w", err)
		}
		c = vm.Capacity{CPUs: int(cpus), MemoryMiB: int(free >> 20)}
		return nil
	})
	return c, err
}

// Sweep destroys the lab's domains whose owning process, on this machine,
// is gone (a SIGKILLed orchestrator), and their disks.
func (b *Backend) Sweep(ctx context.Context) error {
	return b.call(ctx, func(l *golibvirt.Libvirt) error {
		_, err := sweep(l, func(_, desc string) bool { return orphaned(desc, pidAlive) })
		return err
	})
}

// Close ends the backend's own connection; instances keep theirs.
func (b *Backend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.c.close()
}

// Start boots cfg as a transient domain.
func (b *Backend) Start(ctx context.Context, cfg vm.Config) (vm.Instance, error) {
	if cfg.GDB {
		// QEMU runs on the libvirt host as libvirt's user: its gdbstub
		// would be a socket or port the lab's user does not own.
		return nil, &vm.InfraError{Op: "starting a libvirt domain", Err: errors.New("a gdbstub is not supported by the libvirt backend (use --backend qemu)")}
	}
	sc := StartConfig{
		URI:       b.uri,
		Name:      cfg.Name,
		Accel:     cfg.Accel,
		Kernel:    cfg.Kernel,
		Initrd:    cfg.Initrd,
		Cmdline:   cfg.FullCmdline(),
		MemoryMiB: cfg.MemoryMiB,
		CPUs:      cfg.CPUs,
		Channel:   vm.ControlPort,
		Console:   cfg.Console,
		Timeouts:  cfg.Timeouts,
		Disks:     cfg.Disks,
		FwCfg:     cfg.FwCfg,
		Shares:    cfg.Shares,
	}
	in, _, err := Start(ctx, sc)
	if err != nil {
		return nil, err
	}
	if cfg.Dir != "" {
		// For reproduction by hand, and for `labctl down` if the
		// orchestrator dies (the domain outlives it).
		os.WriteFile(filepath.Join(cfg.Dir, "domain.xml"), []byte(in.XML()), 0o600)
		// Atomic: `labctl down` of a killed supervisor reads it
		// (SweepDir) and must never see half a record.
		fileutil.WriteFileAtomic(filepath.Join(cfg.Dir, leftoverFile), []byte(in.URI()+"\n"+in.DomainName()+"\n"), 0o600)
	}
	return in, nil
}

const leftoverFile = "libvirt-domain"

// SweepDir destroys the domain recorded in a VM directory, if it is
// still there (its supervisor was killed); a directory without the
// record is no error.
func (b *Backend) SweepDir(ctx context.Context, dir string) error {
	rec, err := os.ReadFile(filepath.Join(dir, leftoverFile))
	if err != nil {
		return nil
	}
	f := strings.Fields(string(rec))
	if len(f) != 2 {
		return fmt.Errorf("%s: unreadable record %q", filepath.Join(dir, leftoverFile), rec)
	}
	match := func(name, _ string) bool { return name == f[1] }
	if f[0] != b.uri {
		// Recorded against another connection than this backend's.
		_, err = Sweep(ctx, f[0], match)
		return err
	}
	return b.call(ctx, func(l *golibvirt.Libvirt) error {
		_, err := sweep(l, match)
		return err
	})
}
