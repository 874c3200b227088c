package lab

// Sweeping what dead orchestrators left: stale temporary VM directories,
// the backend's orphans, and a killed supervisor's guest (labctl down).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"ldtlab/internal/fileutil"
	"ldtlab/internal/secfs"
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

// sweepStale removes temporary VM directories left by an orchestrator that
// was killed outright (SIGKILL runs no cleanup; its QEMU died with it via
// the parent-death signal, but the directory stayed), and asks the backend
// to remove its own orphans.
func sweepStale(ctx context.Context, b vm.Backend) {
	if sw, ok := b.(vm.Sweeper); ok {
		sw.Sweep(ctx)
	}
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "ldtlab-vm-*"))
	for _, d := range dirs {
		// Only our own private directories (as MkdirTemp made them): in
		// a shared /tmp, another user's (or one planted for us) is not
		// ours to open or remove.
		st, err := os.Lstat(d)
		if err != nil || secfs.CheckPrivateDir(d) != nil || time.Since(st.ModTime()) < time.Minute {
			continue // may be being created right now
		}
		// Read-only, never through a symlink, never a FIFO or device: a
		// flock needs no more.
		f, err := secfs.OpenFile(filepath.Join(d, "lab.lock"), os.O_RDONLY, 0)
		if err == nil {
			err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
			f.Close()
			if err != nil {
				continue // its orchestrator lives
			}
		}
		os.RemoveAll(d)
	}
}
