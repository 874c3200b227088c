package scenario

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// knob is a file standing in for a sysfs knob.
func knob(t *testing.T, content string) string {
	p := filepath.Join(t.TempDir(), "knob")
	require.NoError(t, os.WriteFile(p, []byte(content), 0o644))
	return p
}

func read(t *testing.T, p string) string {
	b, err := os.ReadFile(p)
	require.NoError(t, err)
	return string(b)
}

func TestSceneSetRestores(t *testing.T) {
	cases := []struct{ name, old, set, restored string }{
		{"number", "100\n", "5", "100"},
		{"choice", "always within_size [advise] never deny force\n", "never", "advise"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := knob(t, c.old)
			bodyErr := errors.New("the body failed")
			err := runScene(&Env{}, func(e *Scene) error {
				require.NoError(t, e.Set(p, c.set))
				assert.Equal(t, c.set, read(t, p))
				return bodyErr
			})
			assert.Equal(t, bodyErr, err, "the body's error wins")
			assert.Equal(t, c.restored, read(t, p), "restored on the failing path too")
		})
	}
}

func TestSceneSetMissingKnob(t *testing.T) {
	err := runScene(&Env{}, func(e *Scene) error {
		return e.Set(filepath.Join(t.TempDir(), "nope"), "1")
	})
	assert.ErrorContains(t, err, "nope")
}

func TestSceneCleanupOrderAndErrors(t *testing.T) {
	var order []string
	err := runScene(&Env{}, func(e *Scene) error {
		e.Defer("first", func() error { order = append(order, "first"); return errors.New("boom") })
		e.closeAtEnd(func() error { order = append(order, "close"); return errors.New("ignored") })
		e.Defer("last", func() error { order = append(order, "last"); return nil })
		return nil
	})
	assert.Equal(t, []string{"last", "close", "first"}, order, "reverse order, as defers")
	assert.EqualError(t, err, "first: boom", "a failed restore fails a body that succeeded; a failed close does not")
}

func TestSceneGo(t *testing.T) {
	var stoppedBeforeCleanup bool
	running := make(chan struct{})
	err := runScene(&Env{}, func(e *Scene) error {
		ended := false
		e.Defer("check", func() error { stoppedBeforeCleanup = ended; return nil })
		e.Go("agitator", func(ctx context.Context) error {
			close(running)
			<-ctx.Done()
			ended = true
			return ctx.Err() // a cancelled agitator is no failure
		})
		<-running
		return nil
	})
	assert.NoError(t, err)
	assert.True(t, stoppedBeforeCleanup, "agitators are joined before the cleanups run")
}

func TestSceneGoStopAndError(t *testing.T) {
	err := runScene(&Env{}, func(e *Scene) error {
		stop := e.Go("sleeper", func(ctx context.Context) error { <-ctx.Done(); return nil })
		assert.NoError(t, stop())
		assert.NoError(t, stop(), "stop twice is harmless")
		e.Go("failing", func(ctx context.Context) error { return errors.New("lost a write") })
		return nil
	})
	assert.EqualError(t, err, "failing: lost a write")
}

func TestScenePanicStillCleansUp(t *testing.T) {
	p := knob(t, "1\n")
	assert.Panics(t, func() {
		runScene(&Env{}, func(e *Scene) error {
			require.NoError(t, e.Set(p, "0"))
			panic("oops")
		})
	})
	assert.Equal(t, "1", read(t, p))
}
