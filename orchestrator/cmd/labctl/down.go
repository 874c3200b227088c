package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"ldtlab/orchestrator/lab"
	"ldtlab/orchestrator/vm"
)

// The down verb powers guests off and removes their directories.
func init() {
	register(&command{
		name:    "down",
		args:    "NAME...",
		summary: "power a guest off (ACPI, then kill) and remove its directory",
		run: func(ctx context.Context, fs *flag.FlagSet, args []string) error {
			if len(args) == 0 {
				return usagef(fs, "name the VM(s) to stop")
			}
			// Every name gets its try: an unknown one must not leave the
			// next one running.
			var errs []error
			for _, n := range args {
				if err := cmdDown(n); err != nil {
					fmt.Fprintf(os.Stderr, "labctl down %s: %v\n", n, err)
					errs = append(errs, err)
				}
			}
			return quiet(errors.Join(errs...))
		},
	})
}

// keepCrashed saves a failed guest's console and reports before its
// directory goes, and says where.
func keepCrashed(name, dir string) {
	kept, n, err := lab.KeepCrashed(name, dir)
	switch {
	case err != nil:
		fmt.Fprintf(os.Stderr, "labctl: %v\n", err)
	case kept != "":
		fmt.Fprintf(os.Stderr, "labctl: kept the console and %d kernel report(s) of %s in %s (remove it when done)\n", n, name, kept)
	}
}

func cmdDown(name string) error {
	dir, err := lab.VMDir(name)
	if err != nil {
		return err
	}
	// Stop what really runs for this VM, whatever state.json says (it may
	// be stale, or belong to a racing `up`).
	procs := lab.Processes(name, dir)
	if _, serr := os.Stat(dir); serr != nil && len(procs) == 0 {
		lab.ReleaseName(name) // a lock file left by an older labctl
		return &lab.NoVMError{Name: name}
	}
	if len(procs) > 0 {
		// The supervisor powers the guest off (ACPI) within its scaled
		// shutdown timeout; anything left after that is killed.
		lab.Stop(procs, 60*time.Second)
	}
	if left := lab.Processes(name, dir); len(left) > 0 {
		return &vm.InfraError{Op: "stopping " + name, Err: fmt.Errorf("processes still running after SIGKILL: %v", left)}
	}
	// A guest may outlive a killed supervisor (a libvirt domain does):
	// its backend removes it.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := lab.SweepLeftover(ctx, dir); err != nil {
		return &vm.InfraError{Op: "removing what the guest of " + name + " left on its backend", Err: err}
	}
	keepCrashed(name, dir)
	if err := os.RemoveAll(dir); err != nil {
		return &vm.InfraError{Op: "removing " + dir, Err: err}
	}
	// Nothing of the name stays in the state directory.
	lab.ReleaseName(name)
	fmt.Printf("%s is down\n", name)
	return nil
}
