package libvirt

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// sshServer is an in-process SSH server that, like sshd, forwards
// direct-streamlocal channels to unix sockets: the remote end of
// qemu+ssh:// without a real host.
type sshServer struct {
	addr    string
	hostPub ssh.PublicKey
}

func newSSHServer(t *testing.T, allowed ssh.PublicKey) *sshServer {
	t.Helper()
	_, hostPriv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	hostSigner, err := ssh.NewSignerFromKey(hostPriv)
	require.NoError(t, err)
	cfg := &ssh.ServerConfig{PublicKeyCallback: func(_ ssh.ConnMetadata, k ssh.PublicKey) (*ssh.Permissions, error) {
		if string(k.Marshal()) == string(allowed.Marshal()) {
			return nil, nil
		}
		return nil, fmt.Errorf("key not authorized")
	}}
	cfg.AddHostKey(hostSigner)
	l := serve(t, "tcp", "127.0.0.1:0", func(c net.Conn) { serveSSH(c, cfg) })
	return &sshServer{addr: l.Addr().String(), hostPub: hostSigner.PublicKey()}
}

// serve accepts on network/addr until the test ends, each connection in
// its own goroutine.
func serve(t *testing.T, network, addr string, handle func(net.Conn)) net.Listener {
	t.Helper()
	l, err := net.Listen(network, addr)
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go handle(c)
		}
	}()
	return l
}

func serveSSH(c net.Conn, cfg *ssh.ServerConfig) {
	_, chans, reqs, err := ssh.NewServerConn(c, cfg)
	if err != nil {
		c.Close()
		return
	}
	go ssh.DiscardRequests(reqs)
	for nc := range chans {
		if nc.ChannelType() != "direct-streamlocal@openssh.com" {
			nc.Reject(ssh.UnknownChannelType, "only streamlocal")
			continue
		}
		var req struct {
			Path      string
			Reserved0 string
			Reserved1 uint32
		}
		if err := ssh.Unmarshal(nc.ExtraData(), &req); err != nil {
			nc.Reject(ssh.ConnectionFailed, "bad request")
			continue
		}
		u, err := net.Dial("unix", req.Path)
		if err != nil {
			nc.Reject(ssh.ConnectionFailed, err.Error())
			continue
		}
		ch, creqs, err := nc.Accept()
		if err != nil {
			u.Close()
			continue
		}
		go ssh.DiscardRequests(creqs)
		go func() { io.Copy(ch, u); ch.CloseWrite() }()
		go func() { io.Copy(u, ch); u.Close() }()
	}
}

// echoSocket serves a unix socket that echoes what it reads (libvirtd's
// stand-in).
func echoSocket(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "libvirt-sock")
	serve(t, "unix", path, func(c net.Conn) { io.Copy(c, c); c.Close() })
	return path
}

func TestSSHDialer(t *testing.T) {
	dir := t.TempDir()
	clientPub, clientPriv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	block, err := ssh.MarshalPrivateKey(clientPriv, "")
	require.NoError(t, err)
	keyfile := filepath.Join(dir, "id_ed25519")
	require.NoError(t, os.WriteFile(keyfile, pem.EncodeToMemory(block), 0o600))
	sshPub, err := ssh.NewPublicKey(clientPub)
	require.NoError(t, err)

	srv := newSSHServer(t, sshPub)
	sock := echoSocket(t)
	known := filepath.Join(dir, "known_hosts")
	require.NoError(t, os.WriteFile(known, []byte(knownhosts.Line([]string{knownhosts.Normalize(srv.addr)}, srv.hostPub)+"\n"), 0o600))
	other := newSSHServer(t, sshPub) // same client key, a host key nobody recorded
	wrong := filepath.Join(dir, "known_hosts.wrong")
	require.NoError(t, os.WriteFile(wrong, []byte(knownhosts.Line([]string{knownhosts.Normalize(srv.addr)}, other.hostPub)+"\n"), 0o600))
	_, strangerPriv, _ := ed25519.GenerateKey(rand.Reader)
	sb, _ := ssh.MarshalPrivateKey(strangerPriv, "")
	stranger := filepath.Join(dir, "id_stranger")
	require.NoError(t, os.WriteFile(stranger, pem.EncodeToMemory(sb), 0o600))

	uri := func(addr, query string) string { return "qemu+ssh://tester@" + addr + "/system?" + query }
	tests := []struct {
		name, uri string
		newErr    string // from dialerFor
		dialErr   string // from Dial
	}{
		{"forwards the socket", uri(srv.addr, "keyfile="+keyfile+"&known_hosts="+known+"&socket="+sock), "", ""},
		{"no_verify accepts an unknown host", uri(other.addr, "keyfile="+keyfile+"&known_hosts="+known+"&no_verify=1&socket="+sock), "", ""},
		{"unknown host", uri(other.addr, "keyfile="+keyfile+"&known_hosts="+known+"&socket="+sock), "", "key is unknown"},
		{"host key changed", uri(srv.addr, "keyfile="+keyfile+"&known_hosts="+wrong+"&socket="+sock), "", "key mismatch"},
		{"key not authorized", uri(srv.addr, "keyfile="+stranger+"&known_hosts="+known+"&socket="+sock), "", "unable to authenticate"},
		{"no such remote socket", uri(srv.addr, "keyfile="+keyfile+"&known_hosts="+known+"&socket=/nonexistent.sock"), "", "forwarding libvirtd's socket /nonexistent.sock"},
		{"missing key file", uri(srv.addr, "keyfile="+filepath.Join(dir, "nope")+"&known_hosts="+known), "reading SSH key", ""},
		{"missing known_hosts", uri(srv.addr, "keyfile="+keyfile+"&known_hosts="+filepath.Join(dir, "nope")), "SSH host keys", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, err := url.Parse(tt.uri)
			require.NoError(t, err)
			d, err := dialerFor(u, 0)
			if tt.newErr != "" {
				assert.ErrorContains(t, err, tt.newErr)
				return
			}
			require.NoError(t, err)
			c, err := d.Dial()
			if tt.dialErr != "" {
				require.Error(t, err)
				assert.ErrorContains(t, err, tt.dialErr)
				assert.Contains(t, err.Error(), "ssh to ", "the error says what was being done")
				return
			}
			require.NoError(t, err)
			defer c.Close()
			_, err = c.Write([]byte("ping"))
			require.NoError(t, err)
			buf := make([]byte, 4)
			_, err = io.ReadFull(c, buf)
			require.NoError(t, err)
			assert.Equal(t, "ping", string(buf))
		})
	}
}
