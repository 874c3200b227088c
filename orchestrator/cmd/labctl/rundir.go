package main

import (
	"path/filepath"
	"time"

	"ldtlab/internal/secfs"
	"ldtlab/orchestrator/lab"
	"ldtlab/orchestrator/vm"
)

// runDir is the private output directory of a long run (fuzz, coverage):
// dir as given, or KIND-DATE in the state directory; absolute, made 0700.
func runDir(dir, kind string) (string, error) {
	if dir == "" {
		state, err := lab.EnsureStateDir()
		if err != nil {
			return "", &vm.InfraError{Op: "creating the " + kind + " directory", Err: err}
		}
		dir = filepath.Join(state, kind+"-"+time.Now().Format("20060102-150405"))
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	if err := secfs.MkdirPrivate(dir, 0o700); err != nil {
		return "", &vm.InfraError{Op: "creating " + dir, Err: err}
	}
	return dir, nil
}
