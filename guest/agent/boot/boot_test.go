package boot

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseCmdline(t *testing.T) {
	c := ParseCmdline(`console=ttyS0 quiet ldtlab.name=vm1 ldtlab.zram=64M dyndbg="file x.c +p" ldtlab.name=vm2` + "\n")
	assert.Equal(t, "ttyS0", c["console"])
	assert.Equal(t, "vm2", c.Hostname(), "later words win")
	assert.Equal(t, "file x.c +p", c["dyndbg"])
	_, ok := c["quiet"]
	assert.True(t, ok)
	assert.Equal(t, "ldtlab", ParseCmdline("console=ttyS0").Hostname())
	assert.Equal(t, "ldtlab", ParseCmdline("ldtlab.name=").Hostname())
}

func TestCmdlineBool(t *testing.T) {
	tests := []struct {
		cmdline string
		want    bool
	}{
		{"", false},
		{"ldtlab.hang=1", true},
		{"ldtlab.hang", true},
		{"ldtlab.hang=yes", true},
		{"ldtlab.hang=0", false},
		{"ldtlab.hang=no", false},
		{"ldtlab.hangs=1", false},
	}
	for _, tt := range tests {
		t.Run(tt.cmdline, func(t *testing.T) {
			assert.Equal(t, tt.want, ParseCmdline(tt.cmdline).Bool("ldtlab.hang"))
		})
	}
}

func TestZramSize(t *testing.T) {
	tests := []struct {
		cmdline string
		want    int64
		err     bool
	}{
		{"", DefaultZramSize, false},
		{"ldtlab.zram=0", 0, false},
		{"ldtlab.zram=1G", 1 << 30, false},
		{"ldtlab.zram=1048576", 1 << 20, false},
		{"ldtlab.zram=lots", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.cmdline, func(t *testing.T) {
			n, err := ParseCmdline(tt.cmdline).ZramSize()
			if tt.err {
				assert.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, n)
		})
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		err  bool
	}{
		{"0", 0, false},
		{"4096", 4096, false},
		{"512K", 512 << 10, false},
		{"512k", 512 << 10, false},
		{"256M", 256 << 20, false},
		{"256MiB", 256 << 20, false},
		{"256MB", 256 << 20, false},
		{"2G", 2 << 30, false},
		{"1T", 1 << 40, false},
		{" 8M ", 8 << 20, false},
		{"", 0, true},
		{"M", 0, true},
		{"-1", 0, true},
		{"1.5G", 0, true},
		{"12X", 0, true},
		{"99999999999999999G", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			n, err := ParseSize(tt.in)
			if tt.err {
				assert.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, n)
		})
	}
}

// fakeSys builds a sysfs-like tree: path -> file content.
func fakeSys(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for p, content := range files {
		full := filepath.Join(root, p)
		require.NoError(t, os.MkdirAll(filepath.Dir(full), 0o755))
		require.NoError(t, os.WriteFile(full, []byte(content), 0o644))
	}
	return root
}

func TestFindPort(t *testing.T) {
	root := fakeSys(t, map[string]string{
		"class/virtio-ports/vport0p0/name": "org.qemu.guest_agent.0\n",
		"class/virtio-ports/vport1p1/name": "ldtlab.ctl\n",
		"class/virtio-ports/vport1p2/name": "\n",
	})
	dev, err := FindPort(root, CtlPortName)
	require.NoError(t, err)
	assert.Equal(t, "/dev/vport1p1", dev)
	_, err = FindPort(root, "missing")
	assert.Error(t, err)
	_, err = FindPort(t.TempDir(), CtlPortName)
	assert.Error(t, err)
}

func TestFindDiskBySerial(t *testing.T) {
	root := fakeSys(t, map[string]string{
		"block/vda/serial":   "ldtdata", // virtio-blk prints the id without newline
		"block/vdb/serial":   "ldtswap\n",
		"block/vdc/serial":   "",
		"block/zram0/serial": "ldtswap",
	})
	tests := []struct {
		serial, want string
	}{
		{DataDiskSerial, "/dev/vda"},
		{SwapDiskSerial, "/dev/vdb"},
		{"other", ""},
	}
	for _, tt := range tests {
		t.Run(tt.serial, func(t *testing.T) {
			dev, err := FindDiskBySerial(root, tt.serial)
			if tt.want == "" {
				assert.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, dev)
		})
	}
}

func TestModuleFiles(t *testing.T) {
	root := fakeSys(t, map[string]string{
		"20-ldt.ko":       "",
		"10-labtest.ko":   "",
		"sub/05-extra.ko": "",
		"README":          "",
		"x.ko.xz":         "",
	})
	files, err := ModuleFiles(root)
	require.NoError(t, err)
	var rel []string
	for _, f := range files {
		r, _ := filepath.Rel(root, f)
		rel = append(rel, r)
	}
	assert.Equal(t, []string{"10-labtest.ko", "20-ldt.ko", "sub/05-extra.ko"}, rel)
	_, err = ModuleFiles(filepath.Join(root, "missing"))
	assert.ErrorIs(t, err, os.ErrNotExist)
}

func TestLogWritesRecords(t *testing.T) {
	kmsg := filepath.Join(t.TempDir(), "kmsg")
	require.NoError(t, os.WriteFile(kmsg, nil, 0o644))
	l := NewLog("ldtlab-init")
	l.KmsgPath = kmsg
	l.Printf("two\nlines")
	l.Printf("ldtlab-agent: %s", "ready")
	b, err := os.ReadFile(kmsg)
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	assert.Equal(t, []string{"<5>ldtlab-init: two", "<5>ldtlab-init: lines", "<5>ldtlab-init: ldtlab-agent: ready"}, lines)
}

func TestSharesRoundTrip(t *testing.T) {
	in := []Share{{Tag: "ldtshare0", Dir: "/src/linux"}, {Tag: "ldtshare1", Dir: "/out/a b,c", Writable: true}}
	text := EncodeShares(in)
	assert.NotContains(t, text, ",", "libvirt's fw_cfg cannot carry a comma")
	got, err := DecodeShares(text)
	require.NoError(t, err)
	assert.Equal(t, in, got)
	got, err = DecodeShares("")
	require.NoError(t, err)
	assert.Empty(t, got)
	for _, bad := range []string{"ldtshare0 rx 2f61", "ldtshare0 ro zz", "ldtshare0 ro", "ldtshare0 ro 2f"} {
		_, err := DecodeShares(bad)
		assert.Error(t, err, bad)
	}
}

func TestCheckShareDir(t *testing.T) {
	for _, ok := range []string{"/src/linux", "/root/linux", "/tmp/x", "/usr/src/linux", "/mnt/share", "/etc/x", "/home/me/a b"} {
		assert.NoError(t, CheckShareDir(ok), ok)
	}
	for bad, why := range map[string]string{
		"":             "not an absolute path",
		"rel/dir":      "not an absolute path",
		"/a/../b":      "not a clean path",
		"/a/":          "not a clean path",
		"/":            "root",
		"/usr":         "hide the guest's /usr/bin",
		"/usr/bin":     "hide the guest's /usr/bin",
		"/lib":         "hide the guest's /lib/modules",
		"/etc":         "hide the guest's /etc",
		"/mnt":         "hide the guest's /mnt/data",
		"/init":        "hide the guest's /init",
		"/proc/x":      "inside the guest's /proc",
		"/dev":         "inside the guest's /dev",
		"/run/ldtlab":  "inside the guest's /run",
		"/sys/fs/x":    "inside the guest's /sys",
		"/a\nb":        "newline",
		"/binaries/xy": "",
	} {
		err := CheckShareDir(bad)
		if why == "" {
			assert.NoError(t, err, bad)
			continue
		}
		if assert.Error(t, err, bad) {
			assert.Contains(t, err.Error(), why, bad)
		}
	}
	assert.ErrorContains(t, CheckShares([]Share{{Tag: "a", Dir: "/x"}, {Tag: "b", Dir: "/x/y"}}), "/x/y is inside /x")
	assert.ErrorContains(t, CheckShares([]Share{{Tag: "a", Dir: "/x"}, {Tag: "b", Dir: "/x"}}), "shared twice")
	assert.NoError(t, CheckShares([]Share{{Tag: "a", Dir: "/x"}, {Tag: "b", Dir: "/xy"}}))
}

func TestParseSharesStatus(t *testing.T) {
	st := ParseSharesStatus("ldtshare0 ok\nldtshare1 error: mount 9p: no such device\n")
	assert.Equal(t, map[string]string{"ldtshare0": "", "ldtshare1": "mount 9p: no such device"}, st)
}
