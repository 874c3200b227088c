package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"ldtlab/internal/fileutil"
	"ldtlab/internal/lines"
	"ldtlab/orchestrator/lab"
	"ldtlab/orchestrator/vm"
)

// The up verb boots a guest in the background: a supervisor process owns it.
func init() {
	var up guestFlags
	var upShares shareFlags
	var upGDB bool
	register(&command{
		name:    "up",
		args:    "NAME",
		summary: "boot a guest in the background (state in its own directory)",
		setup: func(fs *flag.FlagSet) {
			up.register(fs)
			upShares.register(fs)
			fs.BoolVar(&upGDB, "gdb", false, "expose QEMU's gdbstub as a unix socket only you can reach (gdb.sock in the VM's private directory), print the gdb command line, and hold a guest that panics paused for gdb instead of stopping it (qemu backend; --debuginfo for types and the lx- commands)")
		},
		run: func(ctx context.Context, fs *flag.FlagSet, args []string) error {
			if len(args) != 1 {
				return usagef(fs, "need exactly one VM name")
			}
			return cmdUp(ctx, &up, &upShares, upGDB, args[0])
		},
	})
}

func cmdUp(ctx context.Context, g *guestFlags, shares *shareFlags, gdb bool, name string) error {
	dir, err := lab.VMDir(name)
	if err != nil {
		return err
	}
	if err := g.validate(); err != nil {
		return usageError{err}
	}
	if gdb && g.backend == "libvirt" {
		// Its QEMU runs on the libvirt host as libvirt's user: a gdbstub
		// there would be a socket or port this user cannot own.
		return usageError{errors.New("--gdb needs --backend qemu: the libvirt backend has no gdbstub only you can reach")}
	}
	if err := shares.check(g); err != nil {
		return err
	}
	// Creating a VM is atomic: whoever holds this lock boots it, anyone
	// else is told it is already booting. It is held until the guest is
	// up or has failed.
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return &vm.InfraError{Op: "creating the state directory", Err: fileutil.Explain(filepath.Dir(dir), err)}
	}
	unlockName, err := lab.LockName(name)
	if errors.Is(err, fileutil.ErrLocked) {
		return fmt.Errorf("VM %q is already booting: another `labctl up %s` is starting it", name, name)
	}
	if err != nil {
		return &vm.InfraError{Op: "locking VM " + name, Err: err}
	}
	defer unlockName(false)
	if _, err := os.Stat(dir); err == nil {
		st, _ := lab.ReadState(dir)
		procs := lab.Processes(name, dir)
		if len(procs) > 0 || (st != nil && st.Alive()) {
			status := "running"
			if st != nil {
				status = st.Status
			}
			return fmt.Errorf("VM %q already exists (%s; stop it with `labctl down %s`)", name, status, name)
		}
		keepCrashed(name, dir) // a crash's console must survive the new guest
		os.RemoveAll(dir)      // leftovers of a dead VM
	}
	repo, err := repoRoot()
	if err != nil {
		return err
	}
	o := g.devOptions(repo, name)
	// Build in the foreground, where progress and errors are visible.
	if _, _, err := lab.Prepare(ctx, o); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("VM %q already exists (stop it with `labctl down %s`)", name, name)
		}
		return &vm.InfraError{Op: "creating the VM directory", Err: fileutil.Explain(dir, err)}
	}
	args := []string{"supervise", "-dir", dir, "-config", g.config, "-accel", g.accel,
		"-mem", fmt.Sprint(g.mem), "-cpus", fmt.Sprint(g.cpus), "-cmdline", g.cmdline,
		"-backend", g.backend, "-connect", g.connect}
	if g.swap.set {
		args = append(args, "-swap", fmt.Sprint(g.swap.v))
	}
	if g.vanilla {
		args = append(args, "-vanilla")
	}
	args = append(args, g.kernelSelection.args()...)
	if g.redis {
		args = append(args, "-redis")
	}
	args = append(args, shares.args()...)
	if gdb {
		args = append(args, "-gdb")
	}
	args = append(args, name)
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(dir, "supervisor.log"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return &vm.InfraError{Op: "creating the supervisor log", Err: fileutil.Explain(filepath.Join(dir, "supervisor.log"), err)}
	}
	defer logf.Close()
	cmd := exec.Command(exe, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "LDTLAB_REPO="+repo)
	// A session of its own: the supervisor outlives this command and the
	// terminal's signals.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return &vm.InfraError{Op: "starting the supervisor", Err: err}
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	fmt.Fprintf(os.Stderr, "[lab] booting %s in the background (supervisor pid %d, log %s)\n", name, cmd.Process.Pid, logf.Name())
	for {
		st, err := lab.ReadState(dir)
		if err == nil {
			switch st.Status {
			case lab.StatusRunning:
				fmt.Printf("%s is up: kernel %s (%s), %s, booted in %.2fs\n", name, st.Kernel, st.KernelVariant, st.Accel, st.BootSeconds)
				for _, s := range st.Shares {
					fmt.Printf("  shared: %s\n", s)
				}
				fmt.Printf("  labctl run %s -- uname -r\n  labctl shell %s\n  labctl down %s\n", name, name, name)
				if st.GDB != "" {
					// The socket is this user's alone (0600 in the 0700
					// VM directory): gdb runs as the same user.
					fmt.Printf("  %s\n", st.GDBCommand())
					if st.GDBScripts == "" {
						fmt.Printf("  (this kernel has no debug info: `labctl up --gdb --debuginfo` gives gdb its types and the lx-dmesg, lx-ps… commands)\n")
					}
					fmt.Printf("  a panic holds the guest paused for gdb until `labctl down %s`\n", name)
				}
				if st.Monitor != "" {
					fmt.Printf("  labctl dump %s   (its memory as an ELF vmcore)\n", name)
				}
				return nil
			case lab.StatusFailed:
				e := fmt.Errorf("%s failed to boot: %s\n(console: %s; `labctl down %s` removes it)", name, st.Error, filepath.Join(dir, "console.log"), name)
				if st.ErrorKind == "guest" {
					return e
				}
				return &vm.InfraError{Op: "booting " + name, Err: e}
			}
		}
		select {
		case err := <-exited:
			if st, serr := lab.ReadState(dir); serr == nil && st.Status == lab.StatusFailed {
				continue // its failure is recorded: report that
			}
			b, _ := os.ReadFile(logf.Name())
			return &vm.InfraError{Op: "booting " + name, Err: fmt.Errorf("its supervisor exited (%v%s) before the guest was up:\n%s", err, lab.DiskHint(dir), lines.Last(string(b), 30))}
		case <-ctx.Done():
			// Interrupted: stop what was started, leave no VM behind.
			lab.Stop(lab.Processes(name, dir), 30*time.Second)
			os.RemoveAll(dir)
			return fmt.Errorf("booting %s: %w (stopped it)", name, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
