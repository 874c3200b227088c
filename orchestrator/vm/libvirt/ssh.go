package libvirt

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"
)

// remoteSocket is libvirtd's system socket on a Debian host, the default
// of libvirt's own client for qemu+ssh://.
const remoteSocket = "/var/run/libvirt/libvirt-sock"

// sshDialer reaches a remote libvirtd the way `virsh -c qemu+ssh://` does:
// an SSH connection to the host, then the daemon's unix socket forwarded
// over it (OpenSSH's direct-streamlocal channel, so the remote side needs
// no netcat). The URI's query takes libvirt's names: keyfile=,
// known_hosts=, no_verify=1, socket=.
type sshDialer struct {
	addr    string // host:port
	socket  string // remote libvirtd socket
	config  *ssh.ClientConfig
	timeout time.Duration
}

func newSSHDialer(u *url.URL, timeout time.Duration) (*sshDialer, error) {
	q := u.Query()
	name := u.User.Username()
	if name == "" {
		name = os.Getenv("USER")
	}
	if name == "" {
		name = "root"
	}
	auth, err := sshAuth(q.Get("keyfile"))
	if err != nil {
		return nil, fmt.Errorf("libvirt URI %s: %w", u.Redacted(), err)
	}
	hostKey, err := sshHostKeyCheck(q.Get("known_hosts"), q.Get("no_verify") == "1")
	if err != nil {
		return nil, fmt.Errorf("libvirt URI %s: %w", u.Redacted(), err)
	}
	port := u.Port()
	if port == "" {
		port = "22"
	}
	sock := q.Get("socket")
	if sock == "" {
		sock = remoteSocket
	}
	return &sshDialer{
		addr:    net.JoinHostPort(u.Hostname(), port),
		socket:  sock,
		config:  &ssh.ClientConfig{User: name, Auth: auth, HostKeyCallback: hostKey, Timeout: timeout},
		timeout: timeout,
	}, nil
}

// sshAuth: the named key file, else the keys an ssh-agent holds plus the
// usual ~/.ssh/id_* files, as ssh(1) would try them.
func sshAuth(keyfile string) ([]ssh.AuthMethod, error) {
	var files []string
	if keyfile != "" {
		files = []string{keyfile}
	} else if home, err := os.UserHomeDir(); err == nil {
		for _, n := range []string{"id_ed25519", "id_ecdsa", "id_rsa"} {
			files = append(files, filepath.Join(home, ".ssh", n))
		}
	}
	var signers []ssh.Signer
	for _, f := range files {
		b, err := os.ReadFile(f)
		if errors.Is(err, os.ErrNotExist) && keyfile == "" {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("reading SSH key: %w", err)
		}
		s, err := ssh.ParsePrivateKey(b)
		if err != nil {
			return nil, fmt.Errorf("SSH key %s: %w (a passphrase-protected key must be given to ssh-agent instead)", f, err)
		}
		signers = append(signers, s)
	}
	var methods []ssh.AuthMethod
	if len(signers) > 0 {
		methods = append(methods, ssh.PublicKeys(signers...))
	}
	if sock := os.Getenv("SSH_AUTH_SOCK"); sock != "" && keyfile == "" {
		if c, err := net.Dial("unix", sock); err == nil {
			methods = append(methods, ssh.PublicKeysCallback(agent.NewClient(c).Signers))
		}
	}
	if len(methods) == 0 {
		return nil, errors.New("no SSH key: none of ~/.ssh/id_{ed25519,ecdsa,rsa}, no ssh-agent; name one with ?keyfile=PATH")
	}
	return methods, nil
}

// sshHostKeyCheck verifies the host against known_hosts (the given file,
// else ~/.ssh/known_hosts). no_verify=1 accepts any host key, as libvirt's
// own parameter does; the lab never adds keys to known_hosts by itself.
func sshHostKeyCheck(file string, noVerify bool) (ssh.HostKeyCallback, error) {
	if noVerify {
		return ssh.InsecureIgnoreHostKey(), nil
	}
	if file == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return nil, fmt.Errorf("finding known_hosts: %w", err)
		}
		file = filepath.Join(home, ".ssh", "known_hosts")
	}
	cb, err := knownhosts.New(file)
	if err != nil {
		return nil, fmt.Errorf("SSH host keys: %w (add the host with ssh-keyscan, or name a file with ?known_hosts=PATH)", err)
	}
	return cb, nil
}

// Dial implements go-libvirt's socket.Dialer.
func (d *sshDialer) Dial() (net.Conn, error) {
	c, err := ssh.Dial("tcp", d.addr, d.config)
	if err != nil {
		return nil, fmt.Errorf("ssh to %s@%s: %w", d.config.User, d.addr, err)
	}
	conn, err := c.Dial("unix", d.socket)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("ssh to %s: forwarding libvirtd's socket %s: %w", d.addr, d.socket, err)
	}
	return &sshConn{Conn: conn, client: c}, nil
}

// sshConn closes its SSH connection with the forwarded socket.
type sshConn struct {
	net.Conn
	client *ssh.Client
}

func (c *sshConn) Close() error {
	err := c.Conn.Close()
	c.client.Close()
	return err
}
