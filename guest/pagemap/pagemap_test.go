package pagemap

import (
	"errors"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func TestEntry(t *testing.T) {
	cases := []struct {
		e                           Entry
		present, swapped, softDirty bool
		pfn                         uint64
	}{
		{0, false, false, false, 0},
		{Present | 5, true, false, false, 5},
		{Present | SoftDirty | 7, true, false, true, 7},
		{Swapped | 0x123, false, true, false, 0}, // a swap entry's offset is no frame
		{SoftDirty, false, false, true, 0},
	}
	for _, c := range cases {
		assert.Equal(t, c.present, c.e.Present(), "%#x", uint64(c.e))
		assert.Equal(t, c.swapped, c.e.Swapped(), "%#x", uint64(c.e))
		assert.Equal(t, c.softDirty, c.e.SoftDirty(), "%#x", uint64(c.e))
		assert.Equal(t, c.pfn, c.e.PFN(), "%#x", uint64(c.e))
	}
}

// TestReadSelf maps two pages, touches one and asks the real pagemap.
func TestReadSelf(t *testing.T) {
	b, err := unix.Mmap(-1, 0, 2*int(PageSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	require.NoError(t, err)
	defer unix.Munmap(b)
	b[0] = 1
	addr := uintptr(unsafe.Pointer(&b[0]))
	es, err := Read(0, addr, 2)
	require.NoError(t, err)
	assert.True(t, es[0].Present(), "written page")
	assert.False(t, es[1].Present(), "untouched page")

	f, err := Open(0)
	require.NoError(t, err)
	defer f.Close()
	fr, err := f.Frames(addr, 2)
	require.NoError(t, err)
	assert.Equal(t, uint64(0), fr[1])
	if unix.Geteuid() == 0 {
		assert.NotZero(t, fr[0], "root sees the frame")
	}
}

func TestReadPastTheEnd(t *testing.T) {
	f, err := Open(0)
	require.NoError(t, err)
	defer f.Close()
	_, err = f.Read(^uintptr(0)&^(PageSize-1), 1)
	require.Error(t, err)
	assert.True(t, errors.Is(err, ErrGone), "%v", err)
}

func TestOpenMissingPid(t *testing.T) {
	_, err := Open(1 << 30)
	assert.Error(t, err)
}
