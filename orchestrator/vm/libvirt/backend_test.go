package libvirt

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ldtlab/orchestrator/accel"
)

func TestResolveAccel(t *testing.T) {
	noKVM := errors.New("no kvm domain type")
	// The lab's probe on three kinds of local machine.
	noDev := func(want string) (accel.Choice, error) {
		if want == "kvm" {
			return accel.Choice{}, errors.New("accel kvm requested but unusable: /dev/kvm does not exist")
		}
		return accel.Choice{Kind: accel.TCG, Reason: "tcg: /dev/kvm does not exist"}, nil
	}
	pvm := func(string) (accel.Choice, error) {
		return accel.Choice{Kind: accel.TCG, Reason: "tcg: /dev/kvm is PVM-only"}, nil
	}
	works := func(string) (accel.Choice, error) {
		return accel.Choice{Kind: accel.KVM, Reason: "kvm: /dev/kvm usable"}, nil
	}
	tests := []struct {
		name    string
		want    string
		kvmErr  error
		local   bool
		probe   func(string) (accel.Choice, error)
		kind    accel.Kind
		reason  string
		wantErr string
	}{
		// Local: the probe's answer whatever libvirt says (issue 26: the
		// reason used to depend on whether libvirt saw a /dev/kvm).
		{"local, no /dev/kvm, libvirt without kvm", "auto", noKVM, true, noDev, accel.TCG, "tcg: /dev/kvm does not exist", ""},
		{"local, no /dev/kvm, libvirt with kvm", "auto", nil, true, noDev, accel.TCG, "tcg: /dev/kvm does not exist", ""},
		{"local, no /dev/kvm, default", "", noKVM, true, noDev, accel.TCG, "tcg: /dev/kvm does not exist", ""},
		{"local, no /dev/kvm, kvm asked", "kvm", noKVM, true, noDev, "", "", "/dev/kvm does not exist"},
		{"local, PVM-only, libvirt with kvm", "auto", nil, true, pvm, accel.TCG, "tcg: /dev/kvm is PVM-only", ""},
		{"local, PVM-only, libvirt without kvm", "auto", noKVM, true, pvm, accel.TCG, "tcg: /dev/kvm is PVM-only", ""},
		{"local, kvm works", "auto", nil, true, works, accel.KVM, "kvm: /dev/kvm usable", ""},
		{"local, kvm works, libvirt without kvm", "auto", noKVM, true, works, accel.TCG, "tcg: libvirt host has no kvm domain type", ""},
		{"local, kvm works, libvirt without kvm, kvm asked", "kvm", noKVM, true, works, "", "", "kvm requested but"},
		{"local, tcg asked", "tcg", nil, true, works, accel.TCG, "tcg: requested", ""},
		// Remote: libvirt's capabilities are all there is.
		{"remote without kvm", "auto", noKVM, false, nil, accel.TCG, "tcg: libvirt host has no kvm domain type", ""},
		{"remote without kvm, tcg", "tcg", noKVM, false, nil, accel.TCG, "requested", ""},
		{"remote without kvm, kvm asked", "kvm", noKVM, false, nil, "", "", "kvm requested but"},
		{"remote with kvm", "auto", nil, false, nil, accel.KVM, "remote libvirt host", ""},
		{"remote, tcg asked", "tcg", nil, false, nil, accel.TCG, "requested", ""},
		{"unknown", "hvf", nil, true, works, "", "", `unknown accelerator "hvf"`},
		{"unknown without kvm", "hvf", noKVM, false, nil, "", "", `unknown accelerator "hvf"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := resolveAccel(tt.want, tt.kvmErr, tt.local, tt.probe)
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.kind, c.Kind)
			assert.Contains(t, c.Reason, tt.reason)
			dt, err := domainType(c.Kind)
			require.NoError(t, err)
			assert.Equal(t, map[accel.Kind]string{accel.KVM: "kvm", accel.TCG: "qemu"}[c.Kind], dt)
		})
	}
	_, err := domainType("hvf")
	assert.Error(t, err)
}

func TestOrphaned(t *testing.T) {
	host, _ := os.Hostname()
	alive := func(pid int) bool { return pid == 100 }
	tests := []struct {
		desc string
		want bool
	}{
		{fmt.Sprintf("ldtlab owner pid 100 on %s", host), false},
		{fmt.Sprintf("ldtlab owner pid 200 on %s", host), true},
		{"ldtlab owner pid 200 on some-other-host", false},
		{"", false},
		{"hand-made domain", false},
		{fmt.Sprintf("ldtlab owner pid 0 on %s", host), false},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, orphaned(tt.desc, alive), "%q", tt.desc)
	}
	assert.False(t, orphaned(owner(), pidAlive), "this process is alive")
}

func TestDialerFor(t *testing.T) {
	tests := []struct {
		uri     string
		wantErr string
	}{
		{"qemu:///system", ""},
		{"qemu+unix:///system?socket=/run/x.sock", ""},
		{"qemu+tcp://127.0.0.1/system", ""},
		{"qemu+tcp://127.0.0.1:16510/system", ""},
		{"qemu+ssh://host/system?no_verify=1&keyfile=/nonexistent", `reading SSH key`},
		{"qemu+libssh2://host/system", `transport "libssh2" is not supported`},
		{"qemu://host/system", `transport "tls" is not supported`},
	}
	for _, tt := range tests {
		u, err := url.Parse(tt.uri)
		require.NoError(t, err)
		d, err := dialerFor(u, 0)
		if tt.wantErr != "" {
			assert.ErrorContains(t, err, tt.wantErr, tt.uri)
			continue
		}
		assert.NoError(t, err, tt.uri)
		assert.NotNil(t, d)
	}
	for _, u := range []string{"qemu:///system", "qemu+tcp://127.0.0.1/system", "qemu+tcp://localhost/system"} {
		p, _ := url.Parse(u)
		assert.True(t, isLocal(p), u)
	}
	p, _ := url.Parse("qemu+tcp://10.0.0.7/system")
	assert.False(t, isLocal(p))
}

func TestXDR(t *testing.T) {
	var b xdrBuf
	b.string("ab")
	b.optString("")
	b.optString("xyz")
	b.fixed([]byte{1, 2, 3, 4, 5})
	b.uint32(7)
	assert.Equal(t, []byte{
		0, 0, 0, 2, 'a', 'b', 0, 0, // length, data, padding to 4
		0, 0, 0, 0, // absent optional string
		0, 0, 0, 1, 0, 0, 0, 3, 'x', 'y', 'z', 0, // present: count 1, then the string
		1, 2, 3, 4, 5, 0, 0, 0, // fixed opaque, padded
		0, 0, 0, 7,
	}, b.Bytes())
}

func TestDecodeError(t *testing.T) {
	var b xdrBuf
	b.uint32(42) // code
	b.uint32(10) // domain
	b.optString("Domain not found")
	b.uint32(2) // level
	assert.EqualError(t, decodeError(b.Bytes()), "libvirt error 42: Domain not found")

	var noMsg xdrBuf
	noMsg.uint32(1)
	noMsg.uint32(0)
	noMsg.optString("")
	noMsg.uint32(0)
	assert.EqualError(t, decodeError(noMsg.Bytes()), "libvirt error 1")
	assert.EqualError(t, decodeError([]byte{1, 2}), "libvirt error (undecodable)")
	// A length that runs past the payload is not trusted.
	bad := append([]byte{0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0}, 'x')
	assert.EqualError(t, decodeError(bad), "libvirt error 1")
}

// TestConnectSilentDaemon: a daemon that accepts and never answers must not
// hold the lab past its deadline (go-libvirt alone would wait forever).
func TestConnectSilentDaemon(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "libvirt-sock")
	l, err := net.Listen("unix", sock)
	require.NoError(t, err)
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			go io.Copy(io.Discard, c) // read everything, answer nothing
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = connect(ctx, "qemu+unix:///system?socket="+sock)
	require.Error(t, err)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Contains(t, err.Error(), "connecting to libvirtd at qemu+unix:///system")
	assert.Less(t, time.Since(start), 3*time.Second)

	_, err = Open("qemu+unix:///system?socket=" + filepath.Join(t.TempDir(), "none"))
	assert.ErrorContains(t, err, "is libvirtd running?")
}

func TestToPrune(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	ago := func(h int) time.Time { return now.Add(-time.Duration(h) * time.Hour) }
	vols := []poolVol{
		{"kernel-a", "/p/kernel-a", ago(10)},
		{"kernel-b", "/p/kernel-b", ago(9)},
		{"kernel-c", "/p/kernel-c", ago(8)},
		{"kernel-d", "/p/kernel-d", ago(0)}, // newest
		{"kernel-x.part-1-2", "/p/kernel-x.part-1-2", ago(50)},
		{"initrd-z", "/p/initrd-z", ago(100)},
		{"ldtlab-vm-ldtswap.img", "/p/ldtlab-vm-ldtswap.img", ago(100)},
	}
	tests := []struct {
		name  string
		keep  int
		inUse map[string]bool
		want  []string
	}{
		{"keep all", 6, nil, nil},
		{"keep two newest", 2, nil, []string{"kernel-b", "kernel-a"}},
		{"in use is spared", 1, map[string]bool{"/p/kernel-b": true}, []string{"kernel-c", "kernel-a"}},
		{"too young to go", 0, nil, []string{"kernel-c", "kernel-b", "kernel-a"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, toPrune(vols, "kernel", tt.keep, time.Hour, now, tt.inUse))
		})
	}
}
