package initramfs

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The kernel unpacks the archive into a tmpfs whose root is 1777: unless
// the archive carries a "." entry, any guest user can plant files in /.
// The unpacker chmods "." like any directory, so the archive's first
// record is "." with mode 0755.
func TestArchiveRootIs0755(t *testing.T) {
	var a Archive
	require.NoError(t, a.AddFile("init", 0o755, []byte("x")))
	var buf bytes.Buffer
	_, err := a.WriteTo(&buf)
	require.NoError(t, err)
	recs := readNewc(t, buf.Bytes())
	require.NotEmpty(t, recs)
	assert.Equal(t, ".", recs[0].name, "the root's own entry comes first")
	assert.Equal(t, "40755", fmt.Sprintf("%o", recs[0].mode))
}
