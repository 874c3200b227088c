package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"golang.org/x/term"

	"ldtlab/images/cache"
	"ldtlab/internal/lines"
	"ldtlab/orchestrator/channel"
	"ldtlab/orchestrator/lab"
	"ldtlab/orchestrator/report"
	"ldtlab/orchestrator/vm"
	"ldtlab/orchestrator/vm/libvirt"
)

func init() {
	var up guestFlags
	var upGDB bool
	register(&command{
		name:    "up",
		args:    "NAME",
		summary: "boot a guest in the background (state in its own directory)",
		setup: func(fs *flag.FlagSet) {
			up.register(fs)
			fs.BoolVar(&upGDB, "gdb", false, "expose QEMU's gdbstub on 127.0.0.1 and print the gdb command line")
		},
		run: func(ctx context.Context, fs *flag.FlagSet, args []string) error {
			if len(args) != 1 {
				fs.Usage()
				return errors.New("need exactly one VM name")
			}
			return cmdUp(ctx, &up, upGDB, args[0])
		},
	})

	var sup guestFlags
	var supDir, supGDB string
	register(&command{
		name:    "supervise",
		args:    "NAME",
		summary: "(internal) the background process that owns one VM",
		hidden:  true,
		setup: func(fs *flag.FlagSet) {
			sup.register(fs)
			fs.StringVar(&supDir, "dir", "", "VM directory")
			fs.StringVar(&supGDB, "gdb", "", "gdbstub address")
		},
		run: func(ctx context.Context, fs *flag.FlagSet, args []string) error {
			repo, err := repoRoot()
			if err != nil {
				return err
			}
			o := sup.options(repo, args[0])
			o.Dir, o.GDB, o.NoBuild = supDir, supGDB, true
			return lab.Supervise(context.Background(), o)
		},
	})

	register(&command{
		name:    "ls",
		summary: "list guests and their status",
		run: func(ctx context.Context, fs *flag.FlagSet, args []string) error {
			names, err := lab.List()
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSTATUS\tKERNEL\tVARIANT\tACCEL\tUP\tDIR")
			for _, n := range names {
				dir, _ := lab.VMDir(n)
				st, err := lab.ReadState(dir)
				if err != nil {
					fmt.Fprintf(tw, "%s\tunknown\t-\t-\t-\t-\t%s\n", n, dir)
					continue
				}
				status := st.Status
				if !st.Alive() && (status == lab.StatusRunning || status == lab.StatusBooting) {
					status = "dead"
				}
				upFor := "-"
				if st.Alive() {
					upFor = time.Since(st.Started).Round(time.Second).String()
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", n, status, dash(st.Kernel), dash(st.KernelVariant), dash(st.Accel), upFor, dir)
			}
			return tw.Flush()
		},
	})

	register(&command{
		name:    "down",
		args:    "NAME...",
		summary: "power a guest off (ACPI, then kill) and remove its directory",
		run: func(ctx context.Context, fs *flag.FlagSet, args []string) error {
			if len(args) == 0 {
				fs.Usage()
				return errors.New("name the VM(s) to stop")
			}
			for _, n := range args {
				if err := cmdDown(n); err != nil {
					return err
				}
			}
			return nil
		},
	})

	register(&command{
		name:    "run",
		args:    "NAME -- CMD [ARGS...]",
		summary: "run a command in a guest; its exit status becomes labctl's",
		run: func(ctx context.Context, fs *flag.FlagSet, args []string) error {
			if len(args) < 2 {
				fs.Usage()
				return errors.New("need a VM name and a command")
			}
			c, err := connect(ctx, args[0])
			if err != nil {
				return err
			}
			defer c.Close()
			opts := channel.RunOptions{Stdout: os.Stdout, Stderr: os.Stderr}
			if !term.IsTerminal(int(os.Stdin.Fd())) {
				opts.Stdin = os.Stdin
			}
			code, err := c.Run(ctx, remoteCommand(args[1:]), opts)
			if err != nil {
				if ctx.Err() != nil {
					return err // interrupted: the remote command was killed
				}
				return explainVM(args[0], err)
			}
			if code != 0 {
				return exitError{code}
			}
			return nil
		},
	})

	var sh guestFlags
	register(&command{
		name:    "shell",
		args:    "[NAME]",
		summary: "interactive shell in a guest; without NAME, boot a throwaway guest and remove it on exit",
		setup:   func(fs *flag.FlagSet) { sh.register(fs) },
		run: func(ctx context.Context, fs *flag.FlagSet, args []string) error {
			var code int
			if len(args) >= 1 {
				c, err := connect(ctx, args[0])
				if err != nil {
					return err
				}
				defer c.Close()
				code, err = c.Shell(ctx, os.Stdin, os.Stdout, remoteCommand(args[1:]))
				if err != nil {
					return err
				}
			} else {
				repo, err := repoRoot()
				if err != nil {
					return err
				}
				o := sh.options(repo, "throwaway")
				m, err := lab.Boot(ctx, o)
				if err != nil {
					return err
				}
				defer m.Close()
				c, err := m.Client(ctx)
				if err != nil {
					return err
				}
				// ctx ends on SIGTERM/SIGHUP (^C goes to the guest in raw
				// mode); the deferred Close then removes the guest.
				code, err = c.Shell(ctx, os.Stdin, os.Stdout, "")
				if err != nil {
					return err
				}
				if reps := m.Reports(); len(reps) > 0 {
					fmt.Fprintf(os.Stderr, "labctl: the kernel reported %d problem(s) during the session:\n", len(reps))
					for _, r := range reps {
						fmt.Fprintf(os.Stderr, "  %s\n", vm.Headline(string(r.Type), r.Title))
					}
				}
			}
			if code != 0 {
				return exitError{code}
			}
			return nil
		},
	})

	register(&command{
		name:    "cp",
		args:    "SRC DST",
		summary: "copy files or directories to or from a guest; write the guest side as NAME:PATH",
		run: func(ctx context.Context, fs *flag.FlagSet, args []string) error {
			if len(args) != 2 {
				fs.Usage()
				return errors.New("need SRC and DST")
			}
			sn, sp, sRemote := splitRemote(args[0])
			dn, dp, dRemote := splitRemote(args[1])
			switch {
			case sRemote && !dRemote:
				c, err := connect(ctx, sn)
				if err != nil {
					return err
				}
				defer c.Close()
				st, err := os.Stat(dp)
				dp = copyTarget(dp, err == nil && st.IsDir(), sp)
				if err := c.Download(ctx, sp, dp); err != nil {
					return explainVM(sn, err)
				}
				return nil
			case dRemote && !sRemote:
				c, err := connect(ctx, dn)
				if err != nil {
					return err
				}
				defer c.Close()
				// Is the guest path a directory? Ask the guest's shell.
				isDir := false
				if !strings.HasSuffix(dp, "/") {
					code, err := c.Run(ctx, "test -d "+shellQuote(dp), channel.RunOptions{})
					if err != nil {
						return explainVM(dn, err)
					}
					isDir = code == 0
				}
				if err := c.Upload(ctx, sp, copyTarget(dp, isDir, sp)); err != nil {
					return explainVM(dn, err)
				}
				return nil
			default:
				return usageError{errors.New("exactly one of SRC and DST must be NAME:PATH")}
			}
		},
	})

	var follow, reportsOnly bool
	register(&command{
		name:    "logs",
		args:    "NAME",
		summary: "print a guest's console and the kernel reports found in it",
		setup: func(fs *flag.FlagSet) {
			fs.BoolVar(&follow, "f", false, "keep following the console while the guest runs")
			fs.BoolVar(&reportsOnly, "reports", false, "print only the kernel reports")
		},
		run: func(ctx context.Context, fs *flag.FlagSet, args []string) error {
			if len(args) != 1 {
				fs.Usage()
				return errors.New("need a VM name")
			}
			dir, err := lab.VMDir(args[0])
			if err != nil {
				return err
			}
			path := filepath.Join(dir, "console.log")
			data, err := os.ReadFile(path)
			if err != nil {
				return fmt.Errorf("no console log for %q (%v): is it a VM from `labctl ls`?", args[0], err)
			}
			if !reportsOnly {
				os.Stdout.Write(data)
			}
			if follow {
				return followFile(ctx, path, int64(len(data)), dir)
			}
			reps := report.Parse(data)
			fmt.Printf("\n=== %d kernel report(s) in %s\n", len(reps), path)
			for i, r := range reps {
				fmt.Printf("--- report %d: %s%s\n%s\n", i+1, vm.Headline(string(r.Type), r.Title), map[bool]string{true: " (truncated)"}[r.Truncated], strings.TrimRight(r.Text, "\n"))
			}
			return nil
		},
	})

	register(&command{
		name:    "ssh-config",
		args:    "NAME",
		summary: "print an OpenSSH config block for a guest (append it to ~/.ssh/config, then `ssh ldtlab-NAME`)",
		run: func(ctx context.Context, fs *flag.FlagSet, args []string) error {
			if len(args) != 1 {
				fs.Usage()
				return errors.New("need a VM name")
			}
			if _, _, err := lab.Socket(args[0]); err != nil {
				return err
			}
			dir, _ := lab.VMDir(args[0])
			keys, err := channel.LoadKeys(filepath.Join(dir, "keys"))
			if err != nil {
				return err
			}
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			fmt.Print(sshConfig(args[0], exe, keys))
			return nil
		},
	})

	register(&command{
		name:    "proxy",
		args:    "NAME",
		summary: "connect stdin/stdout to a guest's SSH server (an OpenSSH ProxyCommand)",
		run: func(ctx context.Context, fs *flag.FlagSet, args []string) error {
			if len(args) != 1 {
				fs.Usage()
				return errors.New("need a VM name")
			}
			sock, _, err := lab.Socket(args[0])
			if err != nil {
				return err
			}
			conn, err := net.Dial("unix", sock)
			if err != nil {
				return err
			}
			defer conn.Close()
			done := make(chan struct{}, 2)
			go func() { io.Copy(conn, os.Stdin); conn.(*net.UnixConn).CloseWrite(); done <- struct{}{} }()
			go func() { io.Copy(os.Stdout, conn); done <- struct{}{} }()
			select {
			case <-done:
			case <-ctx.Done():
			}
			return nil
		},
	})
}

// explainVM says what happened to the VM when a command against it
// failed: a guest that died or crashed is the news, not the broken
// connection ("remote command exited without exit status").
func explainVM(name string, err error) error {
	dir, derr := lab.VMDir(name)
	if derr != nil {
		return err
	}
	for i := 0; i < 60; i++ { // the supervisor records the death shortly
		st, serr := lab.ReadState(dir)
		if serr != nil {
			break
		}
		if st.Status == lab.StatusFailed || st.Status == lab.StatusStopped {
			e := fmt.Errorf("VM %s went away during the command: %s\n(%v; `labctl logs %s` shows the console, `labctl down %s` removes it)", name, dash(st.Error), err, name, name)
			if st.ErrorKind == "lab" {
				return &vm.InfraError{Op: "running a command in " + name, Err: e}
			}
			return e
		}
		if !st.Alive() {
			return &vm.InfraError{Op: "running a command in " + name, Err: fmt.Errorf("the supervisor of VM %s (pid %d) died during the command (%v%s); `labctl down %s` stops what is left", name, st.SupervisorPID, err, lab.DiskHint(dir), name)}
		}
		if st.DiskError != "" {
			return &vm.InfraError{Op: "running a command in " + name, Err: fmt.Errorf("%v: the host disk failed: %s", err, st.DiskError)}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return err
}

// copyTarget is where `labctl cp SRC DST` writes: into DST when DST is
// a directory (or written with a trailing slash), as cp and scp do.
func copyTarget(dst string, dstIsDir bool, src string) string {
	if !dstIsDir && !strings.HasSuffix(dst, "/") {
		return dst
	}
	base := path.Base(strings.TrimRight(src, "/"))
	if base == "/" || base == "." || base == "" {
		return dst
	}
	return path.Join(dst, base)
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// usageError: the command line makes no sense (exit status 2).
type usageError struct{ error }

func (u usageError) Unwrap() error { return u.error }

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// remoteCommand joins argv for the guest shell. A single argument is a
// shell snippet as typed; several are quoted word by word.
func remoteCommand(args []string) string {
	if len(args) == 1 {
		return args[0]
	}
	q := make([]string, len(args))
	for i, a := range args {
		if a != "" && !strings.ContainsAny(a, " \t\n'\"\\$`;&|<>()*?[]{}!#~") {
			q[i] = a
		} else {
			q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(q, " ")
}

func splitRemote(s string) (name, path string, remote bool) {
	if i := strings.IndexByte(s, ':'); i > 0 && !strings.Contains(s[:i], "/") {
		return s[:i], s[i+1:], true
	}
	return "", s, false
}

// connect dials a running VM's ssh.sock with its per-VM keys.
func connect(ctx context.Context, name string) (*channel.Client, error) {
	sock, _, err := lab.Socket(name)
	if err != nil {
		return nil, err
	}
	dir, _ := lab.VMDir(name)
	keys, err := channel.LoadKeys(filepath.Join(dir, "keys"))
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := d.DialContext(dctx, "unix", sock)
	if err != nil {
		return nil, &vm.InfraError{Op: "connecting to " + sock, Err: err}
	}
	c, err := channel.Dial(dctx, conn, keys)
	if err != nil {
		conn.Close()
		return nil, &vm.InfraError{Op: "ssh handshake with " + name, Err: err}
	}
	return c, nil
}

func cmdUp(ctx context.Context, g *guestFlags, gdb bool, name string) error {
	dir, err := lab.VMDir(name)
	if err != nil {
		return err
	}
	if err := g.validate(); err != nil {
		return usageError{err}
	}
	// Creating a VM is atomic: whoever holds this lock boots it, anyone
	// else is told it is already booting. It is held until the guest is
	// up or has failed.
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return &vm.InfraError{Op: "creating the state directory", Err: cache.Explain(filepath.Dir(dir), err)}
	}
	unlock, err := cache.TryLock(filepath.Join(filepath.Dir(dir), "."+name+".lock"))
	if errors.Is(err, cache.ErrLocked) {
		return fmt.Errorf("VM %q is already booting: another `labctl up %s` is starting it", name, name)
	}
	if err != nil {
		return &vm.InfraError{Op: "locking VM " + name, Err: err}
	}
	defer unlock()
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
		os.RemoveAll(dir) // leftovers of a dead VM
	}
	repo, err := repoRoot()
	if err != nil {
		return err
	}
	o := g.options(repo, name)
	// Build in the foreground, where progress and errors are visible.
	if _, _, err := lab.Prepare(ctx, o); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("VM %q already exists (stop it with `labctl down %s`)", name, name)
		}
		return &vm.InfraError{Op: "creating the VM directory", Err: cache.Explain(dir, err)}
	}
	args := []string{"supervise", "-dir", dir, "-config", g.config, "-accel", g.accel,
		"-mem", fmt.Sprint(g.mem), "-cpus", fmt.Sprint(g.cpus), "-swap", fmt.Sprint(g.swap), "-cmdline", g.cmdline,
		"-backend", g.backend, "-connect", g.connect}
	if g.vanilla {
		args = append(args, "-vanilla")
	}
	if g.redis {
		args = append(args, "-redis")
	}
	gdbAddr := ""
	if gdb {
		port, err := freePort()
		if err != nil {
			return err
		}
		gdbAddr = fmt.Sprintf("tcp:127.0.0.1:%d", port)
		args = append(args, "-gdb", gdbAddr)
	}
	args = append(args, name)
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(dir, "supervisor.log"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return &vm.InfraError{Op: "creating the supervisor log", Err: cache.Explain(filepath.Join(dir, "supervisor.log"), err)}
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
				fmt.Printf("  labctl run %s -- uname -r\n  labctl shell %s\n  labctl down %s\n", name, name, name)
				if gdbAddr != "" {
					fmt.Printf("  gdb %s -ex 'target remote %s'\n", st.Vmlinux, strings.TrimPrefix(gdbAddr, "tcp:"))
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

func cmdDown(name string) error {
	dir, err := lab.VMDir(name)
	if err != nil {
		return err
	}
	// Stop what really runs for this VM, whatever state.json says (it may
	// be stale, or belong to a racing `up`).
	procs := lab.Processes(name, dir)
	if _, serr := os.Stat(dir); serr != nil && len(procs) == 0 {
		return fmt.Errorf("no VM named %q (see `labctl ls`)", name)
	}
	if len(procs) > 0 {
		// The supervisor powers the guest off (ACPI) within its scaled
		// shutdown timeout; anything left after that is killed.
		lab.Stop(procs, 60*time.Second)
	}
	if left := lab.Processes(name, dir); len(left) > 0 {
		return &vm.InfraError{Op: "stopping " + name, Err: fmt.Errorf("processes still running after SIGKILL: %v", left)}
	}
	// A libvirt domain outlives a killed supervisor: destroy it too.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := libvirt.DestroyLeftover(ctx, dir); err != nil {
		return &vm.InfraError{Op: "destroying the libvirt domain of " + name, Err: err}
	}
	if err := os.RemoveAll(dir); err != nil {
		return &vm.InfraError{Op: "removing " + dir, Err: err}
	}
	fmt.Printf("%s is down\n", name)
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func followFile(ctx context.Context, path string, off int64, dir string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	f.Seek(off, io.SeekStart)
	buf := make([]byte, 32<<10)
	for {
		n, _ := f.Read(buf)
		if n > 0 {
			os.Stdout.Write(buf[:n])
			continue
		}
		st, err := lab.ReadState(dir)
		if err != nil || !st.Alive() {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
	}
}
