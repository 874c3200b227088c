package secfs

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestMkdirPrivate(t *testing.T) {
	base := t.TempDir()
	d := filepath.Join(base, "a", "b", "c")
	require.NoError(t, MkdirPrivate(d, 0o755))
	require.NoError(t, MkdirPrivate(d, 0o755), "an existing private directory is fine")

	open := filepath.Join(base, "open")
	require.NoError(t, os.Mkdir(open, 0o700))
	require.NoError(t, os.Chmod(open, 0o777))
	err := MkdirPrivate(filepath.Join(open, "x"), 0o755)
	require.Error(t, err, "below a world-writable, non-sticky directory")
	assert.Contains(t, err.Error(), "writable by every user")

	err = MkdirPrivate(open, 0o755)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "writable by other users")

	link := filepath.Join(base, "link")
	require.NoError(t, os.Symlink(d, link))
	err = MkdirPrivate(link, 0o755)
	require.ErrorIs(t, err, ErrSymlink)

	sticky := filepath.Join(base, "sticky")
	require.NoError(t, os.Mkdir(sticky, 0o700))
	require.NoError(t, os.Chmod(sticky, os.ModeSticky|0o777))
	require.NoError(t, MkdirPrivate(filepath.Join(sticky, "mine"), 0o700), "below a sticky directory such as /tmp")
}

func TestMkdirPrivateOtherUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	base := t.TempDir()
	theirs := filepath.Join(base, "theirs")
	require.NoError(t, os.Mkdir(theirs, 0o755))
	require.NoError(t, os.Chown(theirs, 65534, 65534))
	err := MkdirPrivate(theirs, 0o755)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "owned by uid 65534")
	err = MkdirPrivate(filepath.Join(theirs, "below"), 0o755)
	require.Error(t, err, "below another user's directory")
}

func TestOpenInFollowsNoSymlink(t *testing.T) {
	dir := t.TempDir()
	outside := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(outside, "f"), []byte("secret"), 0o600))
	require.NoError(t, os.Mkdir(filepath.Join(dir, "sub"), 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "sub", "ok"), []byte("fine"), 0o600))
	require.NoError(t, os.Symlink(outside, filepath.Join(dir, "linkdir")))
	require.NoError(t, os.Symlink(filepath.Join(outside, "f"), filepath.Join(dir, "sub", "linkfile")))

	b, err := ReadFileIn(dir, "sub/ok", 100)
	require.NoError(t, err)
	assert.Equal(t, "fine", string(b))
	_, err = ReadFileIn(dir, "linkdir/f", 100)
	assert.ErrorIs(t, err, ErrSymlink)
	_, err = ReadFileIn(dir, "sub/linkfile", 100)
	assert.ErrorIs(t, err, ErrSymlink)
	_, err = ReadFile(filepath.Join(dir, "sub", "linkfile"), 100)
	assert.ErrorIs(t, err, ErrSymlink)
	_, err = ReadFileIn(dir, "../x", 100)
	assert.Error(t, err)
}

func TestReadFileBounded(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "big")
	require.NoError(t, os.WriteFile(p, make([]byte, 2000), 0o600))
	_, err := ReadFile(p, 1000)
	var tl *TooLargeError
	require.ErrorAs(t, err, &tl)
	assert.Contains(t, err.Error(), "larger than the")

	_, err = ReadFile("/dev/zero", 1000)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "not a regular file")

	fifo := filepath.Join(dir, "fifo")
	require.NoError(t, syscall.Mkfifo(fifo, 0o600))
	_, err = ReadFile(fifo, 1000)
	require.Error(t, err, "a FIFO without a writer is refused, not waited on")
	assert.Contains(t, err.Error(), "not a regular file")

	_, err = ReadLimited(new(bytesReader), "stdin", 1000)
	require.ErrorAs(t, err, &tl)
}

type bytesReader int

func (b *bytesReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'x'
	}
	return len(p), nil
}

func TestOpenRegular(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	require.NoError(t, syscall.Mkfifo(fifo, 0o600))
	_, err := OpenRegular(fifo)
	require.Error(t, err, "a FIFO without a writer is refused at once")
	assert.Contains(t, err.Error(), "not a regular file")
	p := filepath.Join(dir, "log")
	require.NoError(t, os.WriteFile(p, []byte("x"), 0o600))
	require.NoError(t, os.Symlink(p, filepath.Join(dir, "link")))
	f, err := OpenRegular(filepath.Join(dir, "link"))
	require.NoError(t, err, "a path the user names may be a symlink")
	f.Close()
}
