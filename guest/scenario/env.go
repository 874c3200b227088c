package scenario

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"ldtlab/guest/tracker"
)

// Scene is the environment a scenario body runs in: the cell's Env plus
// everything the body set up — worksets, trackers, changed kernel knobs,
// background agitators — undone when the body returns, whichever way.
// It replaces the populate-and-defer preamble each scenario used to
// write out: a body asks the Scene and never defers a cleanup itself.
//
// At the end, in this order: the agitators' context is cancelled and
// every agitator is waited for; then the cleanups run, the last
// registered first (as defers would). The body's own error wins; an
// agitator's error, then a failed restore, fails a body that returned nil.
type Scene struct {
	*Env
	ctx    context.Context
	cancel context.CancelFunc
	undo   []cleanup

	wg     sync.WaitGroup
	mu     sync.Mutex
	goErrs []error
}

type cleanup struct {
	what string // "" = errors ignored (closing what the body used)
	f    func() error
}

// staged turns a scene body into a Scenario.Run.
func staged(body func(e *Scene) error) func(*Env) error {
	return func(env *Env) error { return runScene(env, body) }
}

func runScene(env *Env, body func(e *Scene) error) (err error) {
	ctx, cancel := context.WithCancel(context.Background())
	e := &Scene{Env: env, ctx: ctx, cancel: cancel}
	defer func() {
		if ferr := e.finish(); ferr != nil && err == nil {
			err = ferr
		}
	}()
	return body(e)
}

// finish stops the agitators, then undoes the setup in reverse order.
func (e *Scene) finish() error {
	e.cancel()
	e.wg.Wait()
	var first error
	if len(e.goErrs) > 0 {
		first = errors.Join(e.goErrs...)
	}
	for i := len(e.undo) - 1; i >= 0; i-- {
		c := e.undo[i]
		if err := c.f(); err != nil && c.what != "" && first == nil {
			first = fmt.Errorf("%s: %w", c.what, err)
		}
	}
	e.undo = nil
	return first
}

// Context ends when the body returns.
func (e *Scene) Context() context.Context { return e.ctx }

// Defer runs f when the body returns, after the agitators stopped, the
// last registered first. A failure of f is reported as "what: error"
// when the body itself succeeded.
func (e *Scene) Defer(what string, f func() error) {
	e.undo = append(e.undo, cleanup{what, f})
}

// closeAtEnd closes what the body used; like a deferred Close, its error
// is no verdict.
func (e *Scene) closeAtEnd(f func() error) { e.undo = append(e.undo, cleanup{"", f}) }

// Workset reserves a working set of n pages, unmapped when the body returns.
func (e *Scene) Workset(n int) (*Workset, error) {
	ws, err := NewWorkset(e.Seed, n)
	if err != nil {
		return nil, err
	}
	e.closeAtEnd(ws.Close)
	return ws, nil
}

// StartTracking opens the cell's tracker on ws (closed when the body
// returns) and declares every write so far history: the setup is not
// what the collections are judged on.
func (e *Scene) StartTracking(ws *Workset) (tracker.Tracker, error) {
	t, err := e.Track(ws)
	if err != nil {
		return nil, err
	}
	e.closeAtEnd(t.Close)
	ws.Judge(nil)
	return t, nil
}

// Populate is the usual start of a scenario: a working set of n pages
// mapped as one segment of kind, every page written once, and the
// tracker started on it.
func (e *Scene) Populate(kind Kind, n int) (*Workset, *Segment, tracker.Tracker, error) {
	ws, err := e.Workset(n)
	if err != nil {
		return nil, nil, nil, err
	}
	seg, err := ws.Map("data", kind, 0, n, -1)
	if err != nil {
		return nil, nil, nil, err
	}
	for id := range n {
		ws.Write(id)
	}
	t, err := e.StartTracking(ws)
	if err != nil {
		return nil, nil, nil, err
	}
	return ws, seg, t, nil
}

// Set writes value to a sysfs or procfs knob and writes the old value
// back when the body returns (for a choice file such as
// "always [madvise] never", the selected word).
func (e *Scene) Set(path, value string) error {
	old, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	if err := writeFile(path, value); err != nil {
		return err
	}
	prev := bracketed(string(old))
	e.Defer("restore "+path, func() error { return writeFile(path, prev) })
	return nil
}

// Go runs an agitator in the background. Its context ends when stop is
// called or the body returns; both wait for it to return. An error it
// returns (other than its context's) fails the scenario, and stop
// returns it too.
func (e *Scene) Go(name string, f func(ctx context.Context) error) (stop func() error) {
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan struct{})
	var ferr error
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		defer close(done)
		if err := f(ctx); err != nil && !errors.Is(err, context.Canceled) {
			ferr = fmt.Errorf("%s: %w", name, err)
			e.mu.Lock()
			e.goErrs = append(e.goErrs, ferr)
			e.mu.Unlock()
		}
	}()
	return func() error {
		cancel()
		<-done
		return ferr
	}
}

// bracketed returns the [selected] word of a sysfs choice file, or the
// trimmed value of any other knob.
func bracketed(s string) string {
	if i, j := strings.IndexByte(s, '['), strings.IndexByte(s, ']'); i >= 0 && j > i {
		return s[i+1 : j]
	}
	return strings.TrimSpace(s)
}
