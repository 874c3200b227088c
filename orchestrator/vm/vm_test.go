package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ldtlab/orchestrator/accel"
)

func TestScaled(t *testing.T) {
	cases := []struct {
		name     string
		kind     accel.Kind
		override string
		scale    float64
	}{
		{"tcg default", accel.TCG, "", 4},
		{"kvm default", accel.KVM, "", 1},
		{"unknown kind is treated as slow", accel.Kind("hvf"), "", 4},
		{"override tcg", accel.TCG, "10", 10},
		{"override kvm", accel.KVM, "2.5", 2.5},
		{"override below one", accel.TCG, "0.5", 0.5},
		{"invalid override ignored", accel.TCG, "fast", 4},
		{"zero override ignored", accel.KVM, "0", 1},
		{"negative override ignored", accel.TCG, "-3", 4},
		{"NaN override ignored", accel.KVM, "NaN", 1},
		{"empty override ignored", accel.KVM, "", 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("LDTLAB_TIMEOUT_SCALE", c.override)
			assert.Equal(t, c.scale, ScaleFor(c.kind))
			got := Scaled(c.kind)
			s := func(d time.Duration) time.Duration { return time.Duration(float64(d) * c.scale) }
			assert.Equal(t, c.scale, got.Scale)
			assert.Equal(t, s(base.Boot), got.Boot)
			assert.Equal(t, s(base.Command), got.Command)
			assert.Equal(t, s(base.QMP), got.QMP)
			assert.Equal(t, s(base.Shutdown), got.Shutdown)
			assert.Equal(t, s(base.Ping), got.Ping)
			assert.Equal(t, s(base.Crash), got.Crash)
			assert.Equal(t, base.Grace, got.Grace, "the kill grace period is host-side and not scaled")
		})
	}
}

func TestScaledValues(t *testing.T) {
	t.Setenv("LDTLAB_TIMEOUT_SCALE", "")
	kvm := Scaled(accel.KVM)
	tcg := Scaled(accel.TCG)
	assert.Equal(t, 20*time.Second, kvm.Boot)
	assert.Equal(t, 80*time.Second, tcg.Boot)
	assert.Equal(t, 4*kvm.Command, tcg.Command)
	for _, to := range []Timeouts{kvm, tcg} {
		assert.Positive(t, to.Boot)
		assert.Positive(t, to.Command)
		assert.Positive(t, to.QMP)
		assert.Positive(t, to.Shutdown)
		assert.Positive(t, to.Grace)
		assert.Positive(t, to.Ping)
		assert.Positive(t, to.Crash)
	}
}

func TestBootError(t *testing.T) {
	e := &BootError{Reason: "VM exited", Tail: "[    0.1] Linux version 6.12\nKernel panic - not syncing: VFS\n"}
	msg := e.Error()
	assert.True(t, strings.HasPrefix(msg, "guest did not boot: VM exited"))
	assert.Contains(t, msg, "--- console tail ---\n[    0.1] Linux version 6.12\nKernel panic - not syncing: VFS")
	assert.False(t, strings.HasSuffix(msg, "\n"), "trailing newlines trimmed")

	for _, tail := range []string{"", "  \n\t\n"} {
		msg := (&BootError{Reason: "timeout", Tail: tail}).Error()
		assert.Contains(t, msg, "(no output)")
		assert.NotContains(t, msg, "console tail")
	}
}

func TestHangError(t *testing.T) {
	e := &HangError{Phase: "boot", After: 80*time.Second + 1234567*time.Nanosecond, Tail: "last line\n"}
	msg := e.Error()
	assert.Contains(t, msg, "during boot")
	assert.Contains(t, msg, "within 1m20.001s", "duration rounded to ms")
	assert.Contains(t, msg, "--- console tail ---\nlast line")
	assert.Contains(t, (&HangError{Phase: "ping", After: time.Second}).Error(), "(no output)")
}

func TestCrashError(t *testing.T) {
	e := &CrashError{Title: "BUG: kernel NULL pointer dereference in foo", Type: "BUG", Text: "BUG: ...\nCall Trace:\n foo+0x1\n\n", Tail: "tail"}
	msg := e.Error()
	assert.Contains(t, msg, "kernel crashed: BUG: kernel NULL pointer dereference in foo\n")
	assert.Contains(t, msg, "--- report ---\nBUG: ...\nCall Trace:\n foo+0x1")
	assert.False(t, strings.HasSuffix(msg, "\n"))
}

// The type is not repeated when the title already says it ("panic:
// kernel panic: ..." read badly).
func TestHeadline(t *testing.T) {
	cases := []struct{ typ, title, want string }{
		{"panic", "kernel panic: Fatal exception", "kernel panic: Fatal exception"},
		{"BUG", "BUG: kernel NULL pointer dereference in foo", "BUG: kernel NULL pointer dereference in foo"},
		{"WARNING", "WARNING in ldt_collect", "WARNING in ldt_collect"},
		{"hung", "INFO: task kworker blocked", "hung: INFO: task kworker blocked"},
		{"", "something", "something"},
	}
	for _, c := range cases {
		assert.Equal(t, c.want, Headline(c.typ, c.title), c.title)
		e := &CrashError{Type: c.typ, Title: c.title}
		assert.True(t, strings.HasPrefix(e.Error(), "kernel crashed: "+c.want+"\n"), e.Error())
	}
}

func TestInfraError(t *testing.T) {
	inner := os.ErrNotExist
	e := &InfraError{Op: "starting QEMU", Err: inner}
	assert.Equal(t, "lab failure while starting QEMU: file does not exist", e.Error())
	assert.ErrorIs(t, e, os.ErrNotExist)
	assert.Equal(t, inner, errors.Unwrap(e))

	wrapped := fmt.Errorf("boot: %w", &InfraError{Op: "dial", Err: context.DeadlineExceeded})
	assert.ErrorIs(t, wrapped, context.DeadlineExceeded)
	var ie *InfraError
	require.ErrorAs(t, wrapped, &ie)
	assert.Equal(t, "dial", ie.Op)
}

func TestErrorsAsThroughWrapping(t *testing.T) {
	errs := []error{
		&BootError{Reason: "r"},
		&CrashError{Title: "t"},
		&HangError{Phase: "command"},
		&InfraError{Op: "o", Err: errors.New("x")},
	}
	for _, e := range errs {
		t.Run(fmt.Sprintf("%T", e), func(t *testing.T) {
			w := fmt.Errorf("outer: %w", fmt.Errorf("middle: %w", e))
			var (
				be *BootError
				ce *CrashError
				he *HangError
				ie *InfraError
			)
			matches := 0
			if errors.As(w, &be) {
				matches++
				assert.Same(t, e, be)
			}
			if errors.As(w, &ce) {
				matches++
				assert.Same(t, e, ce)
			}
			if errors.As(w, &he) {
				matches++
				assert.Same(t, e, he)
			}
			if errors.As(w, &ie) {
				matches++
				assert.Same(t, e, ie)
			}
			assert.Equal(t, 1, matches, "exactly one typed error matches")
			assert.Contains(t, w.Error(), e.Error())
		})
	}
	// errors.Join keeps them reachable too.
	j := errors.Join(errors.New("cleanup failed"), &HangError{Phase: "ping"})
	var he *HangError
	assert.ErrorAs(t, j, &he)
}

type fakeBackend struct{ cfg BackendConfig }

func (fakeBackend) Name() string                                    { return "test-fake" }
func (fakeBackend) Accel(string) (accel.Choice, error)              { return accel.Choice{Kind: accel.TCG}, nil }
func (fakeBackend) Capacity() (Capacity, error)                     { return Capacity{CPUs: 2}, nil }
func (fakeBackend) Close() error                                    { return nil }
func (fakeBackend) Start(context.Context, Config) (Instance, error) { return nil, errors.New("fake") }

func TestRegistry(t *testing.T) {
	Register("test-fake", func(c BackendConfig) (Backend, error) { return fakeBackend{c}, nil })
	Register("test-broken", func(BackendConfig) (Backend, error) { return nil, errors.New("no daemon") })
	b, err := Open("test-fake", BackendConfig{Connect: "x"})
	require.NoError(t, err)
	assert.Equal(t, fakeBackend{BackendConfig{Connect: "x"}}, b, "constructed from its config")

	_, err = Open("no-such-backend", BackendConfig{})
	require.Error(t, err)
	assert.Contains(t, err.Error(), `"no-such-backend"`)
	assert.Contains(t, err.Error(), "test-fake", "the error lists what is available")

	_, err = Open("test-broken", BackendConfig{})
	assert.ErrorContains(t, err, "opening the test-broken backend: no daemon")
}

func TestCapacityVMs(t *testing.T) {
	for _, tc := range []struct {
		c         Capacity
		cpus, mem int
		want      int
	}{
		{Capacity{CPUs: 2, MemoryMiB: 24000}, 2, 768, 1},
		{Capacity{CPUs: 8, MemoryMiB: 24000}, 2, 768, 4},
		{Capacity{CPUs: 8, MemoryMiB: 2000}, 2, 768, 2},
		{Capacity{CPUs: 1, MemoryMiB: 100}, 2, 768, 1},
		{Capacity{}, 2, 768, 1},
	} {
		assert.Equal(t, tc.want, tc.c.VMs(tc.cpus, tc.mem), "%+v", tc)
	}
}

// A huge scale ("never time out while I debug") must not overflow
// time.Duration into negative values, which would make every deadline
// expire at once. Fails today: timeouts.go multiplies in float64 and
// converts back without clamping (and accepts +Inf).
func TestScaledHugeOverrideNotNegative(t *testing.T) {
	for _, v := range []string{"1e8", "1e12", "Inf"} {
		t.Run(v, func(t *testing.T) {
			t.Setenv("LDTLAB_TIMEOUT_SCALE", v)
			to := Scaled(accel.TCG)
			for name, d := range map[string]time.Duration{
				"Boot": to.Boot, "Command": to.Command, "QMP": to.QMP,
				"Shutdown": to.Shutdown, "Ping": to.Ping, "Crash": to.Crash,
			} {
				assert.GreaterOrEqual(t, d, base.Grace, "%s = %s with scale %s", name, d, v)
			}
		})
	}
}

func TestSlower(t *testing.T) {
	t.Setenv("LDTLAB_TIMEOUT_SCALE", "")
	tcg := Scaled(accel.TCG)
	s := tcg.Slower(4)
	assert.Equal(t, tcg.Boot*4, s.Boot)
	assert.Equal(t, tcg.Command*4, s.Command)
	assert.Equal(t, tcg.Grace, s.Grace, "the kill grace is the host's, not the guest's")
	t.Setenv("LDTLAB_TIMEOUT_SCALE", "2")
	fixed := Scaled(accel.TCG)
	assert.Equal(t, fixed, fixed.Slower(4), "an explicit scale is final")
}

func TestIsGuestFault(t *testing.T) {
	for _, c := range []struct {
		name string
		err  error
		want bool
	}{
		{"boot", &BootError{Reason: "no agent"}, true},
		{"crash, wrapped", fmt.Errorf("cell: %w", &CrashError{Title: "BUG: x"}), true},
		{"hang", &HangError{Phase: "command"}, true},
		{"died", &DiedError{}, true},
		{"lab", &InfraError{Op: "starting QEMU", Err: errors.New("no binary")}, false},
		{"plain", errors.New("usage"), false},
		{"nil", nil, false},
	} {
		t.Run(c.name, func(t *testing.T) { assert.Equal(t, c.want, IsGuestFault(c.err)) })
	}
}
