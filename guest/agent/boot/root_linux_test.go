package boot

import (
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A root left 1777 by the kernel's rootfs becomes 0755; a 0755 one is
// left as it is.
func TestSecureDir(t *testing.T) {
	d := t.TempDir()
	require.NoError(t, os.Chmod(d, os.ModeSticky|0o777))
	require.NoError(t, secureDir(d))
	st, err := os.Stat(d)
	require.NoError(t, err)
	assert.Equal(t, os.ModeDir|0o755, st.Mode())

	require.NoError(t, os.Chmod(d, 0o700))
	require.NoError(t, secureDir(d))
	st, err = os.Stat(d)
	require.NoError(t, err)
	assert.Equal(t, os.ModeDir|0o700, st.Mode(), "a private directory stays private")
}
