package vm

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// BootError: the guest never became ready, and the cause is on the guest
// side (kernel did not boot, init failed, VM exited). The console tail says
// what the kernel managed to print.
type BootError struct {
	Reason string
	Tail   string
}

func (e *BootError) Error() string {
	return fmt.Sprintf("guest did not boot: %s%s", e.Reason, tailSuffix(e.Tail))
}

// DiedError: a guest that had booted went away without a kernel report:
// its QEMU exited or was killed (Reason says how), or its disk failed.
type DiedError struct {
	Reason string
	Tail   string
}

func (e *DiedError) Error() string {
	return fmt.Sprintf("the guest died: %s%s", e.Reason, tailSuffix(e.Tail))
}

// CrashError: the kernel reported a failure (panic, BUG, WARNING...).
type CrashError struct {
	Title string // normalized report title
	Type  string
	Text  string // the report's span of log
	Tail  string
}

func (e *CrashError) Error() string {
	return fmt.Sprintf("kernel crashed: %s\n--- report ---\n%s", Headline(e.Type, e.Title), strings.TrimRight(e.Text, "\n"))
}

// Headline is a report's one-line summary: the title, prefixed by the
// report type only when the title does not already say it ("kernel
// panic: ...", not "panic: kernel panic: ...").
func Headline(typ, title string) string {
	if typ == "" || strings.Contains(strings.ToLower(title), strings.ToLower(typ)) {
		return title
	}
	return typ + ": " + title
}

// HangError: no progress within a scaled timeout. The VM was killed.
type HangError struct {
	Phase string // "boot", "command", "ping"
	After time.Duration
	Tail  string
}

func (e *HangError) Error() string {
	return fmt.Sprintf("guest hung: no progress during %s within %s (timeouts scale with the accelerator)%s", e.Phase, e.After.Round(time.Millisecond), tailSuffix(e.Tail))
}

// InfraError: the lab itself failed (QEMU missing, socket, build, I/O).
type InfraError struct {
	Op  string
	Err error
}

func (e *InfraError) Error() string { return fmt.Sprintf("lab failure while %s: %v", e.Op, e.Err) }
func (e *InfraError) Unwrap() error { return e.Err }

func tailSuffix(t string) string {
	if strings.TrimSpace(t) == "" {
		return "\n--- console: (no output) ---"
	}
	return "\n--- console tail ---\n" + strings.TrimRight(t, "\n")
}

// IsGuestFault tells kernel-side failures (the guest did not boot,
// crashed, hung or died) from lab failures and usage errors.
func IsGuestFault(err error) bool {
	var be *BootError
	var ce *CrashError
	var he *HangError
	var de *DiedError
	return errors.As(err, &be) || errors.As(err, &ce) || errors.As(err, &he) || errors.As(err, &de)
}
