package lab

import (
	"ldtlab/internal/fileutil"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestLockName: `up` holds the per-name lock, `down` removes its file
// (issue 24: .NAME.lock files stayed in the state directory), but never
// from under an `up` that holds it.
func TestLockName(t *testing.T) {
	for _, c := range []struct {
		name     string
		run      func(t *testing.T)
		wantFile bool
	}{
		{"unlock keeps the file", func(t *testing.T) {
			u, err := LockName("x")
			require.NoError(t, err)
			u(false)
		}, true},
		{"unlock(remove) removes it", func(t *testing.T) {
			u, err := LockName("x")
			require.NoError(t, err)
			u(true)
		}, false},
		{"ReleaseName after a finished up", func(t *testing.T) {
			u, err := LockName("x")
			require.NoError(t, err)
			u(false)
			ReleaseName("x")
		}, false},
		{"a second taker is refused; ReleaseName leaves a held lock", func(t *testing.T) {
			u, err := LockName("x")
			require.NoError(t, err)
			defer u(false)
			_, err = LockName("x")
			assert.ErrorIs(t, err, fileutil.ErrLocked)
			ReleaseName("x")
		}, true},
		{"ReleaseName of a name never used", func(t *testing.T) { ReleaseName("x") }, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("LDTLAB_STATE", t.TempDir())
			st, _ := StateDir()
			require.NoError(t, os.MkdirAll(filepath.Join(st, "vms"), 0o700))
			c.run(t)
			_, err := os.Stat(filepath.Join(st, "vms", ".x.lock"))
			assert.Equal(t, c.wantFile, err == nil, "lock file present: %v", err)
		})
	}
}

// TestSameFile: a taker that opened the lock file just before `down`
// removed it must see that its file is no longer the lock.
func TestSameFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "l")
	f, err := os.Create(p)
	require.NoError(t, err)
	defer f.Close()
	assert.True(t, sameFile(f, p))
	require.NoError(t, os.Remove(p))
	assert.False(t, sameFile(f, p), "removed")
	require.NoError(t, os.WriteFile(p, nil, 0o600))
	assert.False(t, sameFile(f, p), "replaced by another file")
}
