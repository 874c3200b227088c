package boot

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A share list init cannot read is recorded as such, for the host to
// report; nothing is mounted.
func TestMountSharesRecordsBadSpec(t *testing.T) {
	status := filepath.Join(t.TempDir(), "run", "shares")
	log := NewLog("test")
	log.KmsgPath = "" // stderr, not the host's kernel log
	err := MountShares("ldtshare0 ro 2f\nldtshare1 rw 2f7573722f62696e\n", status, log)
	require.Error(t, err)
	b, rerr := os.ReadFile(status)
	require.NoError(t, rerr)
	st := ParseSharesStatus(string(b))
	assert.Contains(t, st["*"], "replace the guest's root")
	assert.NotContains(t, st, "ldtshare0")
}
