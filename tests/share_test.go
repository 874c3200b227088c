package tests

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestDevVMShare: `labctl up --share` mounts host directories in the
// guest, read-only unless :rw, at the host path by default; read-only is
// read-only even for root after a remount; symlinks never reach host
// files outside the share; a writable share lets no setuid bit or device
// node onto the host (issue 24 item 2).
func TestDevVMShare(t *testing.T) {
	for _, backend := range []string{"qemu", "libvirt"} {
		t.Run(backend, func(t *testing.T) {
			// World-traversable, unlike the suite's TMPDIR: libvirt's
			// QEMU runs as its own user.
			top, err := os.MkdirTemp(filepath.Dir(suiteTmp), "ldtlab-share-")
			require.NoError(t, err)
			t.Cleanup(func() { os.RemoveAll(top) })
			require.NoError(t, os.Chmod(top, 0o755))
			ro := filepath.Join(top, "src")
			rw := filepath.Join(top, "out")
			require.NoError(t, os.Mkdir(ro, 0o755))
			require.NoError(t, os.Mkdir(rw, 0o700))
			require.NoError(t, os.Chmod(rw, 0o777)) // whoever QEMU runs as
			require.NoError(t, os.WriteFile(filepath.Join(top, "secret"), []byte("host-secret"), 0o644))
			require.NoError(t, os.WriteFile(filepath.Join(ro, "file"), []byte("v1"), 0o644))
			require.NoError(t, os.Symlink("../secret", filepath.Join(ro, "up")))
			require.NoError(t, os.Symlink("/etc", filepath.Join(ro, "etc")))

			c, name, up := devVM(t, "share-"+backend[:2], "--backend", backend, "--share", ro, "--share", rw+":/out:rw")
			assert.Contains(t, up, "shared: "+ro+" -> "+ro+" (read-only)")
			assert.Contains(t, up, "shared: "+rw+" -> /out (writable)")
			run := func(cmd string) (string, string, int) {
				so, se, code := c.run("run", name, "--", cmd)
				return so, se, code
			}
			// Read-only, at the host path.
			so, se, code := run("cat " + ro + "/file; grep -w " + ro + " /proc/mounts")
			require.Equal(t, 0, code, "%s%s", so, se)
			assert.True(t, strings.HasPrefix(so, "v1"), so)
			assert.Regexp(t, `ldtshare0 `+ro+` 9p ro,`, so)
			so, se, code = run("touch " + ro + "/new")
			assert.NotEqual(t, 0, code)
			assert.Contains(t, so+se, "Read-only file system")
			so, se, code = run("mount -o remount,rw " + ro + "; echo x > " + ro + "/file; cat " + ro + "/file")
			assert.Contains(t, so, "v1", "root in the guest cannot write a read-only share: %s%s", so, se)
			b, err := os.ReadFile(filepath.Join(ro, "file"))
			require.NoError(t, err)
			assert.Equal(t, "v1", string(b))
			_, err = os.Stat(filepath.Join(ro, "new"))
			assert.ErrorIs(t, err, fs.ErrNotExist)

			// The host's edits show at once.
			require.NoError(t, os.WriteFile(filepath.Join(ro, "file"), []byte("v2"), 0o644))
			assert.Equal(t, "v2", c.ok("run", name, "--", "cat "+ro+"/file"))

			// Symlinks resolve in the guest's tree, never on the host.
			so, _, _ = run("cat " + ro + "/up; cat " + ro + "/etc/os-release")
			assert.NotContains(t, so, "host-secret")
			assert.Contains(t, so, "ldtlab guest", "etc -> /etc is the guest's /etc")

			// Writable, elsewhere; no setuid bit or device node on the host.
			so, se, code = run("cd /out && echo data > f && chmod 4755 f && mknod dev c 1 3 && mkdir d && ls -l f && grep ' /out ' /proc/mounts")
			require.Equal(t, 0, code, "%s%s", so, se)
			assert.Contains(t, so, "-rwsr-xr-x", "the guest sees the mode it set")
			assert.Regexp(t, `ldtshare1 /out 9p rw,`, so)
			b, err = os.ReadFile(filepath.Join(rw, "f"))
			require.NoError(t, err)
			assert.Equal(t, "data\n", string(b))
			fi, err := os.Lstat(filepath.Join(rw, "f"))
			require.NoError(t, err)
			assert.Zero(t, fi.Mode()&(fs.ModeSetuid|fs.ModeSetgid), "no setuid bit on the host: %v", fi.Mode())
			fi, err = os.Lstat(filepath.Join(rw, "dev"))
			require.NoError(t, err)
			assert.True(t, fi.Mode().IsRegular(), "a guest device node is a plain file on the host: %v", fi.Mode())
		})
	}
}
