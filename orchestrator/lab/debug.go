package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"ldtlab/internal/shquote"
	"ldtlab/orchestrator/qmp"
	"ldtlab/orchestrator/vm"
)

// GDBCommand is the gdb command line for a kernel: vmlinux, the kernel's
// gdb scripts (lx-dmesg, lx-ps…) when the build kept them (scripts is its
// vmlinux-gdb.py, which gdb loads itself once its directory is a safe
// auto-load path), then either "target remote SOCKET" (a live guest's
// gdbstub) or a vmcore.
func GDBCommand(vmlinux, scripts, gdbSocket, core string) string {
	a := []string{"gdb", "-q"}
	if scripts != "" {
		a = append(a, "-iex", "add-auto-load-safe-path "+filepath.Dir(scripts))
	}
	a = append(a, vmlinux)
	if core != "" {
		a = append(a, core)
	}
	if gdbSocket != "" {
		a = append(a, "-ex", "target remote "+gdbSocket)
	}
	return shquote.Join(a)
}

// GDBCommand is the gdb command line that attaches to this VM's gdbstub,
// "" when it has none.
func (s *State) GDBCommand() string {
	if s.GDB == "" {
		return ""
	}
	return GDBCommand(s.Vmlinux, s.GDBScripts, s.GDB, "")
}

// holdPanicked keeps a panicked guest for gdb (`up --gdb`): its CPUs are
// paused where the panic left them and QEMU lives on, recorded as held,
// until `labctl down` (ctx) or QEMU's end. The caller then stops it as it
// stops every failed guest.
func (m *Machine) holdPanicked(ctx context.Context, o Options, st *State) {
	pctx, cancel := context.WithTimeout(ctx, m.Timeouts.QMP)
	err := m.inst.Pause(pctx)
	cancel()
	if err != nil {
		// Not paused: the guest spins in panic(), which is still worth
		// attaching to; say so rather than pretend.
		fmt.Fprintf(os.Stderr, "[lab] %s: pausing the panicked guest failed (%v); held running\n", o.Name, err)
	}
	st.Held, st.HeldPaused = true, err == nil
	if werr := writeState(o.Dir, st); werr != nil {
		fmt.Fprintf(os.Stderr, "[lab] %s: cannot record the hold: %v; stopping it\n", o.Name, werr)
		st.Held, st.HeldPaused = false, false
		return
	}
	fmt.Fprintf(os.Stderr, "[lab] %s panicked: held for gdb (`labctl down %s` ends it):\n  %s\n", o.Name, o.Name, st.GDBCommand())
	select {
	case <-ctx.Done():
	case <-m.Done():
	}
	st.Held, st.HeldPaused = false, false
}

// DumpOptions tune Dump.
type DumpOptions struct {
	// Physical writes physical memory only (no virtual addresses: gdb
	// cannot read kernel variables from it; crash can); otherwise QEMU
	// walks the guest's page tables (dump-guest-memory paging) and
	// the ELF's segments carry the kernel's virtual addresses.
	Physical bool
	// Progress, if set, is called about every Interval with the bytes
	// of guest memory written so far and in all.
	Progress func(done, total int64)
	Interval time.Duration
}

// dumpFD is the name the dump's file descriptor has in QEMU.
const dumpFD = "ldtlab-dump"

// Dump writes the memory of the guest in VM directory dir to path as an
// ELF core file (QMP dump-guest-memory), readable by gdb and crash. The
// file appears only when complete: QEMU writes into an unnamed file this
// process created (O_TMPFILE, 0600: guest memory holds the guest's
// secrets), which gets its name at the end. An interrupted or failed
// dump leaves nothing (QEMU, which cannot be told to stop, finishes
// writing into the unnamed file, which then vanishes). The guest is
// stopped while QEMU dumps, and resumes after unless it was paused.
// It returns the file's size.
func Dump(ctx context.Context, dir, path string, o DumpOptions) (int64, error) {
	sock := vm.MonitorSocket(dir)
	if _, err := os.Stat(sock); err != nil {
		return 0, fmt.Errorf("this VM has no monitor socket for labctl (%s): dumps need --backend qemu and a VM started by this labctl", sock)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return 0, err
	}
	if fi, err := os.Stat(abs); err == nil && fi.IsDir() {
		return 0, fmt.Errorf("%s is a directory: name the vmcore file", path)
	}
	f, named, err := createUnnamed(filepath.Dir(abs))
	if err != nil {
		return 0, fmt.Errorf("creating the vmcore in %s: %w", filepath.Dir(abs), err)
	}
	defer f.Close()
	if named != "" {
		defer os.Remove(named) // renamed away on success
	}
	c, err := qmp.DialConn(ctx, sock)
	if err != nil {
		return 0, fmt.Errorf("connecting to the VM's monitor: %w", err)
	}
	defer c.Close()
	if err := c.SendFD(ctx, dumpFD, f); err != nil {
		return 0, fmt.Errorf("handing QEMU the vmcore file: %w", err)
	}
	args := map[string]any{"paging": !o.Physical, "protocol": "fd:" + dumpFD, "detach": true, "format": "elf"}
	// QEMU answers once it has stopped the guest and, with paging, walked
	// its page tables (seconds under TCG); the copy itself is detached.
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	_, err = c.Execute(sctx, "dump-guest-memory", args)
	cancel()
	if err != nil {
		c.Execute(context.Background(), "closefd", map[string]string{"fdname": dumpFD})
		if ctx.Err() != nil {
			return 0, fmt.Errorf("dump interrupted while starting (%w): no file written", ctx.Err())
		}
		return 0, fmt.Errorf("starting the dump: %w", busyDump(err))
	}
	every := o.Interval
	if every <= 0 {
		every = time.Second
	}
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("dump interrupted (%w): no file written", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
		raw, err := c.Execute(ctx, "query-dump", nil)
		if err != nil {
			if ctx.Err() != nil {
				return 0, fmt.Errorf("dump interrupted (%w): no file written", ctx.Err())
			}
			return 0, fmt.Errorf("following the dump: %w", busyDump(err))
		}
		var q struct {
			Status    string `json:"status"`
			Completed int64  `json:"completed"`
			Total     int64  `json:"total"`
		}
		if err := json.Unmarshal(raw, &q); err != nil {
			return 0, fmt.Errorf("following the dump: %w", err)
		}
		done := q.Status == "completed"
		if o.Progress != nil && (done || time.Since(last) >= every) {
			o.Progress(q.Completed, q.Total)
			last = time.Now()
		}
		switch q.Status {
		case "completed":
		case "failed":
			return 0, errors.New("QEMU's dump failed (its log may say why: supervisor.log); no file written")
		case "active":
			continue
		default:
			return 0, fmt.Errorf("QEMU says the dump is %q", q.Status)
		}
		break
	}
	if err := f.Sync(); err != nil {
		return 0, fmt.Errorf("writing the vmcore: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if err := publish(f, named, abs); err != nil {
		return 0, fmt.Errorf("naming the vmcore %s: %w", path, err)
	}
	return fi.Size(), nil
}

// createUnnamed creates a private file in dir that has no name yet
// (O_TMPFILE). Where the file system cannot, it falls back to a hidden
// named file, returned in named for removal on failure.
func createUnnamed(dir string) (*os.File, string, error) {
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err == nil {
		return os.NewFile(uintptr(fd), filepath.Join(dir, "(vmcore being written)")), "", nil
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EINVAL) {
		return nil, "", err
	}
	f, err := os.CreateTemp(dir, ".vmcore-partial-*")
	if err != nil {
		return nil, "", err
	}
	return f, f.Name(), nil
}

// publish gives the finished file its name, atomically: a file of that
// name is replaced whole or not at all.
func publish(f *os.File, named, dst string) error {
	if named == "" {
		// Link the unnamed file under a temporary name, then rename it
		// over dst (linkat cannot replace).
		named = dst + ".tmp-" + strconv.Itoa(os.Getpid())
		os.Remove(named)
		if err := unix.Linkat(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(int(f.Fd())), unix.AT_FDCWD, named, unix.AT_SYMLINK_FOLLOW); err != nil {
			return err
		}
	}
	if err := os.Rename(named, dst); err != nil {
		os.Remove(named)
		return err
	}
	if d, err := os.Open(filepath.Dir(dst)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// busyDump explains QEMU's refusal while another dump runs (an
// interrupted one goes on in the background).
func busyDump(err error) error {
	var qe *qmp.Error
	if errors.As(err, &qe) && strings.Contains(qe.Desc, "dump in process") {
		return fmt.Errorf("%w (QEMU is still writing an earlier dump, perhaps an interrupted one: try again when it is done)", err)
	}
	return err
}
