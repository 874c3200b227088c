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
			got := applyConf(c.in, set)
			assert.Equal(t, c.want, got)
			assert.Equal(t, got, applyConf(got, set), "idempotent")
		})
	}
	// The block never holds anything but the loopback address.
	assert.Contains(t, applyConf("", libvirtdSettings), "listen_addr = \"127.0.0.1\"\nauth_tcp = \"none\"")
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
