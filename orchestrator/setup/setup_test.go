package setup

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func needDpkg(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("dpkg-query"); err != nil {
		t.Skip("not a Debian host (no dpkg-query)")
	}
	if err := exec.Command("dpkg-query", "-W", "dpkg").Run(); err != nil {
		t.Skip("dpkg itself is not registered as installed here")
	}
}

func TestMissing(t *testing.T) {
	needDpkg(t)
	present := Package{Name: "dpkg", Why: "always there on Debian"}
	absent := Package{Name: "ldtlab-surely-not-a-package-x9q", Why: "never exists"}
	absent2 := Package{Name: "ldtlab-nor-this-one-z7k", Why: "never exists either"}

	cases := []struct {
		name string
		in   []Package
		want []Package
	}{
		{"nothing asked", nil, nil},
		{"installed", []Package{present}, nil},
		{"unknown", []Package{absent}, []Package{absent}},
		{"mixed keeps order and Why", []Package{absent2, present, absent}, []Package{absent2, absent}},
		{"installed twice", []Package{present, present}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := Missing(c.in)
			require.NoError(t, err)
			assert.Equal(t, c.want, got)
		})
	}
}

func TestMissingMultiArch(t *testing.T) {
	needDpkg(t)
	// libc6 is Multi-Arch: same; dpkg-query may print it as libc6:amd64.
	if err := exec.Command("dpkg-query", "-W", "libc6").Run(); err != nil {
		t.Skip("libc6 not registered")
	}
	got, err := Missing([]Package{{Name: "libc6"}})
	require.NoError(t, err)
	assert.Empty(t, got)
}

func TestRequired(t *testing.T) {
	seen := map[string]bool{}
	for _, p := range Required {
		assert.NotEmpty(t, p.Name)
		assert.NotEmpty(t, p.Why, p.Name)
		assert.False(t, seen[p.Name], "duplicate %s", p.Name)
		seen[p.Name] = true
		assert.Equal(t, strings.TrimSpace(p.Name), p.Name)
		assert.NotContains(t, p.Name, " ")
	}
	for _, must := range []string{"qemu-system-x86", "busybox-static", "linux-source-6.12", "build-essential"} {
		assert.True(t, seen[must], "%s must be required", must)
	}
}

func TestNames(t *testing.T) {
	assert.Equal(t, "", names(nil))
	assert.Equal(t, "a", names([]Package{{Name: "a", Why: "x"}}))
	assert.Equal(t, "a b c", names([]Package{{Name: "a"}, {Name: "b"}, {Name: "c"}}))
	assert.Equal(t, len(Required)-1, strings.Count(names(Required), " "))
}

func TestApplyConf(t *testing.T) {
	set := []confSetting{{"listen_tcp", "1"}, {"listen_addr", `"127.0.0.1"`}}
	block := confBegin + "\nlisten_tcp = 1\nlisten_addr = \"127.0.0.1\"\n" + confEnd + "\n"
	cases := []struct {
		name, in, want string
	}{
		{"debian default (all commented)", "#listen_tcp = 1\n#listen_addr = \"192.168.0.1\"\n",
			"#listen_tcp = 1\n#listen_addr = \"192.168.0.1\"\n\n" + block},
		{"active conflicting value disabled", "listen_addr = \"0.0.0.0\"\nmax_clients = 5\n",
			"#listen_addr = \"0.0.0.0\" # disabled by ldtlab, see below\nmax_clients = 5\n\n" + block},
		{"spaces around the key", "  listen_tcp=0\n", "#  listen_tcp=0 # disabled by ldtlab, see below\n\n" + block},
		{"similar key left alone", "listen_tcp_extra = 3\n", "listen_tcp_extra = 3\n\n" + block},
		{"empty file", "", "\n" + block},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, dropped := applyConf(c.in, set)
			assert.Equal(t, c.want, got)
			assert.Empty(t, dropped)
			again, _ := applyConf(got, set)
			assert.Equal(t, got, again, "idempotent")
		})
	}
}

// What earlier versions wrote: their block opened libvirtd's TCP port
// with auth_tcp "none" (root for every local user) and disabled the
// administrator's own lines for those keys.
const oldLibvirtdConf = `#listen_tls = 0
#listen_addr = "192.168.1.1" # disabled by ldtlab, see below
#auth_tcp = "sasl" # disabled by ldtlab, see below
max_clients = 5

# BEGIN ldtlab (labctl setup --backend libvirt; do not edit)
listen_tls = 0
listen_tcp = 1
listen_addr = "127.0.0.1"
auth_tcp = "none"
# END ldtlab
`

func TestApplyConfRemovesTCPListener(t *testing.T) {
	got, dropped := applyConf(oldLibvirtdConf, libvirtdSettings)
	assert.ElementsMatch(t, tcpKeys, dropped, "setup says which of the old block's settings it removed")
	assert.NotContains(t, got, `auth_tcp = "none"`)
	assert.NotRegexp(t, `(?m)^\s*listen_tcp\s*=`, got)
	assert.NotContains(t, got, "disabled by ldtlab", "no line is left disabled for a key the lab no longer sets")
	assert.Equal(t, `#listen_tls = 0
listen_addr = "192.168.1.1"
auth_tcp = "sasl"
max_clients = 5

`+confBegin+`
unix_sock_group = "libvirt"
unix_sock_ro_perms = "0770"
unix_sock_rw_perms = "0770"
`+confEnd+"\n", got, "the administrator's lines an earlier version disabled are given back")
	again, dropped := applyConf(got, libvirtdSettings)
	assert.Equal(t, got, again, "idempotent")
	assert.Empty(t, dropped)
}

// TestLibvirtdSettingsOpenNoPort: the lab's block never configures a
// network listener, and the sockets are not world-accessible.
func TestLibvirtdSettingsOpenNoPort(t *testing.T) {
	conf, _ := applyConf("", libvirtdSettings)
	for _, k := range append(tcpKeys, "auth_unix_ro", "auth_unix_rw", "tcp_port", "tls_port") {
		assert.NotContains(t, conf, k+" =")
	}
	assert.NotRegexp(t, `perms = "0..[1-7]"`, conf, "no socket for others")
}

func TestListenFlag(t *testing.T) {
	for argv, want := range map[string]bool{
		"libvirtd --daemon --listen":           true,
		"libvirtd -d -l":                       true,
		"libvirtd -dl":                         true,
		"/usr/sbin/libvirtd --daemon":          false,
		"libvirtd --timeout=120":               false,
		"libvirtd -f /etc/libvirt/listen.conf": false,
		"libvirtd -fl":                         false, // -f's argument is "l"
		"":                                     false,
	} {
		assert.Equal(t, want, listenFlag(strings.Fields(argv)), argv)
	}
}

// TestNoServiceStarts: setup's own policy-rc.d exists only during the
// install; an administrator's is never touched.
func TestNoServiceStarts(t *testing.T) {
	old := policyRCD
	t.Cleanup(func() { policyRCD = old })
	policyRCD = filepath.Join(t.TempDir(), "policy-rc.d")

	done, err := noServiceStarts(io.Discard)
	require.NoError(t, err)
	b, err := os.ReadFile(policyRCD)
	require.NoError(t, err)
	assert.Contains(t, string(b), "exit 101")
	done()
	assert.NoFileExists(t, policyRCD)

	require.NoError(t, os.WriteFile(policyRCD, []byte("#!/bin/sh\nexit 0\n"), 0o755))
	done, err = noServiceStarts(io.Discard)
	require.NoError(t, err)
	done()
	b, err = os.ReadFile(policyRCD)
	require.NoError(t, err)
	assert.Equal(t, "#!/bin/sh\nexit 0\n", string(b), "the administrator's policy-rc.d stays")
}
