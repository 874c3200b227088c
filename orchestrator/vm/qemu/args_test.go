package qemu

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ldtlab/orchestrator/accel"
	"ldtlab/orchestrator/vm"
)

// values returns every argument that follows flag.
func values(args []string, flag string) []string {
	var out []string
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag {
			out = append(out, args[i+1])
		}
	}
	return out
}

// value returns the single argument following flag.
func value(t *testing.T, args []string, flag string) string {
	t.Helper()
	v := values(args, flag)
	require.Len(t, v, 1, "%s given %d times in %q", flag, len(v), args)
	return v[0]
}

func fullConfig() vm.Config {
	return vm.Config{
		Name:      "alpha",
		Dir:       "/state/vms/alpha",
		Kernel:    vm.Artifact{Path: "/cache/kernels/k/bzImage", Hash: "aa"},
		Initrd:    vm.Artifact{Path: "/cache/images/i/initramfs.cpio", Hash: "bb"},
		Cmdline:   "ldtlab.debug=1 loglevel=8",
		MemoryMiB: 4096,
		CPUs:      4,
		Accel:     accel.Choice{Kind: accel.KVM, Reason: "kvm: test"},
		Disks: []vm.Disk{
			{Serial: "ldtlab-swap", SizeMiB: 512},
			{Serial: "ldtlab-data", SizeMiB: 64},
		},
		FwCfg: []vm.FwCfg{
			{Name: vm.FwCfgHostKey, Data: []byte("secret host key")},
			{Name: vm.FwCfgAuthorizedKey, Data: []byte("ssh-ed25519 AAAA")},
		},
		GDB: true,
	}
}

func TestArgsFull(t *testing.T) {
	cfg := fullConfig()
	a := Args(cfg)

	assert.Equal(t, "ldtlab-alpha,debug-threads=on", value(t, a, "-name"))
	assert.Equal(t, "4096", value(t, a, "-m"))
	assert.Equal(t, "4", value(t, a, "-smp"))
	assert.Equal(t, cfg.Kernel.Path, value(t, a, "-kernel"))
	assert.Equal(t, cfg.Initrd.Path, value(t, a, "-initrd"))

	app := value(t, a, "-append")
	assert.True(t, strings.HasPrefix(app, vm.BaseCmdline+" "), "base command line first: %q", app)
	assert.Contains(t, app, "ldtlab.name=alpha")
	assert.True(t, strings.HasSuffix(app, " ldtlab.debug=1 loglevel=8"), "user command line last: %q", app)
	assert.Contains(t, app, "console=ttyS0")
	assert.Contains(t, app, "panic=0")

	// Guest channel: the named virtio-serial port backed by the VM's socket.
	assert.Contains(t, values(a, "-device"), "virtserialport,bus=vser.0,chardev=ctl,name="+vm.ControlPort)
	assert.Equal(t, "ldtlab.ctl", vm.ControlPort)
	assert.Contains(t, values(a, "-chardev"), "socket,id=ctl,path="+filepath.Join(cfg.Dir, "ctl.sock")+",server=on,wait=off")
	assert.Contains(t, values(a, "-device"), "virtio-serial-pci,id=vser")
	assert.Equal(t, "unix:"+filepath.Join(cfg.Dir, "qmp.sock")+",server=on,wait=off", value(t, a, "-qmp"))

	// Panics: reported by pvpanic, guest left running, never rebooted.
	assert.Contains(t, values(a, "-device"), "pvpanic")
	assert.Equal(t, "panic=none", value(t, a, "-action"))
	assert.Contains(t, a, "-no-reboot")
	assert.Contains(t, a, "-nodefaults")

	// Serial console on stdio.
	assert.Equal(t, "chardev:con", value(t, a, "-serial"))
	assert.Contains(t, values(a, "-chardev"), "stdio,id=con,signal=off")

	// Disks, in order, with their serials. An I/O error on the host (a
	// full disk) is reported to the guest, not a silent pause of the VM
	// (QEMU's default werror=enospc stops the guest without a word).
	assert.Equal(t, []string{
		"file=/state/vms/alpha/disk0-ldtlab-swap.img,if=none,id=disk0,format=raw,cache=unsafe,discard=unmap,werror=report,rerror=report",
		"file=/state/vms/alpha/disk1-ldtlab-data.img,if=none,id=disk1,format=raw,cache=unsafe,discard=unmap,werror=report,rerror=report",
	}, values(a, "-drive"))
	assert.Contains(t, values(a, "-device"), "virtio-blk-pci,drive=disk0,serial=ldtlab-swap")
	assert.Contains(t, values(a, "-device"), "virtio-blk-pci,drive=disk1,serial=ldtlab-data")

	// fw_cfg blobs are files in the private directory: keys never show
	// on a command line.
	assert.Equal(t, []string{
		"name=opt/ldtlab/host_key,file=/state/vms/alpha/fwcfg0",
		"name=opt/ldtlab/authorized_key,file=/state/vms/alpha/fwcfg1",
	}, values(a, "-fw_cfg"))
	assert.NotContains(t, strings.Join(a, " "), "secret")

	// The gdbstub: a unix socket in the private directory, no port.
	assert.Equal(t, "chardev:gdb0", value(t, a, "-gdb"))
	// The user's monitor (labctl dump): a unix socket in the VM directory.
	assert.Contains(t, values(a, "-chardev"), "socket,id=umon,path=/state/vms/alpha/monitor.sock,server=on,wait=off")
	assert.Equal(t, "chardev=umon,mode=control", value(t, a, "-mon"))
	assert.Contains(t, values(a, "-chardev"), "socket,id=gdb0,path=/state/vms/alpha/gdb.sock,server=on,wait=off")
	assert.NotContains(t, strings.Join(a, " "), "tcp:", "nothing of the VM listens on TCP")

	// The accelerator's own arguments, verbatim and contiguous.
	acc := cfg.Accel.QEMUArgs()
	require.NotEmpty(t, acc)
	i := slices.Index(a, acc[0])
	require.GreaterOrEqual(t, i, 0)
	assert.Equal(t, acc, a[i:i+len(acc)])
	assert.Equal(t, "kvm", value(t, a, "-accel"))
	assert.Equal(t, "host", value(t, a, "-cpu"))
}

func TestArgsDefaults(t *testing.T) {
	a := Args(vm.Config{Name: "b", Dir: "/d", Kernel: vm.Artifact{Path: "/k"}, Accel: accel.Choice{Kind: accel.TCG}})
	assert.Equal(t, "1024", value(t, a, "-m"))
	assert.Equal(t, "2", value(t, a, "-smp"))
	assert.Equal(t, "ldtlab-b,debug-threads=on", value(t, a, "-name"))
	assert.Equal(t, vm.BaseCmdline+" ldtlab.name=b", value(t, a, "-append"), "no trailing space without a user command line")
	assert.NotContains(t, a, "-gdb", "gdb only when asked for")
	assert.NotContains(t, a, "-initrd")
	assert.NotContains(t, a, "-drive")
	assert.NotContains(t, a, "-fw_cfg")
	assert.Equal(t, "tcg,thread=multi", value(t, a, "-accel"))
	assert.Equal(t, "max", value(t, a, "-cpu"))
	// The control port, pvpanic and no-reboot are unconditional.
	assert.Contains(t, values(a, "-device"), "virtserialport,bus=vser.0,chardev=ctl,name=ldtlab.ctl")
	assert.Contains(t, values(a, "-device"), "pvpanic")
	assert.Contains(t, a, "-no-reboot")
	assert.Equal(t, "panic=none", value(t, a, "-action"))
}

func TestArgsAccelerators(t *testing.T) {
	cases := []struct {
		kind  accel.Kind
		accel string
		cpu   string
	}{
		{accel.KVM, "kvm", "host"},
		{accel.TCG, "tcg,thread=multi", "max"},
	}
	for _, c := range cases {
		t.Run(string(c.kind), func(t *testing.T) {
			a := Args(vm.Config{Name: "x", Dir: "/d", Kernel: vm.Artifact{Path: "/k"}, Accel: accel.Choice{Kind: c.kind}})
			assert.Equal(t, c.accel, value(t, a, "-accel"))
			assert.Equal(t, c.cpu, value(t, a, "-cpu"))
		})
	}
	// An unknown kind adds nothing (QEMU would pick its own default).
	a := Args(vm.Config{Name: "x", Dir: "/d", Kernel: vm.Artifact{Path: "/k"}})
	assert.NotContains(t, a, "-accel")
	assert.NotContains(t, a, "-cpu")
}

func TestArgsWellFormed(t *testing.T) {
	a := Args(fullConfig())
	// Every option is a flag followed by its value (except the few
	// switches), so the list can be shell-quoted for a repro line.
	switches := map[string]bool{"-nodefaults": true, "-no-user-config": true, "-no-reboot": true}
	for i := 0; i < len(a); i++ {
		require.True(t, strings.HasPrefix(a[i], "-"), "argument %d (%q) is not a flag", i, a[i])
		if switches[a[i]] {
			continue
		}
		require.Less(t, i+1, len(a), "%s has no value", a[i])
		assert.False(t, strings.HasPrefix(a[i+1], "-"), "%s followed by flag %s", a[i], a[i+1])
		i++
	}
	assert.Equal(t, a, Args(fullConfig()), "deterministic")
}

func TestBinary(t *testing.T) {
	t.Setenv("LDTLAB_QEMU", "")
	assert.Equal(t, "qemu-system-x86_64", Binary())
	t.Setenv("LDTLAB_QEMU", "/opt/qemu/bin/qemu-system-x86_64")
	assert.Equal(t, "/opt/qemu/bin/qemu-system-x86_64", Binary())
}

// QEMU splits option values at commas; a literal comma must be doubled.
// A state or cache directory whose path contains a comma (or a disk image
// named so) would otherwise break the command line or inject options.
// Fails today: Args (qemu.go, -drive/-chardev/-qmp/-fw_cfg) pastes paths
// verbatim.
func TestArgsEscapesCommasInPaths(t *testing.T) {
	dir := "/state/a,b"
	a := Args(vm.Config{
		Name: "x", Dir: dir, Kernel: vm.Artifact{Path: "/k"}, Accel: accel.Choice{Kind: accel.TCG},
		Disks: []vm.Disk{{Serial: "s", SizeMiB: 1}},
		FwCfg: []vm.FwCfg{{Name: "opt/ldtlab/host_key", Data: []byte("k")}},
	})
	assert.Equal(t, "unix:/state/a,,b/qmp.sock,server=on,wait=off", value(t, a, "-qmp"))
	assert.Contains(t, values(a, "-chardev"), "socket,id=ctl,path=/state/a,,b/ctl.sock,server=on,wait=off")
	assert.Equal(t, "file=/state/a,,b/disk0-s.img,if=none,id=disk0,format=raw,cache=unsafe,discard=unmap,werror=report,rerror=report", value(t, a, "-drive"))
	assert.Equal(t, "name=opt/ldtlab/host_key,file=/state/a,,b/fwcfg0", value(t, a, "-fw_cfg"))
}

func TestIOErrorDetailNamesHostFile(t *testing.T) {
	in := &instance{cfg: vm.Config{Dir: "/s", Disks: []vm.Disk{{Serial: "swap"}, {Serial: "data"}}}}
	assert.Equal(t, "no space left on /s/disk1-data.img (guest write failed)",
		in.ioErrorDetail([]byte(`{"device":"disk1","node-name":"#block123","operation":"write","action":"report","nospace":true,"reason":"No space left on device"}`)))
	// What QEMU 7.2 sends with werror=report: nospace false, the reason says it.
	assert.Equal(t, "no space left on /s/disk1-data.img (guest write failed)",
		in.ioErrorDetail([]byte(`{"device":"disk1","node-name":"#block123","operation":"write","action":"report","nospace":false,"reason":"No space left on device"}`)))
	assert.Equal(t, "read to /s/disk0-swap.img failed: Input/output error",
		in.ioErrorDetail([]byte(`{"device":"disk0","operation":"read","action":"report","nospace":false,"reason":"Input/output error"}`)))
}

// A read-only share is exported read-only with security_model=none; a
// writable one with mapped-xattr (no setuid file, device node or foreign
// owner on the host); paths with commas stay one option value.
func TestArgsShares(t *testing.T) {
	a := Args(vm.Config{
		Name: "x", Dir: "/s", Kernel: vm.Artifact{Path: "/k"}, Accel: accel.Choice{Kind: accel.TCG},
		Shares: []vm.Share{{Host: "/src/linux", Tag: "ldtshare0"}, {Host: "/out/a,b", Tag: "ldtshare1", Writable: true}},
	})
	assert.Equal(t, []string{
		"local,id=ldtshare0,path=/src/linux,multidevs=remap,security_model=none,readonly=on",
		"local,id=ldtshare1,path=/out/a,,b,multidevs=remap,security_model=mapped-xattr",
	}, values(a, "-fsdev"))
	dev := values(a, "-device")
	assert.Contains(t, dev, "virtio-9p-pci,fsdev=ldtshare0,mount_tag=ldtshare0")
	assert.Contains(t, dev, "virtio-9p-pci,fsdev=ldtshare1,mount_tag=ldtshare1")
	assert.Empty(t, values(Args(vm.Config{Name: "x", Dir: "/s", Kernel: vm.Artifact{Path: "/k"}}), "-fsdev"))
}
