package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"

	"github.com/hashicorp/yamux"
	"golang.org/x/crypto/ssh"

	"ldtlab/guest/agent/wire"
)

// Config configures a Server.
type Config struct {
	// HostKey is the SSH host key the agent presents.
	HostKey ssh.Signer
	// AuthorizedKey is the only client key accepted.
	AuthorizedKey ssh.PublicKey
	// Shell runs commands as Shell -c CMD; "/bin/sh" when empty.
	Shell string
	// Home is HOME and the working directory (when it exists); "/root" when
	// empty.
	Home string
	// Logf receives diagnostics; nil discards them.
	Logf func(format string, args ...any)
}

// Server serves SSH connections for the lab.
type Server struct {
	cfg    Config
	sshCfg *ssh.ServerConfig
}

// NewServer checks cfg and fills in defaults.
func NewServer(cfg Config) (*Server, error) {
	if cfg.HostKey == nil || cfg.AuthorizedKey == nil {
		return nil, errors.New("agent: host key and authorized key are required")
	}
	if cfg.Shell == "" {
		cfg.Shell = "/bin/sh"
	}
	if cfg.Home == "" {
		cfg.Home = "/root"
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	want := cfg.AuthorizedKey.Marshal()
	sc := &ssh.ServerConfig{
		ServerVersion: "SSH-2.0-ldtlab-agent",
		PublicKeyCallback: func(_ ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			if bytes.Equal(key.Marshal(), want) {
				return &ssh.Permissions{}, nil
			}
			return nil, errors.New("key not authorized")
		},
	}
	sc.AddHostKey(cfg.HostKey)
	return &Server{cfg: cfg, sshCfg: sc}, nil
}

// LoadKeyFiles reads the host private key (OpenSSH PEM) and the authorized
// key (an authorized_keys line), e.g. from the fw_cfg files.
func LoadKeyFiles(hostKeyPath, authorizedKeyPath string) (ssh.Signer, ssh.PublicKey, error) {
	b, err := os.ReadFile(hostKeyPath)
	if err != nil {
		return nil, nil, fmt.Errorf("reading host key: %w", err)
	}
	signer, err := ssh.ParsePrivateKey(b)
	if err != nil {
		return nil, nil, fmt.Errorf("parsing host key %s: %w", hostKeyPath, err)
	}
	b, err = os.ReadFile(authorizedKeyPath)
	if err != nil {
		return nil, nil, fmt.Errorf("reading authorized key: %w", err)
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(b)
	if err != nil {
		return nil, nil, fmt.Errorf("parsing authorized key %s: %w", authorizedKeyPath, err)
	}
	return signer, pub, nil
}

// Serve runs the whole guest channel on rw: the handshake, then a yamux
// server session whose every stream is one SSH connection. It returns when
// the session ends (host gone, ctx done); rw is closed by then, and every
// command still running on it has been killed.
func (s *Server) Serve(ctx context.Context, rw io.ReadWriteCloser) error {
	conn, err := Handshake(ctx, rw)
	if err != nil {
		return err
	}
	sess, err := yamux.Server(conn, wire.YamuxConfig())
	if err != nil {
		conn.Close()
		return fmt.Errorf("yamux server: %w", err)
	}
	defer sess.Close()
	stop := context.AfterFunc(ctx, func() { sess.Close() })
	defer stop()
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("guest channel session ended: %w", err)
		}
		go s.ServeConn(st)
	}
}

// ServeConn serves one SSH connection on conn until it closes.
func (s *Server) ServeConn(conn net.Conn) {
	sc, chans, reqs, err := ssh.NewServerConn(conn, s.sshCfg)
	if err != nil {
		s.cfg.Logf("ssh handshake: %v", err)
		conn.Close()
		return
	}
	defer sc.Close()
	go globalRequests(reqs)
	for nc := range chans {
		if nc.ChannelType() != "session" {
			_ = nc.Reject(ssh.UnknownChannelType, "only session channels are supported")
			continue
		}
		ch, creqs, err := nc.Accept()
		if err != nil {
			continue
		}
		go s.handleSession(ch, creqs)
	}
}

// globalRequests answers every request that wants an answer, so that
// keepalive@openssh.com probes see the connection is alive. Like OpenSSH,
// the answer is "failure": nothing global is supported.
func globalRequests(reqs <-chan *ssh.Request) {
	for r := range reqs {
		if r.WantReply {
			_ = r.Reply(false, nil)
		}
	}
}
