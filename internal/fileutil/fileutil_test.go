package fileutil

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	require.NoError(t, WriteFileAtomic(path, []byte("one"), 0o600))
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, "one", string(b))
	st, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())

	require.NoError(t, WriteFileAtomic(path, []byte("two"), 0o644))
	b, err = os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, "two", string(b))
	st, err = os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o644), st.Mode().Perm())

	assert.Equal(t, []string{"f"}, entries(t, dir), "no temporary file left behind")

	assert.Error(t, WriteFileAtomic(filepath.Join(dir, "missing", "f"), []byte("x"), 0o644))
}

func TestWriteJSON(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.json")
	type meta struct {
		Key  string   `json:"key"`
		List []string `json:"list"`
	}
	require.NoError(t, WriteJSON(path, meta{Key: "k", List: []string{"a", "b"}}))
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, "{\n  \"key\": \"k\",\n  \"list\": [\n    \"a\",\n    \"b\"\n  ]\n}\n", string(b))
	var m meta
	require.NoError(t, json.Unmarshal(b, &m))
	assert.Equal(t, "k", m.Key)

	assert.Error(t, WriteJSON(path, make(chan int)), "unencodable value")
	b2, _ := os.ReadFile(path)
	assert.Equal(t, b, b2, "a failed write leaves the old file")
}

func TestCopyFile(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	writeFile(t, src, "data")
	dst := filepath.Join(dir, "dst")
	require.NoError(t, CopyFile(src, dst, 0o755))
	b, err := os.ReadFile(dst)
	require.NoError(t, err)
	assert.Equal(t, "data", string(b))
	st, _ := os.Stat(dst)
	assert.Equal(t, os.FileMode(0o755), st.Mode().Perm())
	assert.Error(t, CopyFile(filepath.Join(dir, "nope"), dst, 0o644))
}

func TestWriteFileAtomicDiskFull(t *testing.T) {
	dir := withTmpfs(t, "64k")
	filler := make([]byte, 256<<10)
	os.WriteFile(filepath.Join(dir, "filler"), filler, 0o644) // fills it (short write)
	path := filepath.Join(dir, "state.json")
	err := WriteFileAtomic(path, bytes.Repeat([]byte("x"), 32<<10), 0o644)
	require.Error(t, err, "a write to a full disk must fail")
	assert.Contains(t, err.Error(), "no space left on "+path)
	left, _ := filepath.Glob(filepath.Join(dir, ".state.json.tmp-*"))
	assert.Empty(t, left, "no temp file left behind")
	err = WriteJSON(path, map[string]string{"x": strings.Repeat("y", 64<<10)})
	require.Error(t, err)
	assert.Contains(t, err.Error(), fmt.Sprintf("no space left on %s", path))
}

func TestTryLock(t *testing.T) {
	p := filepath.Join(t.TempDir(), "l")
	unlock, err := TryLock(p)
	require.NoError(t, err)
	// flock is per open file: a second open in this process conflicts too.
	_, err = TryLock(p)
	assert.ErrorIs(t, err, ErrLocked)
	unlock()
	unlock2, err := TryLock(p)
	require.NoError(t, err)
	unlock2()
}

func entries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

func writeFile(t *testing.T, path, s string) {
	t.Helper()
	require.NoError(t, os.WriteFile(path, []byte(s), 0o644))
}

// withTmpfs mounts a small tmpfs (root only) to fill.
func withTmpfs(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	return dir
}
