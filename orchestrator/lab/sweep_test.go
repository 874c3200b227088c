package lab

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// watchOpens reports whether path is opened between the call and the
// returned function's call (inotify IN_OPEN).
func watchOpens(t *testing.T, path string) func() bool {
	t.Helper()
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	require.NoError(t, err)
	_, err = unix.InotifyAddWatch(fd, path, unix.IN_OPEN)
	require.NoError(t, err)
	return func() bool {
		defer unix.Close(fd)
		buf := make([]byte, 4096)
		n, _ := unix.Read(fd, buf)
		return n > 0
	}
}

func staleDir(t *testing.T, tmp, name string) string {
	t.Helper()
	d := filepath.Join(tmp, name)
	require.NoError(t, os.Mkdir(d, 0o700))
	return d
}

func age(t *testing.T, d string) {
	t.Helper()
	old := time.Now().Add(-time.Hour)
	require.NoError(t, os.Chtimes(d, old, old))
}

// The sweep of stale temporary VM directories never opens a lab.lock
// that is a symlink (another user's plant pointing at a root-only file).
func TestSweepDoesNotFollowLockSymlink(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	target := filepath.Join(t.TempDir(), "root-only")
	require.NoError(t, os.WriteFile(target, []byte("secret"), 0o600))
	d := staleDir(t, tmp, "ldtlab-vm-planted")
	require.NoError(t, os.Symlink(target, filepath.Join(d, "lab.lock")))
	age(t, d)
	opened := watchOpens(t, target)
	sweepStale(context.Background(), nil)
	assert.False(t, opened(), "the sweep opened the symlink's target")
	b, err := os.ReadFile(target)
	require.NoError(t, err)
	assert.Equal(t, "secret", string(b))
}

// Directories of other users are not ours to open or remove.
func TestSweepLeavesOtherUsersDirs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give a directory to another user")
	}
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	target := filepath.Join(t.TempDir(), "root-only")
	require.NoError(t, os.WriteFile(target, []byte("secret"), 0o600))
	d := staleDir(t, tmp, "ldtlab-vm-nobody")
	require.NoError(t, os.Symlink(target, filepath.Join(d, "lab.lock")))
	require.NoError(t, os.Lchown(filepath.Join(d, "lab.lock"), 65534, 65534))
	require.NoError(t, os.Chown(d, 65534, 65534))
	age(t, d)
	opened := watchOpens(t, target)
	sweepStale(context.Background(), nil)
	assert.False(t, opened(), "the sweep opened another user's lock target")
	assert.DirExists(t, d, "another user's directory is left alone")
}

// A stale directory of ours with a free lock is still swept; a held one
// is kept.
func TestSweepRemovesOwnStaleDirs(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	stale := staleDir(t, tmp, "ldtlab-vm-stale")
	require.NoError(t, os.WriteFile(filepath.Join(stale, "lab.lock"), nil, 0o600))
	age(t, stale)
	live := staleDir(t, tmp, "ldtlab-vm-live")
	f, err := holdLock(live)
	require.NoError(t, err)
	defer f.Close()
	age(t, live)
	sweepStale(context.Background(), nil)
	assert.NoDirExists(t, stale)
	assert.DirExists(t, live)
}

func TestHeadTail(t *testing.T) {
	b := &headTail{max: 10}
	b.Write([]byte("0123"))
	b.Write([]byte("4567"))
	assert.Equal(t, "01234567", string(b.Bytes()), "under the bound: everything")
	assert.Zero(t, b.Dropped())
	for i := 0; i < 100; i++ {
		b.Write([]byte("xyz"))
	}
	b.Write([]byte("ABCDE"))
	assert.Equal(t, int64(8+300+5-10), b.Dropped())
	got := string(b.Bytes())
	assert.True(t, len(got) > 10)
	assert.Equal(t, "01234", got[:5], "the head")
	assert.Equal(t, "ABCDE", got[len(got)-5:], "the tail")
	assert.Contains(t, got, "303 bytes of output dropped")
	big := &headTail{max: 10}
	big.Write(make([]byte, 1000))
	assert.Equal(t, int64(990), big.Dropped())
	assert.LessOrEqual(t, cap(big.tail)+cap(big.head), 1000+10)
}
