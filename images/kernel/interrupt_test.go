package kernel

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ldtlab/images/cache"
)

// fakeMake puts a `make` on PATH that behaves like Kbuild with O=: the
// make we start only re-invokes another make (here: a shell loop) that
// does the real work, records its pid, and runs until killed.
func fakeMake(t *testing.T) (binDir, pidFile string) {
	t.Helper()
	binDir = t.TempDir()
	pidFile = filepath.Join(t.TempDir(), "worker.pid")
	script := "#!/bin/sh\nsh -c 'echo $$ > " + pidFile + "; while :; do sleep 0.1; done' &\nwait\n"
	require.NoError(t, os.WriteFile(filepath.Join(binDir, "make"), []byte(script), 0o755))
	return binDir, pidFile
}

// The test binary doubles as a builder process that runs p.make and can
// be killed with SIGKILL, like `labctl build` in the campaign.
func init() {
	if os.Getenv("LDTLAB_FAKE_BUILDER") != "1" {
		return
	}
	p := &plan{opts: Options{Log: io.Discard}}
	os.Stdout.WriteString("started\n")
	p.make(context.Background(), os.TempDir(), io.Discard, false, "bzImage")
	os.Exit(0)
}

func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

func waitPidFile(t *testing.T, path string) int {
	t.Helper()
	for i := 0; i < 200; i++ {
		if b, err := os.ReadFile(path); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 {
				return pid
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("the fake make never started its worker")
	return 0
}

// Killing the builder with SIGKILL must stop the whole build. Before,
// only the outer make died (parent-death signal); Kbuild's real work runs
// in the make it re-invokes, which went on compiling as an orphan into the
// object directory, racing the next build (which recreates the source
// tree under it) for the machine's two cores.
func TestKilledBuilderTakesTheBuildWithIt(t *testing.T) {
	binDir, pidFile := fakeMake(t)
	exe, err := os.Executable()
	require.NoError(t, err)
	builder := exec.Command(exe, "-test.run=^$")
	builder.Env = append(os.Environ(), "LDTLAB_FAKE_BUILDER=1", "PATH="+binDir+":"+os.Getenv("PATH"))
	out, err := builder.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, builder.Start())
	line, _ := bufio.NewReader(out).ReadString('\n')
	require.Equal(t, "started\n", line)
	worker := waitPidFile(t, pidFile)
	t.Cleanup(func() { syscall.Kill(worker, syscall.SIGKILL) })

	require.NoError(t, builder.Process.Kill())
	builder.Wait()
	deadline := time.Now().Add(3 * time.Second)
	for processAlive(worker) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	assert.False(t, processAlive(worker), "the build's worker (pid %d) outlived the killed builder", worker)
}

// Cancelling the context stops the whole build too.
func TestCancelledBuildStopsEverything(t *testing.T) {
	binDir, pidFile := fakeMake(t)
	t.Setenv("PATH", binDir+":"+os.Getenv("PATH"))
	p := &plan{opts: Options{Log: io.Discard}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.make(ctx, t.TempDir(), io.Discard, false, "bzImage") }()
	worker := waitPidFile(t, pidFile)
	t.Cleanup(func() { syscall.Kill(worker, syscall.SIGKILL) })
	cancel()
	select {
	case err := <-done:
		assert.ErrorIs(t, err, context.Canceled)
	case <-time.After(10 * time.Second):
		t.Fatal("make did not return after cancel")
	}
	deadline := time.Now().Add(3 * time.Second) // SIGKILL is asynchronous
	for processAlive(worker) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	assert.False(t, processAlive(worker))
}

// A build left running by a builder killed before this fix (or by any
// other means) is stopped before the next build touches the work tree.
func TestReapOrphanedBuild(t *testing.T) {
	work := t.TempDir()
	out := filepath.Join(work, "out")
	require.NoError(t, os.MkdirAll(out, 0o755))
	// A stand-in for an orphaned make: sleep under the name make.
	sleep, err := exec.LookPath("sleep")
	require.NoError(t, err)
	fakeMake := filepath.Join(t.TempDir(), "make")
	require.NoError(t, os.Symlink(sleep, fakeMake))
	orphan := exec.Command(fakeMake, "300")
	orphan.Dir = out
	require.NoError(t, orphan.Start())
	t.Cleanup(func() { orphan.Process.Kill(); orphan.Wait() })
	bystander := exec.Command(fakeMake, "300") // a build elsewhere
	bystander.Dir = t.TempDir()
	require.NoError(t, bystander.Start())
	t.Cleanup(func() { bystander.Process.Kill(); bystander.Wait() })
	viewer := exec.Command(sleep, "300") // not a build tool, in the tree
	viewer.Dir = out
	require.NoError(t, viewer.Start())
	t.Cleanup(func() { viewer.Process.Kill(); viewer.Wait() })
	exited := make(chan struct{})
	go func() { orphan.Wait(); close(exited) }()

	n := reapOrphans(work)
	assert.Equal(t, 1, n)
	select {
	case <-exited:
	case <-time.After(3 * time.Second):
		t.Fatal("the orphaned build process still runs")
	}
	assert.True(t, processAlive(bystander.Process.Pid), "a process outside the work tree is left alone")
	assert.True(t, processAlive(viewer.Process.Pid), "a non-build process inside the tree is left alone")
}

// A fake kernel entry in a private cache: Find verifies it, a damaged one
// is reported (with the command that rebuilds it), Drop removes it.
func TestFindVerifiesAndDropRemoves(t *testing.T) {
	needGCC(t)
	t.Setenv("LDTLAB_CACHE", t.TempDir())
	repo, tarball := fakeRepo(t)
	o := Options{Repo: repo, Tarball: tarball}
	key, err := Key(o)
	require.NoError(t, err)
	store := cache.Open("kernels")
	_, _, err = store.Build(key, func(dir string) error {
		if err := os.WriteFile(filepath.Join(dir, "bzImage"), make([]byte, 8192), 0o644); err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, "meta.json"), []byte(`{"key":"`+key+`"}`), 0o644)
	})
	require.NoError(t, err)
	b, ok, err := Find(o)
	require.NoError(t, err)
	require.True(t, ok)

	require.NoError(t, os.Truncate(b.BzImage, 100))
	_, ok, err = Find(o)
	assert.False(t, ok)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "bzImage has 100 bytes, 8192 were written")
	assert.Contains(t, err.Error(), "labctl build --config debug")

	require.NoError(t, Drop(o))
	_, ok, err = Find(o)
	assert.NoError(t, err)
	assert.False(t, ok, "dropped")
}
