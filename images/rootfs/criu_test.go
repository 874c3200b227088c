package rootfs

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestCriuFiles: the shim compiles (warnings are errors), the wrapper
// preloads it and runs the real binary, and the binary's libraries go along.
func TestCriuFiles(t *testing.T) {
	if _, err := os.Stat("/usr/sbin/criu"); err != nil {
		t.Skip("criu is not installed (labctl setup installs it)")
	}
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("no gcc")
	}
	t.Setenv("LDTLAB_CACHE", t.TempDir())
	files, err := CriuFiles()
	require.NoError(t, err)
	byPath := map[string]File{}
	for _, f := range files {
		byPath[f.Path] = f
	}
	require.Contains(t, byPath, CriuGuestBinary)
	assert.Equal(t, "/usr/sbin/criu", byPath[CriuGuestBinary].Host)
	require.Contains(t, byPath, CriuGuestShim)
	require.Contains(t, byPath, CriuGuestPath)
	assert.Contains(t, byPath, "/lib64/ld-linux-x86-64.so.2")
	w, err := os.ReadFile(byPath[CriuGuestPath].Host)
	require.NoError(t, err)
	assert.Contains(t, string(w), "LD_PRELOAD="+CriuGuestShim+" exec "+CriuGuestBinary+` "$@"`)
	// The shim exports exactly what it overrides.
	out, err := exec.Command("nm", "-D", "--defined-only", byPath[CriuGuestShim].Host).Output()
	require.NoError(t, err)
	for _, sym := range []string{"inotify_init", "nft_ctx_new", "nft_ctx_free", "nft_run_cmd_from_buffer", "getsockopt"} {
		assert.Contains(t, string(out), " T "+sym+"\n")
	}
	// Cached: a second call builds nothing new.
	again, err := CriuFiles()
	require.NoError(t, err)
	assert.Equal(t, files, again)
	assert.Equal(t, filepath.Dir(byPath[CriuGuestShim].Host), filepath.Dir(byPath[CriuGuestPath].Host))
}
