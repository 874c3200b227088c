package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"time"

	"ldtlab/internal/fileutil"
	"ldtlab/internal/secfs"
	"ldtlab/orchestrator/vm"
)

// StateDir is where per-VM directories live: $LDTLAB_STATE, else
// $XDG_STATE_HOME/ldtlab, else ~/.local/state/ldtlab, where ~ is $HOME
// or, when HOME is unset, the home the passwd database gives the user;
// never a shared directory such as /tmp.
func StateDir() (string, error) {
	if d := os.Getenv("LDTLAB_STATE"); d != "" {
		return d, nil
	}
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "ldtlab"), nil
	}
	home, err := secfs.Home()
	if err != nil {
		return "", fmt.Errorf("cannot tell where the lab's state goes: %v; set LDTLAB_STATE (or XDG_STATE_HOME) to a directory of yours", err)
	}
	return filepath.Join(home, ".local", "state", "ldtlab"), nil
}

// MkdirState creates dir, the state directory or one below it, and
// checks that it and what was created for it are this user's and
// writable by nobody else, and that nobody else can swap the directories
// above it (see secfs.MkdirPrivate).
func MkdirState(dir string, perm os.FileMode) error {
	if err := secfs.MkdirPrivate(dir, perm); err != nil {
		return fmt.Errorf("state directory: %w; set LDTLAB_STATE (or XDG_STATE_HOME) to a directory of yours that only you can write", err)
	}
	return nil
}

// EnsureStateDir is StateDir, created and checked (MkdirState).
func EnsureStateDir() (string, error) {
	d, err := StateDir()
	if err != nil {
		return "", err
	}
	return d, MkdirState(d, 0o755)
}

var validName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,31}$`)

// NameError: a VM name the lab does not accept (a usage error).
type NameError struct{ Name string }

func (e *NameError) Error() string {
	return fmt.Sprintf("invalid VM name %q: use 1-32 letters, digits, '.', '_' or '-'", e.Name)
}

// NoVMError: no VM of that name exists (a usage error, not a failed guest).
type NoVMError struct{ Name string }

func (e *NoVMError) Error() string {
	return fmt.Sprintf("no VM named %q: start it with `labctl up %s` (see `labctl ls`)", e.Name, e.Name)
}

// VMDir returns the directory of a named VM, checking the name.
func VMDir(name string) (string, error) {
	if !validName.MatchString(name) {
		return "", &NameError{Name: name}
	}
	state, err := StateDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(state, "vms", name), nil
}

// Status values of a VM's state file.
const (
	StatusBooting = "booting"
	StatusRunning = "running"
	StatusFailed  = "failed"
	StatusStopped = "stopped"
)

// State is state.json in a VM directory, written by the supervisor.
type State struct {
	Name   string `json:"name"`
	Status string `json:"status"`
	Error  string `json:"error,omitempty"`
	// ErrorKind is "guest" when the guest or its kernel failed, "lab"
	// when the lab did (labctl's exit status 1 or 3).
	ErrorKind     string    `json:"error_kind,omitempty"`
	DiskError     string    `json:"disk_error,omitempty"`
	SupervisorPID int       `json:"supervisor_pid"`
	QEMUPID       int       `json:"qemu_pid,omitempty"`
	Kernel        string    `json:"kernel,omitempty"` // release
	KernelVariant string    `json:"kernel_variant,omitempty"`
	Vmlinux       string    `json:"vmlinux,omitempty"`
	Accel         string    `json:"accel,omitempty"`
	GDB           string    `json:"gdb,omitempty"` // the gdbstub's unix socket
	Started       time.Time `json:"started"`
	BootSeconds   float64   `json:"boot_seconds,omitempty"`
	Shares        []string  `json:"shares,omitempty"` // Share.Describe of each
	// GDBScripts is the kernel's vmlinux-gdb.py (--debuginfo builds).
	GDBScripts string `json:"gdb_scripts,omitempty"`
	// Monitor is QEMU's monitor socket for labctl (dump); qemu backend.
	Monitor string `json:"monitor,omitempty"`
	// Held: the guest panicked and is kept for gdb (`up --gdb`), its
	// CPUs paused (HeldPaused) where the panic left them.
	Held       bool `json:"held,omitempty"`
	HeldPaused bool `json:"held_paused,omitempty"`
}

// ReadState reads a VM's state.
func ReadState(dir string) (*State, error) {
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		return nil, err
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("corrupt %s: %w", filepath.Join(dir, "state.json"), err)
	}
	return &s, nil
}

func writeState(dir string, s *State) error {
	return fileutil.WriteJSON(filepath.Join(dir, "state.json"), s)
}

// Alive reports whether the VM's supervisor still runs.
func (s *State) Alive() bool {
	if s.SupervisorPID <= 0 {
		return false
	}
	if err := syscall.Kill(s.SupervisorPID, 0); err != nil {
		return false
	}
	// Guard against pid reuse: the process must be one of ours.
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", s.SupervisorPID))
	if err != nil {
		return false
	}
	args := strings.Split(string(cmdline), "\x00")
	if !strings.Contains(filepath.Base(args[0]), "labctl") {
		return false
	}
	for _, a := range args[1:] {
		if a == "supervise" {
			return true
		}
	}
	return false
}

// List returns the names of all VM directories.
func List() ([]string, error) {
	state, err := StateDir()
	if err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(filepath.Join(state, "vms"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return names, nil
}

// Supervise boots the VM described by o in its state directory and keeps
// it running until SIGTERM/SIGINT or the guest exits. It serves ssh.sock
// for `labctl run/shell/cp/proxy` and OpenSSH. Everything it created is
// removed when it returns, except the console log and state.json.
//
// Every state write is checked: a supervisor that cannot record what
// happens (a full disk) says so in supervisor.log and stops its VM rather
// than leave a state file that lies.
func Supervise(ctx context.Context, o Options) error {
	o.defaults()
	// One supervisor per directory, whatever raced to start it.
	unlock, err := fileutil.TryLock(filepath.Join(o.Dir, "supervisor.lock"))
	if err != nil {
		return fmt.Errorf("VM %q already has a supervisor: %w", o.Name, err)
	}
	defer unlock()
	st := &State{Name: o.Name, Status: StatusBooting, SupervisorPID: os.Getpid(), Started: time.Now().UTC()}
	if o.GDB {
		st.GDB = vm.GDBSocket(o.Dir)
	}
	if err := writeState(o.Dir, st); err != nil {
		return fmt.Errorf("recording the state of %s: %w", o.Name, err)
	}
	fail := func(err error) error {
		st.Status, st.Error, st.ErrorKind = StatusFailed, err.Error(), errorKind(err)
		if werr := writeState(o.Dir, st); werr != nil {
			return fmt.Errorf("%w (and recording that failed: %v)", err, werr)
		}
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer stop()
	m, err := Boot(ctx, o)
	if err != nil {
		return fail(err)
	}
	defer m.Close()
	sock := filepath.Join(o.Dir, "ssh.sock")
	os.Remove(sock)
	l, err := net.Listen("unix", sock)
	if err != nil {
		return fail(&vm.InfraError{Op: "listening on " + sock, Err: err})
	}
	defer os.Remove(sock)
	defer l.Close()
	os.Chmod(sock, 0o600)
	go m.Serve(l)

	st.Status = StatusRunning
	if p, ok := m.Instance().(vm.Process); ok {
		st.QEMUPID = p.Pid()
	}
	st.Kernel = m.Kernel.Meta.KernelRelease
	st.KernelVariant = o.KernelOptions().Variant()
	st.Vmlinux, st.GDBScripts = m.Kernel.Vmlinux, m.Kernel.GDBScripts
	if _, err := os.Stat(vm.MonitorSocket(o.Dir)); err == nil {
		st.Monitor = vm.MonitorSocket(o.Dir)
	}
	st.Accel = string(m.Accel.Kind)
	st.BootSeconds = m.BootTime.Seconds()
	for _, s := range o.Shares {
		st.Shares = append(st.Shares, s.Describe())
	}
	if err := writeState(o.Dir, st); err != nil {
		return fail(&vm.InfraError{Op: "recording that " + o.Name + " is running", Err: err})
	}
	diskFailed := m.DiskFailed()
	for {
		select {
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.Background(), m.Timeouts.Shutdown+m.Timeouts.Grace*2)
			m.Shutdown(sctx)
			cancel()
			st.Status = StatusStopped
		case <-diskFailed:
			// The guest keeps running (it sees an I/O error, not a
			// frozen disk); record why its disk fails.
			diskFailed = nil
			st.DiskError = m.DiskError()
			fmt.Fprintf(os.Stderr, "[lab] %s: host disk error: %s\n", o.Name, st.DiskError)
			if err := writeState(o.Dir, st); err != nil {
				// Likely the same full disk: keep the guest running
				// (commands still work); readers find the disk full.
				fmt.Fprintf(os.Stderr, "[lab] %s: cannot record the disk error: %v\n", o.Name, err)
			}
			continue
		case <-m.Panicked():
			// A panicked guest is of no use: keep its console, stop it;
			// with a gdbstub, first hold it for gdb until `down`.
			st.Status, st.Error, st.ErrorKind = StatusFailed, m.CrashError().Error(), "guest"
			if o.GDB {
				m.holdPanicked(ctx, o, st)
			}
		case <-m.Done():
			// Nobody asked QEMU to stop: it died, or the guest ended.
			st.Status, st.ErrorKind = StatusFailed, "guest"
			st.Error = m.guestFailure().Error()
			if r := m.fatalReport(); r != nil {
				st.Error = "kernel report: " + vm.Headline(string(r.Type), r.Title)
			} else if m.ExitReason() == "exited with status 0" && m.DiskError() == "" {
				st.Status, st.Error, st.ErrorKind = StatusStopped, "the guest powered itself off", ""
			}
		}
		break
	}
	st.QEMUPID = 0
	if err := writeState(o.Dir, st); err != nil {
		return fmt.Errorf("recording the end of %s (%s): %w", o.Name, st.Status, err)
	}
	return nil
}

func errorKind(err error) string {
	if vm.IsGuestFault(err) {
		return "guest"
	}
	return "lab"
}

// Socket is the ssh.sock of a running VM, or an error saying what to do.
func Socket(name string) (string, *State, error) {
	dir, err := VMDir(name)
	if err != nil {
		return "", nil, err
	}
	st, err := ReadState(dir)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil, &NoVMError{Name: name}
	}
	if err != nil {
		return "", nil, err
	}
	if !st.Alive() {
		if st.Status == StatusRunning || st.Status == StatusBooting {
			// state.json says it runs, but its supervisor is gone.
			qemu := "its QEMU is gone too"
			for _, p := range Processes(name, dir) {
				if p.Role == "qemu" {
					qemu = fmt.Sprintf("its QEMU (pid %d) still runs, unsupervised", p.PID)
				}
			}
			return "", st, &vm.InfraError{Op: "reaching VM " + name, Err: fmt.Errorf("its supervisor (pid %d) is no longer running (killed?%s); %s: `labctl down %s` stops what is left and cleans up", st.SupervisorPID, DiskHint(dir), qemu, name)}
		}
		return "", st, fmt.Errorf("VM %q is not running (status %s%s): `labctl logs %s` shows its console, `labctl down %s` cleans it up", name, st.Status, errSuffix(st.Error), name, name)
	}
	if st.Held {
		return "", st, fmt.Errorf("VM %q panicked%s and is held for gdb: `labctl ls` shows the gdb command, `labctl dump %s` saves its memory, `labctl down %s` ends it", name, errSuffix(st.Error), name, name)
	}
	if st.Status != StatusRunning {
		return "", st, fmt.Errorf("VM %q is %s, not running yet", name, st.Status)
	}
	return filepath.Join(dir, "ssh.sock"), st, nil
}

// DiskHint is "; no space left on DIR (...)" when the filesystem holding
// a VM directory is (nearly) full, else "": a supervisor that hit a full
// disk may not have been able to record anything, so readers check.
func DiskHint(dir string) string { return fileutil.SpaceHint(dir, 1<<20) }

func errSuffix(e string) string {
	if e == "" {
		return ""
	}
	if i := strings.IndexByte(e, '\n'); i >= 0 {
		e = e[:i]
	}
	return ": " + e
}
