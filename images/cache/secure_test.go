package cache

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Without HOME (a systemd service, some CI) the cache must not fall back
// to a directory anybody can create in, such as /tmp.
func TestDirWithoutHomeIsNotShared(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	t.Setenv("HOME", "")
	t.Setenv("LDTLAB_CACHE", "")
	t.Setenv("XDG_CACHE_HOME", "")
	d, err := Dir()
	if err != nil {
		// No home in the passwd database either: refused, naming the way out.
		assert.Contains(t, err.Error(), "LDTLAB_CACHE")
		return
	}
	assert.False(t, strings.HasPrefix(d, tmp), "cache root %s is under TMPDIR", d)
	assert.False(t, strings.HasPrefix(d, "/tmp/"), "cache root %s is under /tmp", d)
}

// A cache root others can write to is refused before anything in it is
// used: nothing is built or run from it.
func TestRefusesCacheRootOthersCanWrite(t *testing.T) {
	root := filepath.Join(t.TempDir(), "cache")
	require.NoError(t, os.Mkdir(root, 0o755))
	require.NoError(t, os.Chmod(root, 0o777))
	t.Setenv("LDTLAB_CACHE", root)
	called := false
	_, _, err := Open("kernels").Build("k", func(string) error { called = true; return nil })
	require.Error(t, err)
	assert.False(t, called, "the fill ran in a cache others can write")
	assert.Contains(t, err.Error(), "writable")
	assert.Contains(t, err.Error(), "LDTLAB_CACHE")
}

// A cache root (or a store in it) owned by another user is refused: root
// must never run a Makefile someone else planted.
func TestRefusesCacheRootOfAnotherUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give a directory to another user")
	}
	root := filepath.Join(t.TempDir(), "cache")
	require.NoError(t, os.MkdirAll(filepath.Join(root, "kernels"), 0o755))
	require.NoError(t, os.Chown(root, 65534, 65534))
	require.NoError(t, os.Chown(filepath.Join(root, "kernels"), 65534, 65534))
	t.Setenv("LDTLAB_CACHE", root)
	called := false
	_, _, err := Open("kernels").Build("k", func(string) error { called = true; return nil })
	require.Error(t, err)
	assert.False(t, called, "the fill ran in another user's cache")
	assert.Contains(t, err.Error(), "owned by uid 65534")
}

// An entry planted complete (marker and all) in a store another user
// owns is not a cache hit: the lookup refuses the store.
func TestLookupRefusesPlantedStore(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give a directory to another user")
	}
	root := t.TempDir()
	t.Setenv("LDTLAB_CACHE", root)
	entry := filepath.Join(root, "src", "k")
	require.NoError(t, os.MkdirAll(entry, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(entry, completeMarker), []byte("k\n"), 0o644))
	require.NoError(t, os.Chown(filepath.Join(root, "src"), 65534, 65534))
	_, err := Open("src").Check("k")
	require.Error(t, err)
	assert.NotErrorIs(t, err, ErrMissing)
	assert.Contains(t, err.Error(), "owned by uid 65534")
}
