package lab

import (
	"context"
	"errors"
	"io"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ldtlab/orchestrator/vm"
)

// failingStart is the fake backend whose Start fails after the lab made
// the VM directory, keys and console: the half-made boot must be undone.
type failingStart struct {
	fakeBackend
	dir *string
}

func (b failingStart) Start(_ context.Context, cfg vm.Config) (vm.Instance, error) {
	*b.dir = cfg.Dir
	return nil, &vm.InfraError{Op: "starting the fake VM", Err: errors.New("no")}
}

var failedDir string

func init() {
	vm.Register("fake-failing-start", func(vm.BackendConfig) (vm.Backend, error) {
		return failingStart{fakeBackend: fakeBackend{last: fakeStarted}, dir: &failedDir}, nil
	})
}

// The boot's cleanup stack holds one undo per step that made something,
// in the order they were made; Close empties it.
func TestBootCleanupStack(t *testing.T) {
	m, _ := bootFake(t)
	var names []string
	for _, c := range m.cleanups {
		names = append(names, c.name)
	}
	assert.Equal(t, []string{"close the backend", "remove the temporary VM directory, release its lock", "close the console", "stop the VM"}, names)
	require.NoError(t, m.Close())
	assert.Empty(t, m.cleanups)
	require.NoError(t, m.Close(), "idempotent")
}

func TestBootFailureUndoesWhatItMade(t *testing.T) {
	kb, img := fakeBuild(t)
	failedDir = ""
	_, err := BootBuilt(context.Background(), Options{Name: "fake", Backend: "fake-failing-start", Log: io.Discard}, kb, img)
	var ie *vm.InfraError
	require.ErrorAs(t, err, &ie)
	require.NotEmpty(t, failedDir, "the boot reached Start")
	_, serr := os.Stat(failedDir)
	assert.True(t, os.IsNotExist(serr), "the temporary VM directory is removed: %v", serr)
}
