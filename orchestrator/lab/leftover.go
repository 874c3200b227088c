package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"ldtlab/internal/fileutil"
	"ldtlab/orchestrator/vm"
)

// backendFile records, in a VM directory, which backend started its guest,
// so that `labctl down` can ask that backend (vm.Sweeper) for what a
// killed supervisor left running.
const backendFile = "backend.json"

type backendRecord struct {
	Backend string `json:"backend"`
	Connect string `json:"connect,omitempty"`
}

func writeBackendRecord(dir, backend, connect string) error {
	p := filepath.Join(dir, backendFile)
	if err := fileutil.WriteJSON(p, backendRecord{Backend: backend, Connect: connect}); err != nil {
		return &vm.InfraError{Op: "recording the VM backend", Err: err}
	}
	return nil
}

// SweepLeftover removes what the guest of the VM directory dir left on its
// backend when its supervisor was killed (a libvirt domain outlives it),
// through the backend's vm.Sweeper. A directory without a record, or whose
// backend's guests die with their supervisor, needs nothing.
func SweepLeftover(ctx context.Context, dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, backendFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading the VM's backend record: %w", err)
	}
	var rec backendRecord
	if err := json.Unmarshal(b, &rec); err != nil || rec.Backend == "" {
		return fmt.Errorf("%s: unreadable backend record %q", filepath.Join(dir, backendFile), b)
	}
	backend, err := vm.Open(rec.Backend, vm.BackendConfig{Connect: rec.Connect})
	if err != nil {
		return err
	}
	defer backend.Close()
	sw, ok := backend.(vm.Sweeper)
	if !ok {
		return nil
	}
	return sw.SweepDir(ctx, dir)
}
