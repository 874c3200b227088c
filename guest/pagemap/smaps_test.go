package pagemap

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Two VMAs as 6.12 prints them (trimmed): the fields are the VMA's whose
// range holds the address, never its neighbour's.
const smapsSample = `7f2a40000000-7f2a40200000 rw-s 00000000 00:01 1041                       /memfd:ldt-fuzz-r0 (deleted)
Size:               2048 kB
Rss:                2048 kB
AnonHugePages:         0 kB
ShmemPmdMapped:     2048 kB
FilePmdMapped:         0 kB
VmFlags: rd wr sh mr mw me ms hg
7f2a40200000-7f2a40400000 rw-p 00000000 00:00 0 
Size:               2048 kB
AnonHugePages:      2048 kB
ShmemPmdMapped:        0 kB
THPeligible:    1
`

func TestParseSmaps(t *testing.T) {
	f, err := parseSmaps(smapsSample, 0x7f2a40001000)
	require.NoError(t, err)
	assert.Equal(t, 2048, f["ShmemPmdMapped"])
	assert.Equal(t, 0, f["AnonHugePages"])
	assert.NotContains(t, f, "VmFlags")

	f, err = parseSmaps(smapsSample, 0x7f2a40200000)
	require.NoError(t, err)
	assert.Equal(t, 2048, f["AnonHugePages"])
	assert.NotContains(t, f, "THPeligible")

	_, err = parseSmaps(smapsSample, 0x1000)
	assert.Error(t, err)
}
