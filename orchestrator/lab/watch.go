package lab

// Watching the guest: backend events, the console's kernel reports, and
// the classification of a failure into vm's typed errors (boot, crash,
// hang, death, the lab's own).

import (
	"context"
	"errors"
	"strings"
	"time"

	"ldtlab/orchestrator/report"
	"ldtlab/orchestrator/vm"
)

// watch turns backend events into machine state; the console ends with
// the instance.
func (m *Machine) watch() {
	defer m.con.Close()
	for ev := range m.inst.Events() {
		switch ev.Kind {
		case vm.EventPanic:
			m.once.Do(func() { close(m.panic) })
		case vm.EventExit:
			m.mu.Lock()
			m.exit = ev.Detail
			m.mu.Unlock()
		case vm.EventIOError:
			m.mu.Lock()
			if m.diskErr == "" {
				m.diskErr = ev.Detail
				close(m.diskErrC)
			}
			m.mu.Unlock()
		}
	}
}

// DiskError is the first host I/O error on one of the guest's disks (for
// example "no space left on /state/vms/x/swap.img (guest write failed)"),
// or "".
func (m *Machine) DiskError() string {
	m.mu.Lock()
	d := m.diskErr
	m.mu.Unlock()
	if con := m.con; d == "" && con != nil {
		// The console capture on a full host disk: reports are still
		// detected (from memory), but say where the log stops.
		if err := con.Err(); err != nil {
			return err.Error()
		}
	}
	return d
}

// DiskFailed is closed on the first host I/O error on a disk.
func (m *Machine) DiskFailed() <-chan struct{} { return m.diskErrC }

// ExitReason says how QEMU exited ("" while it runs).
func (m *Machine) ExitReason() string {
	select {
	case <-m.inst.Done():
	default:
		return ""
	}
	// The exit event may trail Done by a moment.
	for i := 0; i < 20; i++ {
		m.mu.Lock()
		e := m.exit
		m.mu.Unlock()
		if e != "" {
			return e
		}
		time.Sleep(5 * time.Millisecond)
	}
	return "exited"
}

// died describes QEMU's unexpected exit: how it ended, what it said, and
// a disk error if one came first.
func (m *Machine) died() string {
	why := "QEMU " + m.ExitReason()
	if why == "QEMU signal: killed" {
		why = "QEMU was killed (SIGKILL)"
	} else if strings.HasPrefix(why, "QEMU signal: ") {
		why = "QEMU was stopped by " + strings.TrimPrefix(why, "QEMU signal: ")
	}
	if s := strings.TrimSpace(vm.Stderr(m.inst)); s != "" {
		why += ": " + s
	}
	if d := m.DiskError(); d != "" {
		why += "; earlier the host disk failed: " + d
	}
	return why
}

// guestFailure returns a typed error if the guest panicked, exited or
// printed a fatal report; nil if it looks alive.
func (m *Machine) guestFailure() error {
	select {
	case <-m.panic:
		return m.crashError()
	default:
	}
	select {
	case <-m.inst.Done():
		if r := m.fatalReport(); r != nil {
			return crash(*r, m.Tail(40))
		}
		m.mu.Lock()
		ready := m.ready
		m.mu.Unlock()
		if ready {
			return &vm.DiedError{Reason: m.died(), Tail: m.Tail(40)}
		}
		if m.con.Lines() == 0 && len(m.con.Tail(1)) == 0 && strings.TrimSpace(vm.Stderr(m.inst)) != "" {
			// QEMU gave up before the guest printed a byte, saying why
			// ("cannot set up guest memory"): the lab's failure.
			return &vm.InfraError{Op: "starting QEMU", Err: errors.New(m.died())}
		}
		return &vm.BootError{Reason: m.died(), Tail: m.Tail(40)}
	default:
	}
	return nil
}

// crashError waits briefly for the rest of a panic report, then returns it.
func (m *Machine) crashError() error {
	m.settle(m.Timeouts.Crash * 3)
	if r := m.fatalReport(); r != nil {
		return crash(*r, m.Tail(40))
	}
	return &vm.CrashError{Type: "panic", Title: "guest panicked (pvpanic) without a parsable report", Tail: m.Tail(40)}
}

// CrashError describes the panic after Panicked fired.
func (m *Machine) CrashError() error { return m.crashError() }

// Panicked is closed when the guest kernel reported a panic (pvpanic).
func (m *Machine) Panicked() <-chan struct{} { return m.panic }

// Done is closed when the VM has exited.
func (m *Machine) Done() <-chan struct{} { return m.inst.Done() }

// settle waits up to max for a report still being printed to finish,
// then takes it as it is.
func (m *Machine) settle(max time.Duration) {
	deadline := time.After(max)
	for m.stream.Pending() {
		select {
		case <-deadline:
			m.stream.Flush()
			return
		case <-m.stream.Done():
			return
		case <-m.stream.Changed():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func crash(r report.Report, tail string) *vm.CrashError {
	return &vm.CrashError{Type: string(r.Type), Title: r.Title, Text: r.Text, Tail: tail}
}

// fatalReport is the last panic-like report in the console, if any.
func (m *Machine) fatalReport() *report.Report {
	reps := m.Reports()
	for i := len(reps) - 1; i >= 0; i-- {
		if reps[i].Type == "panic" || strings.Contains(reps[i].Text, "Kernel panic - not syncing") {
			return &reps[i]
		}
	}
	if len(reps) > 0 {
		return &reps[len(reps)-1]
	}
	return nil
}

// Reports are the kernel reports found so far (a report still being
// printed is not among them yet).
func (m *Machine) Reports() []report.Report {
	return m.stream.All()
}

// ReportMark marks the console position: ReportsSince(mark) returns the
// kernel reports that began after it.
func (m *Machine) ReportMark() int {
	return m.stream.Offset()
}

// ReportsSince returns the reports that began after mark, waiting (up to
// a few crash timeouts) for one still being printed, so that a report is
// never cut where a cell ends.
func (m *Machine) ReportsSince(ctx context.Context, mark int) []report.Report {
	m.settle(m.Timeouts.Crash * 5)
	return m.stream.Since(mark)
}

// ConsoleLog is the console captured so far.
func (m *Machine) ConsoleLog() []byte { return m.con.Bytes() }

// ConsolePath is the console capture file.
func (m *Machine) ConsolePath() string { return m.con.Path() }

// Tail is the last n console lines.
func (m *Machine) Tail(n int) string { return m.con.Tail(n) }
