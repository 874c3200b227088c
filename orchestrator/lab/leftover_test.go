package lab

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ldtlab/orchestrator/vm"
)

// sweepingBackend is a fake whose guests outlive their supervisor.
type sweepingBackend struct {
	fakeBackend
	swept *[]string
}

func (b sweepingBackend) Sweep(context.Context) error { return nil }
func (b sweepingBackend) SweepDir(_ context.Context, dir string) error {
	*b.swept = append(*b.swept, dir)
	return nil
}

var swept []string

func init() {
	vm.Register("fake-sweeping", func(vm.BackendConfig) (vm.Backend, error) {
		return sweepingBackend{fakeBackend: fakeBackend{last: fakeStarted}, swept: &swept}, nil
	})
}

func TestSweepLeftover(t *testing.T) {
	for _, c := range []struct {
		name      string
		record    string // "" = none
		wantSwept bool
		wantErr   bool
	}{
		{"no record (a qemu guest dies with its supervisor)", "", false, false},
		{"backend without a sweeper", `{"backend":"fake"}`, false, false},
		{"backend with a sweeper", `{"backend":"fake-sweeping"}`, true, false},
		{"unknown backend", `{"backend":"nope"}`, false, true},
		{"garbage", `{`, false, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			swept = nil
			dir := t.TempDir()
			if c.record != "" {
				require.NoError(t, os.WriteFile(filepath.Join(dir, backendFile), []byte(c.record), 0o600))
			}
			err := SweepLeftover(context.Background(), dir)
			assert.Equal(t, c.wantErr, err != nil, "%v", err)
			if c.wantSwept {
				assert.Equal(t, []string{dir}, swept)
			} else {
				assert.Empty(t, swept)
			}
		})
	}
}

func TestBackendRecordRoundTrip(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, writeBackendRecord(dir, "fake-sweeping", "qemu:///system"))
	swept = nil
	require.NoError(t, SweepLeftover(context.Background(), dir))
	assert.Equal(t, []string{dir}, swept)
}
