package libvirt

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"libvirt.org/go/libvirtxml"

	"ldtlab/orchestrator/vm"
)

func spec() DomainSpec {
	return DomainSpec{
		Name: "ldtlab-x", Type: "qemu",
		Kernel: "/pool/k-abc", Initrd: "/pool/i-def", Cmdline: "console=ttyS0 panic=0",
		MemoryMiB: 1024, CPUs: 2, Channel: "ldtlab.ctl",
		Disks: []DiskSpec{{Pool: "ldtlab", Volume: "x-swap.img", Serial: "ldtswap"}, {Pool: "ldtlab", Volume: "x-data.img", Serial: "ldtdata"}},
		FwCfg: []FwCfgEntry{{Name: "opt/ldtlab/host_key", File: "/pool/ldtlab-x-fwcfg0"}},
	}
}

// parse renders s and reads the XML back through libvirtxml, so the test
// checks the structure libvirt will see rather than the text layout.
func parse(t *testing.T, s DomainSpec) *libvirtxml.Domain {
	t.Helper()
	x, err := DomainXML(s)
	require.NoError(t, err)
	var d libvirtxml.Domain
	require.NoError(t, d.Unmarshal(x))
	return &d
}

func TestDomainXML(t *testing.T) {
	d := parse(t, spec())
	assert.Equal(t, "qemu", d.Type)
	assert.Equal(t, "ldtlab-x", d.Name)
	assert.Equal(t, uint(1024), d.Memory.Value)
	assert.Equal(t, "MiB", d.Memory.Unit)
	assert.Equal(t, uint(2), d.VCPU.Value)
	assert.Equal(t, "/pool/k-abc", d.OS.Kernel)
	assert.Equal(t, "/pool/i-def", d.OS.Initrd)
	assert.Equal(t, "console=ttyS0 panic=0", d.OS.Cmdline)
	assert.Equal(t, "preserve", d.OnCrash)
	assert.Equal(t, "destroy", d.OnReboot)
	assert.Equal(t, "maximum", d.CPU.Mode, "TCG: everything QEMU can emulate, as -cpu max")
	assert.Nil(t, d.CPU.Numa)
	assert.NotNil(t, d.Features.ACPI, "ACPI, for the power button")

	dev := d.Devices
	require.Len(t, dev.Disks, 2)
	assert.Equal(t, "ldtswap", dev.Disks[0].Serial)
	assert.Equal(t, "vda", dev.Disks[0].Target.Dev)
	assert.Equal(t, "virtio", dev.Disks[0].Target.Bus)
	assert.Equal(t, &libvirtxml.DomainDiskSourceVolume{Pool: "ldtlab", Volume: "x-swap.img"}, dev.Disks[0].Source.Volume)
	assert.Equal(t, "report", dev.Disks[0].Driver.ErrorPolicy)
	assert.Equal(t, "vdb", dev.Disks[1].Target.Dev)

	require.Len(t, dev.Channels, 1)
	assert.Equal(t, "ldtlab.ctl", dev.Channels[0].Target.VirtIO.Name)
	assert.NotNil(t, dev.Channels[0].Source.UNIX)
	require.Len(t, dev.Serials, 1)
	assert.NotNil(t, dev.Serials[0].Source.Pty)
	require.Len(t, dev.Consoles, 1)
	assert.Equal(t, "serial", dev.Consoles[0].Target.Type)
	require.Len(t, dev.RNGs, 1)
	assert.Equal(t, "virtio", dev.RNGs[0].Model)
	require.Len(t, dev.Panics, 1)
	assert.Equal(t, "isa", dev.Panics[0].Model)

	require.Len(t, d.SysInfo, 1)
	require.NotNil(t, d.SysInfo[0].FWCfg)
	// A file QEMU reads, never a value: libvirt would put a value on
	// QEMU's command line (-fw_cfg string=), world-readable in /proc.
	assert.Equal(t, []libvirtxml.DomainSysInfoEntry{{Name: "opt/ldtlab/host_key", File: "/pool/ldtlab-x-fwcfg0"}}, d.SysInfo[0].FWCfg.Entry)
}

func TestDomainXMLKVM(t *testing.T) {
	s := spec()
	s.Type = "kvm"
	d := parse(t, s)
	assert.Equal(t, "kvm", d.Type)
	assert.Equal(t, "host-passthrough", d.CPU.Mode)
}

func TestDomainXMLNUMA(t *testing.T) {
	tests := []struct {
		name       string
		cpus, mem  int
		nodes      int
		wantCPUs   []string
		wantMemMiB []uint
	}{
		{"two nodes", 2, 1024, 2, []string{"0", "1"}, []uint{512, 512}},
		{"uneven", 3, 1000, 2, []string{"0,2", "1"}, []uint{500, 500}},
		{"remainder to the last", 4, 1025, 4, []string{"0", "1", "2", "3"}, []uint{256, 256, 256, 257}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := spec()
			s.CPUs, s.MemoryMiB, s.NUMANodes = tt.cpus, tt.mem, tt.nodes
			d := parse(t, s)
			require.NotNil(t, d.CPU.Numa)
			var cpus []string
			var mem []uint
			for i, c := range d.CPU.Numa.Cell {
				assert.Equal(t, uint(i), *c.ID)
				cpus = append(cpus, c.CPUs)
				mem = append(mem, c.Memory)
			}
			assert.Equal(t, tt.wantCPUs, cpus)
			assert.Equal(t, tt.wantMemMiB, mem)
		})
	}
}

func TestDomainXMLInvalid(t *testing.T) {
	tests := []struct {
		name    string
		edit    func(s *DomainSpec)
		wantErr string
	}{
		{"no prefix", func(s *DomainSpec) { s.Name = "x" }, `must start with "ldtlab-"`},
		{"bare prefix", func(s *DomainSpec) { s.Name = NamePrefix }, `must start with "ldtlab-"`},
		{"bad type", func(s *DomainSpec) { s.Type = "tcg" }, `domain type "tcg": want kvm or qemu`},
		{"no kernel", func(s *DomainSpec) { s.Kernel = "" }, "no kernel"},
		{"no memory", func(s *DomainSpec) { s.MemoryMiB = 0 }, "both must be positive"},
		{"too many nodes", func(s *DomainSpec) { s.NUMANodes = 3 }, "3 NUMA nodes need"},
		{"no channel", func(s *DomainSpec) { s.Channel = "" }, "no guest channel"},
		{"disk without serial", func(s *DomainSpec) { s.Disks[0].Serial = "" }, "pool, volume and serial"},
		{"fw_cfg outside opt/", func(s *DomainSpec) { s.FwCfg[0].Name = "etc/x" }, "must start with opt/"},
		{"fw_cfg relative file", func(s *DomainSpec) { s.FwCfg[0].File = "fwcfg0" }, "must be an absolute path"},
		{"fw_cfg no file", func(s *DomainSpec) { s.FwCfg[0].File = "" }, "must be an absolute path"},
		{"fw_cfg comma", func(s *DomainSpec) { s.FwCfg[0].File = "/pool/a,b" }, "contains a comma"},
		{"two problems at once", func(s *DomainSpec) { s.Kernel = ""; s.Channel = "" }, "no kernel\nno guest channel"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := spec()
			tt.edit(&s)
			_, err := DomainXML(s)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.wantErr)
		})
	}
}

// Shares become <filesystem> elements: read-only ones squash + <readonly/>,
// writable ones mapped (mapped-xattr), as the QEMU backend does.
func TestDomainXMLShares(t *testing.T) {
	s := spec()
	s.Shares = []vm.Share{{Host: "/src/linux", Tag: "ldtshare0"}, {Host: "/out", Tag: "ldtshare1", Writable: true}}
	fss := parse(t, s).Devices.Filesystems
	require.Len(t, fss, 2)
	assert.Equal(t, "squash", fss[0].AccessMode)
	assert.NotNil(t, fss[0].ReadOnly)
	assert.Equal(t, "/src/linux", fss[0].Source.Mount.Dir)
	assert.Equal(t, "ldtshare0", fss[0].Target.Dir)
	assert.Equal(t, "remap", fss[0].MultiDevs)
	assert.Equal(t, "mapped", fss[1].AccessMode)
	assert.Nil(t, fss[1].ReadOnly)
	assert.Equal(t, "ldtshare1", fss[1].Target.Dir)
	assert.Empty(t, parse(t, spec()).Devices.Filesystems)

	s.Shares = []vm.Share{{Host: "rel", Tag: "t"}}
	_, err := DomainXML(s)
	assert.ErrorContains(t, err, "absolute host directory")
}
