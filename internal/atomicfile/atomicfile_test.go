package atomicfile

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	cases := []struct {
		data []byte
		mode os.FileMode
	}{
		{[]byte("one"), 0o600},
		{[]byte("two, longer"), 0o644},
		{nil, 0o640},
	}
	for _, c := range cases {
		require.NoError(t, WriteFile(path, c.data, c.mode))
		b, err := os.ReadFile(path)
		require.NoError(t, err)
		assert.Equal(t, string(c.data), string(b))
		fi, err := os.Stat(path)
		require.NoError(t, err)
		assert.Equal(t, c.mode, fi.Mode().Perm())
	}
	left, _ := os.ReadDir(dir)
	assert.Len(t, left, 1, "no temporary file left behind")
}

func TestWriteFileFailureLeavesOld(t *testing.T) {
	dir := t.TempDir()
	assert.Error(t, WriteFile(filepath.Join(dir, "missing", "f"), []byte("x"), 0o644))

	// A directory in the way: the rename fails, the temporary file goes.
	require.NoError(t, os.Mkdir(filepath.Join(dir, "d"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "d", "keep"), nil, 0o644))
	assert.Error(t, WriteFile(filepath.Join(dir, "d"), []byte("x"), 0o644))
	left, _ := os.ReadDir(dir)
	assert.Len(t, left, 1)
	fi, err := os.Stat(filepath.Join(dir, "d"))
	require.NoError(t, err)
	assert.True(t, fi.IsDir())
}

func TestSyncDirMissing(t *testing.T) {
	assert.Error(t, SyncDir(filepath.Join(t.TempDir(), "nope")))
}
