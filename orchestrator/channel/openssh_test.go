package channel_test

import (
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// proxyEnv makes the test binary act like `labctl proxy`: stdin/stdout piped
// to the unix socket it names.
const proxyEnv = "LDTLAB_TEST_PROXY_SOCKET"

func TestMain(m *testing.M) {
	if sock := os.Getenv(proxyEnv); sock != "" {
		c, err := net.Dial("unix", sock)
		if err != nil {
			os.Exit(1)
		}
		go func() { _, _ = io.Copy(c, os.Stdin); c.(*net.UnixConn).CloseWrite() }()
		_, _ = io.Copy(os.Stdout, c)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestOpenSSHInterop checks that the key files and Mux.Serve work for
// OpenSSH the way the design promises (ProxyCommand + HostKeyAlias).
func TestOpenSSHInterop(t *testing.T) {
	sshBin, err := exec.LookPath("ssh")
	if err != nil {
		t.Skip("no OpenSSH client")
	}
	l := newLab(t)
	sock := filepath.Join(t.TempDir(), "ssh.sock")
	ln, err := net.Listen("unix", sock)
	require.NoError(t, err)
	go func() { _ = l.mux.Serve(ln) }()
	t.Cleanup(func() { ln.Close() })

	self, err := os.Executable()
	require.NoError(t, err)
	opts := []string{
		"-F", "/dev/null",
		"-i", l.keys.ClientKeyPath(),
		"-o", "IdentitiesOnly=yes",
		"-o", "BatchMode=yes",
		"-o", "StrictHostKeyChecking=yes",
		"-o", "UserKnownHostsFile=" + l.keys.KnownHostsPath(),
		"-o", "HostKeyAlias=ldtlab-guest",
		"-o", "ProxyCommand=" + self,
	}
	cmd := exec.Command(sshBin, append(opts, "root@guest", "echo out; echo err >&2; exit 3")...)
	cmd.Env = append(os.Environ(), proxyEnv+"="+sock)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, "stderr: %s", stderr.String())
	assert.Equal(t, 3, ee.ExitCode(), "stderr: %s", stderr.String())
	assert.Equal(t, "out\n", stdout.String())
	assert.Contains(t, stderr.String(), "err\n")

	sftpBin, err := exec.LookPath("sftp")
	if err != nil {
		return
	}
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "f"), []byte("via sftp"), 0o644))
	batch := "put " + filepath.Join(dir, "f") + " " + filepath.Join(dir, "g") + "\n"
	cmd = exec.Command(sftpBin, append(append(opts, "-b", "-"), "root@guest")...)
	cmd.Env = append(os.Environ(), proxyEnv+"="+sock)
	cmd.Stdin = strings.NewReader(batch)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, string(out))
	b, err := os.ReadFile(filepath.Join(dir, "g"))
	require.NoError(t, err)
	assert.Equal(t, "via sftp", string(b))
}
