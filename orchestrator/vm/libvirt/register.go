package libvirt

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"ldtlab/orchestrator/console"
	"ldtlab/orchestrator/vm"
	"ldtlab/orchestrator/vm/qemu"
)

// URIEnv selects the libvirt connection for the registered backend, which
// today's vm.Backend interface cannot pass (labctl's --connect sets it).
const URIEnv = "LDTLAB_LIBVIRT_URI"

// backend adapts Start to today's vm.Backend: files by path, the console
// capture owned by the backend.
type backend struct {
	uri string // "" = ConfiguredURI()
}

func init() { vm.Register("libvirt", backend{}) }

// ConfiguredURI is the connection the registered backend uses.
func ConfiguredURI() string {
	if u := os.Getenv(URIEnv); u != "" {
		return u
	}
	return DefaultURI
}

func (b backend) Start(ctx context.Context, cfg vm.Config) (vm.Instance, error) {
	if b.uri == "" {
		b.uri = ConfiguredURI()
	}
	if cfg.GDB != "" {
		return nil, &vm.InfraError{Op: "starting a libvirt domain", Err: fmt.Errorf("--gdb is not supported by the libvirt backend")}
	}
	sc := StartConfig{
		URI:       b.uri,
		Name:      cfg.Name,
		Accel:     cfg.Accel,
		Kernel:    Artifact{Path: cfg.Kernel},
		Initrd:    Artifact{Path: cfg.Initrd},
		Cmdline:   strings.TrimSpace(qemu.BaseCmdline + " ldtlab.name=" + cfg.Name + " " + cfg.Cmdline),
		MemoryMiB: cfg.MemoryMiB,
		CPUs:      cfg.CPUs,
		Channel:   qemu.ControlPortName,
		Timeouts:  cfg.Timeouts,
	}
	for _, d := range cfg.Disks {
		st, err := os.Stat(d.Path)
		if err != nil {
			return nil, &vm.InfraError{Op: "sizing disk " + d.Serial, Err: err}
		}
		sc.Disks = append(sc.Disks, Disk{Serial: d.Serial, SizeMiB: int(st.Size() >> 20)})
	}
	for _, f := range cfg.FwCfg {
		b, err := os.ReadFile(f.Path)
		if err != nil {
			return nil, &vm.InfraError{Op: "reading fw_cfg file " + f.Name, Err: err}
		}
		sc.FwCfg = append(sc.FwCfg, FwCfg{Name: f.Name, Data: b})
	}
	con, err := console.New(filepath.Join(cfg.Dir, "console.log"), cfg.Mirror)
	if err != nil {
		return nil, &vm.InfraError{Op: "creating console log", Err: err}
	}
	sc.Console = con
	in, _, err := Start(ctx, sc)
	if err != nil {
		con.Close()
		return nil, err
	}
	os.WriteFile(filepath.Join(cfg.Dir, "domain.xml"), []byte(in.XML()), 0o600)
	// What `labctl down` needs to destroy the domain if this process dies.
	os.WriteFile(filepath.Join(cfg.Dir, leftoverFile), []byte(in.URI()+"\n"+in.DomainName()+"\n"), 0o600)
	return &adapted{Instance: in, con: con, dir: cfg.Dir}, nil
}

// adapted adds what today's vm.Instance asks of a backend on top.
type adapted struct {
	*Instance
	con *console.Capture
	dir string
}

func (a *adapted) Console() *console.Capture { return a.con }

// Pid is 0: the QEMU process belongs to libvirtd, possibly on another host.
func (a *adapted) Pid() int { return 0 }

// CommandLine is how to start the same domain by hand.
func (a *adapted) CommandLine() []string {
	return []string{"virsh", "-c", a.URI(), "create", filepath.Join(a.dir, "domain.xml")}
}

// Stderr is empty: QEMU's own log stays with libvirtd
// (/var/log/libvirt/qemu/<domain>.log on its host).
func (a *adapted) Stderr() string { return "" }

func (a *adapted) Close() error {
	err := a.Instance.Close()
	a.con.Close()
	return err
}

const leftoverFile = "libvirt-domain"

// DestroyLeftover destroys the domain recorded in a VM directory, if any
// is still there (its supervisor was killed). It is a no-op for VMs of
// other backends.
func DestroyLeftover(ctx context.Context, dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, leftoverFile))
	if err != nil {
		return nil
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return fmt.Errorf("%s: unreadable record %q", filepath.Join(dir, leftoverFile), b)
	}
	_, err = Sweep(ctx, f[0], func(name, _ string) bool { return name == f[1] })
	return err
}

var (
	regMu  sync.Mutex
	regged = map[string]bool{}
)

// BackendFor registers a backend bound to uri and returns its name
// ("libvirt@URI"), so that one process can run VMs on several hosts at
// once with today's vm.Backend (which takes no per-VM connection).
func BackendFor(uri string) string {
	name := "libvirt@" + uri
	regMu.Lock()
	defer regMu.Unlock()
	if !regged[name] {
		vm.Register(name, backend{uri: uri})
		regged[name] = true
	}
	return name
}
