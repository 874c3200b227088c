package agent

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/pkg/sftp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestSFTPSymlinkTargetsVerbatim: the agent's SFTP server stores a
// symlink's target as sent, relative or absolute, while the link's own
// path is resolved against the home directory; failures come back as SFTP
// errors; and symlink replies interleave with the concurrent traffic of a
// large transfer without corrupting it.
func TestSFTPSymlinkTargetsVerbatim(t *testing.T) {
	c := sshPair(t)
	sc, err := sftp.NewClient(c, sftp.UseConcurrentWrites(true), sftp.UseConcurrentReads(true))
	require.NoError(t, err)
	defer sc.Close()
	wd, err := sc.Getwd()
	require.NoError(t, err)

	for link, target := range map[string]string{"rel": "a", "up": "../x/y", "abs": "/etc/passwd", "dot": "."} {
		require.NoError(t, sc.Symlink(target, link), link)
		got, err := os.Readlink(filepath.Join(wd, link))
		require.NoError(t, err)
		assert.Equal(t, target, got, link)
		got, err = sc.ReadLink(link)
		require.NoError(t, err)
		assert.Equal(t, target, got, link)
	}
	// An absolute link path is taken as is.
	abs := filepath.Join(t.TempDir(), "l")
	require.NoError(t, sc.Symlink("b", abs))
	got, err := os.Readlink(abs)
	require.NoError(t, err)
	assert.Equal(t, "b", got)

	err = sc.Symlink("a", "rel")
	assert.Error(t, err, "the link exists")
	err = sc.Symlink("a", "no/such/dir/l")
	assert.ErrorIs(t, err, os.ErrNotExist)

	// Symlinks while a large file goes both ways.
	data := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		f, err := sc.Create("big")
		if !assert.NoError(t, err) {
			return
		}
		_, err = f.ReadFrom(bytes.NewReader(data))
		assert.NoError(t, err)
		assert.NoError(t, f.Close())
		f, err = sc.Open("big")
		if !assert.NoError(t, err) {
			return
		}
		defer f.Close()
		var back bytes.Buffer
		_, err = f.WriteTo(&back)
		assert.NoError(t, err)
		assert.True(t, bytes.Equal(data, back.Bytes()), "the file came back changed")
	}()
	for i := 0; i < 200; i++ {
		require.NoError(t, sc.Symlink(fmt.Sprint("t", i), fmt.Sprint("l", i)))
	}
	wg.Wait()
	got, err = os.Readlink(filepath.Join(wd, "l199"))
	require.NoError(t, err)
	assert.Equal(t, "t199", got)
}

// TestSFTPFilterRefusesHugePacket: a packet length past the limit ends the
// session instead of being buffered.
func TestSFTPFilterRefusesHugePacket(t *testing.T) {
	r := bytes.NewReader([]byte{0x7f, 0xff, 0xff, 0xff, 1})
	var out bytes.Buffer
	f := newSFTPFilter(struct {
		io.Reader
		io.Writer
	}{r, &out}, "/")
	go f.run()
	_, err := io.ReadAll(f.pr)
	assert.ErrorContains(t, err, "packet of")
}
