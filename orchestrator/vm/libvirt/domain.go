package libvirt

import (
	"errors"
	"fmt"
	"strings"

	"libvirt.org/go/libvirtxml"

	"ldtlab/orchestrator/vm"
)

// NamePrefix marks every domain the lab defines, for teardown and the
// orphan sweep.
const NamePrefix = "ldtlab-"

// DomainSpec is everything the domain XML depends on, with paths as the
// daemon's host sees them (storage volumes, not the lab's files).
type DomainSpec struct {
	Name      string // libvirt domain name, NamePrefix included
	Type      string // libvirt domain type: "kvm" or "qemu" (TCG)
	Kernel    string // direct kernel boot: bzImage path on the daemon's host
	Initrd    string // "" for none
	Cmdline   string
	MemoryMiB int
	CPUs      int
	// NUMANodes > 1 splits CPUs and memory evenly over that many guest
	// NUMA nodes (CPUs round-robin, so every node gets one when there
	// are enough).
	NUMANodes int
	Disks     []DiskSpec
	FwCfg     []FwCfgEntry
	Shares    []vm.Share // host directories, paths on the daemon's host
	Channel   string     // virtio-serial port name the guest agent looks for
	Owner     string     // recorded as the description (see owner)
}

// DiskSpec is a raw storage volume attached as virtio-blk.
type DiskSpec struct {
	Pool, Volume string
	Serial       string // the guest finds the disk by this
}

// FwCfgEntry is one fw_cfg file, read by QEMU from a file on the
// daemon's host (a 0600 volume of the lab's pool, which libvirt hands to
// QEMU's user for the domain's life). Never a value inline in the XML:
// libvirt passes those on QEMU's command line (-fw_cfg string=), which
// every local user reads in /proc, and into its QEMU log; the entries are
// the guest's private keys.
type FwCfgEntry struct {
	Name string // must start with opt/
	File string // absolute path on the daemon's host
}

// DomainXML renders spec as a libvirt domain definition for a transient
// domain (virDomainCreateXML).
func DomainXML(s DomainSpec) (string, error) {
	if err := s.validate(); err != nil {
		return "", err
	}
	zero := uint(0)
	d := &libvirtxml.Domain{
		Type:        s.Type,
		Name:        s.Name,
		Description: s.Owner,
		Memory:      &libvirtxml.DomainMemory{Value: uint(s.MemoryMiB), Unit: "MiB"},
		VCPU:        &libvirtxml.DomainVCPU{Value: uint(s.CPUs)},
		OS: &libvirtxml.DomainOS{
			Type:    &libvirtxml.DomainOSType{Type: "hvm", Arch: "x86_64", Machine: "pc"},
			Kernel:  s.Kernel,
			Initrd:  s.Initrd,
			Cmdline: s.Cmdline,
		},
		// ACPI for the power button (Powerdown); APIC for SMP.
		Features: &libvirtxml.DomainFeatureList{
			ACPI: &libvirtxml.DomainFeature{},
			APIC: &libvirtxml.DomainFeatureAPIC{},
		},
		CPU: cpuFor(s),
		// As QEMU's -no-reboot: a reboot ends the VM. A crash is kept
		// (and reported as an event) so that the lab sees the whole report
		// and decides when the domain goes.
		OnPoweroff: "destroy",
		OnReboot:   "destroy",
		OnCrash:    "preserve",
		Devices: &libvirtxml.DomainDeviceList{
			// The serial console as a pty, read through a libvirt stream
			// (virDomainOpenConsole), so it works on a remote host too.
			Serials: []libvirtxml.DomainSerial{{
				Source: &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}},
				Target: &libvirtxml.DomainSerialTarget{Port: &zero},
			}},
			Consoles: []libvirtxml.DomainConsole{{
				Source: &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}},
				Target: &libvirtxml.DomainConsoleTarget{Type: "serial", Port: &zero},
			}},
			// The guest channel: libvirt picks the socket path and
			// virDomainOpenChannel connects to it, wherever it lives.
			Channels: []libvirtxml.DomainChannel{{
				Source: &libvirtxml.DomainChardevSource{UNIX: &libvirtxml.DomainChardevSourceUNIX{Mode: "bind"}},
				Target: &libvirtxml.DomainChannelTarget{VirtIO: &libvirtxml.DomainChannelTargetVirtIO{Name: s.Channel}},
			}},
			// Entropy from the host, so nothing in the guest waits for the crng.
			RNGs: []libvirtxml.DomainRNG{{
				Model:   "virtio",
				Backend: &libvirtxml.DomainRNGBackend{Random: &libvirtxml.DomainRNGBackendRandom{Device: "/dev/urandom"}},
			}},
			// pvpanic: a guest panic becomes a libvirt crash event.
			Panics:     []libvirtxml.DomainPanic{{Model: "isa"}},
			MemBalloon: &libvirtxml.DomainMemBalloon{Model: "none"},
			Controllers: []libvirtxml.DomainController{
				{Type: "usb", Model: "none"},
			},
		},
	}
	for i, disk := range s.Disks {
		d.Devices.Disks = append(d.Devices.Disks, libvirtxml.DomainDisk{
			Device: "disk",
			// error_policy report: a host I/O error (a full disk) reaches
			// the guest as an I/O error instead of pausing the VM, which
			// would look like a hang.
			Driver: &libvirtxml.DomainDiskDriver{Name: "qemu", Type: "raw", Cache: "unsafe", Discard: "unmap",
				ErrorPolicy: "report", RErrorPolicy: "report"},
			Source: &libvirtxml.DomainDiskSource{Volume: &libvirtxml.DomainDiskSourceVolume{Pool: disk.Pool, Volume: disk.Volume}},
			Target: &libvirtxml.DomainDiskTarget{Dev: "vd" + string(rune('a'+i)), Bus: "virtio"},
			Serial: disk.Serial,
		})
	}
	for _, sh := range s.Shares {
		// As the QEMU backend: read-only shares as "squash"
		// (security_model=none) and <readonly/>, writable ones "mapped"
		// (mapped-xattr: no setuid file, device node or foreign owner
		// appears in the host directory).
		fs := libvirtxml.DomainFilesystem{
			AccessMode: "squash",
			MultiDevs:  "remap",
			Driver:     &libvirtxml.DomainFilesystemDriver{Type: "path"},
			Source:     &libvirtxml.DomainFilesystemSource{Mount: &libvirtxml.DomainFilesystemSourceMount{Dir: sh.Host}},
			Target:     &libvirtxml.DomainFilesystemTarget{Dir: sh.Tag},
			ReadOnly:   &libvirtxml.DomainFilesystemReadOnly{},
		}
		if sh.Writable {
			fs.AccessMode, fs.ReadOnly = "mapped", nil
		}
		d.Devices.Filesystems = append(d.Devices.Filesystems, fs)
	}
	if len(s.FwCfg) > 0 {
		fw := &libvirtxml.DomainSysInfoFWCfg{}
		for _, e := range s.FwCfg {
			fw.Entry = append(fw.Entry, libvirtxml.DomainSysInfoEntry{Name: e.Name, File: e.File})
		}
		d.SysInfo = []libvirtxml.DomainSysInfo{{FWCfg: fw}}
	}
	return d.Marshal()
}

// cpuFor mirrors the QEMU backend's choice (-cpu host under KVM, -cpu max
// under TCG) and adds the fake NUMA nodes.
func cpuFor(s DomainSpec) *libvirtxml.DomainCPU {
	cpu := &libvirtxml.DomainCPU{Mode: "maximum", Check: "none"}
	if s.Type == "kvm" {
		cpu = &libvirtxml.DomainCPU{Mode: "host-passthrough", Check: "none"}
	}
	if s.NUMANodes > 1 {
		cells := make([]libvirtxml.DomainCell, s.NUMANodes)
		cpus := make([][]string, s.NUMANodes)
		for c := 0; c < s.CPUs; c++ {
			cpus[c%s.NUMANodes] = append(cpus[c%s.NUMANodes], fmt.Sprint(c))
		}
		per := s.MemoryMiB / s.NUMANodes
		for i := range cells {
			id := uint(i)
			mem := per
			if i == len(cells)-1 {
				mem = s.MemoryMiB - per*(s.NUMANodes-1) // the remainder
			}
			cells[i] = libvirtxml.DomainCell{ID: &id, CPUs: strings.Join(cpus[i], ","), Memory: uint(mem), Unit: "MiB"}
		}
		cpu.Numa = &libvirtxml.DomainNuma{Cell: cells}
	}
	return cpu
}

func (s DomainSpec) validate() error {
	var errs []error
	if !strings.HasPrefix(s.Name, NamePrefix) || len(s.Name) == len(NamePrefix) {
		errs = append(errs, fmt.Errorf("domain name %q must start with %q and name the VM", s.Name, NamePrefix))
	}
	if s.Type != "kvm" && s.Type != "qemu" {
		errs = append(errs, fmt.Errorf("domain type %q: want kvm or qemu", s.Type))
	}
	if s.Kernel == "" {
		errs = append(errs, errors.New("no kernel"))
	}
	if s.MemoryMiB <= 0 || s.CPUs <= 0 {
		errs = append(errs, fmt.Errorf("memory %d MiB and %d CPUs: both must be positive", s.MemoryMiB, s.CPUs))
	}
	if s.NUMANodes > 1 && (s.NUMANodes > s.CPUs || s.MemoryMiB/s.NUMANodes < 64) {
		errs = append(errs, fmt.Errorf("%d NUMA nodes need at least as many CPUs (have %d) and 64 MiB each (have %d MiB)", s.NUMANodes, s.CPUs, s.MemoryMiB))
	}
	if s.Channel == "" {
		errs = append(errs, errors.New("no guest channel name"))
	}
	if len(s.Disks) > 26 {
		errs = append(errs, fmt.Errorf("%d disks: at most 26 (vda…vdz)", len(s.Disks)))
	}
	for _, d := range s.Disks {
		if d.Pool == "" || d.Volume == "" || d.Serial == "" {
			errs = append(errs, fmt.Errorf("disk %+v: pool, volume and serial are all needed", d))
		}
	}
	for _, sh := range s.Shares {
		if !strings.HasPrefix(sh.Host, "/") || sh.Tag == "" || len(sh.Tag) > 31 || strings.Contains(sh.Tag, ",") {
			errs = append(errs, fmt.Errorf("share %+v: want an absolute host directory and a mount tag of 1-31 bytes without a comma", sh))
		}
	}
	for _, e := range s.FwCfg {
		if !strings.HasPrefix(e.Name, "opt/") {
			errs = append(errs, fmt.Errorf("fw_cfg name %q must start with opt/", e.Name))
		}
		if !strings.HasPrefix(e.File, "/") {
			errs = append(errs, fmt.Errorf("fw_cfg %s: file %q must be an absolute path on the daemon's host", e.Name, e.File))
		}
		// libvirt (9.0 at least) passes fw_cfg options to QEMU's -fw_cfg
		// without doubling commas, so QEMU would split the path there.
		if strings.Contains(e.File, ",") {
			errs = append(errs, fmt.Errorf("fw_cfg %s: file %q contains a comma, which libvirt does not escape for QEMU", e.Name, e.File))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("libvirt domain %s: %w", s.Name, errors.Join(errs...))
	}
	return nil
}
