package channel

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/crypto/ssh"

	"ldtlab/internal/atomicfile"
)

// File names in a key directory.
const (
	ClientKeyFile     = "id_ed25519"
	ClientPubFile     = "id_ed25519.pub"
	HostKeyFile       = "host_ed25519"
	HostPubFile       = "host_ed25519.pub"
	AuthorizedKeyFile = "authorized_key"
	KnownHostsFile    = "known_hosts"
)

// HostKeyAlias is the host name the guest's key is recorded under in
// known_hosts; OpenSSH users pass -o HostKeyAlias=ldtlab-guest.
const HostKeyAlias = "ldtlab-guest"

// User is the user the client logs in as.
const User = "root"

// Keys is a per-VM key set: the client key the lab logs in with and the
// guest's host key, which the client pins (no trust on first use).
type Keys struct {
	dir     string
	signer  ssh.Signer
	hostPub ssh.PublicKey
}

// GenerateKeys creates a fresh key set in dir (created 0700 if missing). It
// refuses a dir that group or others can access: the private keys in it
// grant root in the guest.
func GenerateKeys(dir string) (*Keys, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating key directory: %w", err)
	}
	if err := checkPrivateDir(dir); err != nil {
		return nil, err
	}
	clientPriv, clientPEM, clientPub, err := newKey("ldtlab-client")
	if err != nil {
		return nil, err
	}
	_, hostPEM, hostPub, err := newKey("ldtlab-guest-host")
	if err != nil {
		return nil, err
	}
	authorized := ssh.MarshalAuthorizedKey(clientPub)
	hostLine := ssh.MarshalAuthorizedKey(hostPub)
	files := []struct {
		name string
		data []byte
	}{
		{ClientKeyFile, clientPEM},
		{ClientPubFile, authorized},
		{HostKeyFile, hostPEM},
		{HostPubFile, hostLine},
		{AuthorizedKeyFile, authorized},
		{KnownHostsFile, append([]byte(HostKeyAlias+" "), hostLine...)},
	}
	for _, f := range files {
		if err := atomicfile.WriteFile(filepath.Join(dir, f.name), f.data, 0o600); err != nil {
			return nil, fmt.Errorf("writing %s: %w", f.name, err)
		}
	}
	// Each file's rename is synced in dir; the key directory's own entry
	// (MkdirAll above) must survive a crash too.
	if err := atomicfile.SyncDir(filepath.Dir(dir)); err != nil {
		return nil, fmt.Errorf("writing keys: %w", err)
	}
	signer, err := ssh.NewSignerFromKey(clientPriv)
	if err != nil {
		return nil, err
	}
	return &Keys{dir: dir, signer: signer, hostPub: hostPub}, nil
}

// LoadKeys reads a key set written by GenerateKeys, with the same checks on
// the directory and on the private key files.
func LoadKeys(dir string) (*Keys, error) {
	if err := checkPrivateDir(dir); err != nil {
		return nil, err
	}
	read := func(name string, private bool) ([]byte, error) {
		p := filepath.Join(dir, name)
		if private {
			fi, err := os.Stat(p)
			if err != nil {
				return nil, fmt.Errorf("loading keys: %w", err)
			}
			if fi.Mode().Perm()&0o077 != 0 {
				return nil, fmt.Errorf("loading keys: %s is accessible by group or others (mode %v)", p, fi.Mode().Perm())
			}
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("loading keys: %w", err)
		}
		return b, nil
	}
	b, err := read(ClientKeyFile, true)
	if err != nil {
		return nil, err
	}
	signer, err := ssh.ParsePrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("loading keys: parsing %s: %w", ClientKeyFile, err)
	}
	if b, err = read(HostPubFile, false); err != nil {
		return nil, err
	}
	hostPub, _, _, _, err := ssh.ParseAuthorizedKey(b)
	if err != nil {
		return nil, fmt.Errorf("loading keys: parsing %s: %w", HostPubFile, err)
	}
	return &Keys{dir: dir, signer: signer, hostPub: hostPub}, nil
}

// Dir is the key directory.
func (k *Keys) Dir() string { return k.dir }

// ClientKeyPath is the client's private key (ssh -i).
func (k *Keys) ClientKeyPath() string { return filepath.Join(k.dir, ClientKeyFile) }

// ClientPubPath is the client's public key.
func (k *Keys) ClientPubPath() string { return filepath.Join(k.dir, ClientPubFile) }

// HostKeyPath is the guest's host private key, for fw_cfg opt/ldtlab/host_key.
func (k *Keys) HostKeyPath() string { return filepath.Join(k.dir, HostKeyFile) }

// HostPubPath is the guest's host public key.
func (k *Keys) HostPubPath() string { return filepath.Join(k.dir, HostPubFile) }

// AuthorizedKeyPath is the client's authorized_keys line, for fw_cfg
// opt/ldtlab/authorized_key.
func (k *Keys) AuthorizedKeyPath() string { return filepath.Join(k.dir, AuthorizedKeyFile) }

// KnownHostsPath is an OpenSSH known_hosts file naming the host key under
// HostKeyAlias (ssh -o UserKnownHostsFile=... -o HostKeyAlias=ldtlab-guest).
func (k *Keys) KnownHostsPath() string { return filepath.Join(k.dir, KnownHostsFile) }

// HostPublicKey is the pinned guest host key.
func (k *Keys) HostPublicKey() ssh.PublicKey { return k.hostPub }

// ClientConfig logs in as root with the client key and accepts only the
// pinned host key.
func (k *Keys) ClientConfig() *ssh.ClientConfig {
	return &ssh.ClientConfig{
		User:              User,
		Auth:              []ssh.AuthMethod{ssh.PublicKeys(k.signer)},
		HostKeyCallback:   ssh.FixedHostKey(k.hostPub),
		HostKeyAlgorithms: []string{k.hostPub.Type()},
		ClientVersion:     "SSH-2.0-ldtlab",
		Config:            ssh.Config{Ciphers: Ciphers},
	}
}

// Ciphers is the client's cipher preference: chacha20-poly1305 first, as
// OpenSSH (and so scp) has it. x/crypto/ssh would pick AES-GCM, whose
// AES-NI and PCLMULQDQ instructions an emulated guest CPU (TCG) runs as
// slow helper calls: a 50 MB labctl cp cost the guest 11 s of CPU with
// AES-GCM, 7-8 s with chacha20-poly1305, as much as scp's 7-9 s. Under
// KVM either is far faster than the guest channel.
var Ciphers = []string{
	ssh.CipherChaCha20Poly1305, ssh.CipherAES128GCM, ssh.CipherAES256GCM,
	ssh.CipherAES128CTR, ssh.CipherAES192CTR, ssh.CipherAES256CTR,
}

func newKey(comment string) (ed25519.PrivateKey, []byte, ssh.PublicKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("generating ed25519 key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, comment)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("encoding private key: %w", err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return nil, nil, nil, err
	}
	return priv, pem.EncodeToMemory(block), sshPub, nil
}

func checkPrivateDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("key directory: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("key directory %s is not a directory", dir)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("key directory %s is accessible by group or others (mode %v); use 0700", dir, fi.Mode().Perm())
	}
	return nil
}
