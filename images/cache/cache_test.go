package cache

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ldtlab/internal/fileutil"
)

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	require.NoError(t, os.WriteFile(path, []byte(content), 0o644))
}

func TestDir(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("LDTLAB_CACHE", tmp)
	t.Setenv("XDG_CACHE_HOME", "/xdg")
	dir := func() string {
		d, err := Dir()
		require.NoError(t, err)
		return d
	}
	assert.Equal(t, tmp, dir())

	t.Setenv("LDTLAB_CACHE", "")
	assert.Equal(t, "/xdg/ldtlab", dir())

	t.Setenv("XDG_CACHE_HOME", "")
	t.Setenv("HOME", "/home/someone")
	assert.Equal(t, "/home/someone/.cache/ldtlab", dir())
}

func TestKeyOrderIndependent(t *testing.T) {
	a := NewKey().AddString("a", "1").AddString("b", "2").AddString("c", "3")
	b := NewKey().AddString("c", "3").AddString("a", "1").AddString("b", "2")
	assert.Equal(t, a.Sum(), b.Sum())
	assert.Equal(t, []string{"a", "b", "c"}, b.Names())
	assert.Len(t, a.Sum(), 64)
}

func TestKeyNameContentSeparation(t *testing.T) {
	cases := []struct {
		name string
		x, y *Key
	}{
		{"bytes moved between inputs",
			NewKey().AddString("a", "xy").AddString("b", ""),
			NewKey().AddString("a", "x").AddString("b", "y")},
		{"bytes moved from content into the name",
			NewKey().AddString("a", "bc"),
			NewKey().AddString("ab", "c")},
		{"newline in content vs. name",
			NewKey().AddString("a", "1\n2:b"),
			NewKey().AddString("a", "1").AddString("b", "")},
		{"different value",
			NewKey().AddString("a", "1"),
			NewKey().AddString("a", "2")},
		{"different name",
			NewKey().AddString("a", "1"),
			NewKey().AddString("b", "1")},
		{"extra empty input",
			NewKey().AddString("a", "1"),
			NewKey().AddString("a", "1").AddString("b", "")},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			assert.NotEqual(t, c.x.Sum(), c.y.Sum())
		})
	}
}

func TestKeyAddCopiesData(t *testing.T) {
	buf := []byte("hello")
	k := NewKey().Add("a", buf)
	before := k.Sum()
	buf[0] = 'j'
	assert.Equal(t, before, k.Sum(), "Add must copy its input")
	assert.Equal(t, NewKey().AddString("a", "hello").Sum(), before)
}

func TestKeyAddFileMissing(t *testing.T) {
	err := NewKey().AddFile("x", filepath.Join(t.TempDir(), "nope"))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "nope")
	assert.ErrorIs(t, err, os.ErrNotExist)
}

func TestKeyAddTree(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "Kbuild"), "obj-m += m.o\n")
	writeFile(t, filepath.Join(dir, "m.c"), "int x;\n")
	writeFile(t, filepath.Join(dir, "sub", "h.h"), "#define X 1\n")
	sum := func() string {
		t.Helper()
		k := NewKey()
		require.NoError(t, k.AddTree("module/m", dir))
		return k.Sum()
	}
	names := func() []string {
		k := NewKey()
		require.NoError(t, k.AddTree("module/m", dir))
		return k.Names()
	}
	orig := sum()
	assert.Equal(t, []string{"module/m/Kbuild", "module/m/m.c", "module/m/sub/h.h"}, names())

	// Build droppings and dotfiles are ignored.
	for _, f := range []string{"m.o", "m.ko", "m.mod", "m.mod.c", "m.mod.o", ".m.o.cmd", "Module.symvers",
		"modules.order", "built-in.a", ".cache.mk", ".hidden", "sub/x.o"} {
		writeFile(t, filepath.Join(dir, f), "junk "+f)
	}
	assert.Equal(t, orig, sum(), "build output must not change the key")
	assert.Equal(t, []string{"module/m/Kbuild", "module/m/m.c", "module/m/sub/h.h"}, names())

	// Documentation is not compiled: editing it keeps the key.
	writeFile(t, filepath.Join(dir, "README.md"), "how to use m")
	assert.Equal(t, orig, sum(), "a README must not change the key")

	// A symlink is not a regular file: ignored.
	require.NoError(t, os.Symlink("m.c", filepath.Join(dir, "link.c")))
	assert.Equal(t, orig, sum())

	// Source changes are seen.
	writeFile(t, filepath.Join(dir, "m.c"), "int y;\n")
	changed := sum()
	assert.NotEqual(t, orig, changed)
	writeFile(t, filepath.Join(dir, "sub", "new.c"), "")
	assert.NotEqual(t, changed, sum(), "a new (even empty) source file changes the key")

	// Renaming a file with the same content changes the key.
	writeFile(t, filepath.Join(dir, "m.c"), "int x;\n")
	require.NoError(t, os.Remove(filepath.Join(dir, "sub", "new.c")))
	assert.Equal(t, orig, sum())
	require.NoError(t, os.Rename(filepath.Join(dir, "sub", "h.h"), filepath.Join(dir, "sub", "g.h")))
	assert.NotEqual(t, orig, sum())
}

func TestKeyAddTreeMissingDir(t *testing.T) {
	assert.Error(t, NewKey().AddTree("x", filepath.Join(t.TempDir(), "nope")))
}

func entries(t *testing.T, root string) []string {
	t.Helper()
	des, err := os.ReadDir(root)
	require.NoError(t, err)
	var names []string
	for _, d := range des {
		names = append(names, d.Name())
	}
	return names
}

func TestStoreBuildMissThenHit(t *testing.T) {
	s := &Store{Root: filepath.Join(t.TempDir(), "kind")}
	calls := 0
	fill := func(dir string) error {
		calls++
		return os.WriteFile(filepath.Join(dir, "out"), []byte("product"), 0o644)
	}
	p, hit, err := s.Build("k1", fill)
	require.NoError(t, err)
	assert.False(t, hit)
	assert.Equal(t, 1, calls)
	assert.Equal(t, s.Path("k1"), p)
	b, err := os.ReadFile(filepath.Join(p, "out"))
	require.NoError(t, err)
	assert.Equal(t, "product", string(b))
	st, err := os.Stat(p)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o755), st.Mode().Perm(), "entries are readable by others")

	lp, ok := s.Lookup("k1")
	assert.True(t, ok)
	assert.Equal(t, p, lp)

	p2, hit, err := s.Build("k1", fill)
	require.NoError(t, err)
	assert.True(t, hit)
	assert.Equal(t, p, p2)
	assert.Equal(t, 1, calls, "fill must not run on a hit")

	// Only the entry and its lock file remain: no temporary directories.
	assert.ElementsMatch(t, []string{"k1", "k1.lock"}, entries(t, s.Root))
}

func TestStoreBuildNilFill(t *testing.T) {
	s := &Store{Root: t.TempDir()}
	_, _, err := s.Build("k", nil)
	assert.Error(t, err)
}

func TestStoreBuildFillError(t *testing.T) {
	s := &Store{Root: t.TempDir()}
	boom := errors.New("boom")
	var tmpSeen string
	_, hit, err := s.Build("k", func(dir string) error {
		tmpSeen = dir
		require.NoError(t, os.WriteFile(filepath.Join(dir, "half"), nil, 0o644))
		return boom
	})
	assert.ErrorIs(t, err, boom)
	assert.False(t, hit)
	_, ok := s.Lookup("k")
	assert.False(t, ok)
	assert.NoDirExists(t, tmpSeen)
	assert.NoDirExists(t, s.Path("k"))
	assert.Equal(t, []string{"k.lock"}, entries(t, s.Root))

	// The next Build runs fill again and succeeds.
	calls := 0
	_, hit, err = s.Build("k", func(string) error { calls++; return nil })
	require.NoError(t, err)
	assert.False(t, hit)
	assert.Equal(t, 1, calls)
}

func TestStoreBuildRemovesInterruptedLeftovers(t *testing.T) {
	s := &Store{Root: t.TempDir()}
	// What a killed builder leaves behind.
	stale := filepath.Join(s.Root, "k.tmp-123456")
	writeFile(t, filepath.Join(stale, "half-written"), "x")
	// A leftover of another key is not ours to remove.
	other := filepath.Join(s.Root, "other.tmp-1")
	writeFile(t, filepath.Join(other, "f"), "x")

	_, ok := s.Lookup("k")
	assert.False(t, ok, "a temporary directory is not an entry")

	calls := 0
	p, hit, err := s.Build("k", func(string) error { calls++; return nil })
	require.NoError(t, err)
	assert.False(t, hit)
	assert.Equal(t, 1, calls)
	assert.Equal(t, s.Path("k"), p)
	assert.NoDirExists(t, stale)
	assert.DirExists(t, other)
}

func TestStoreBuildDistrustsEntryWithoutMarker(t *testing.T) {
	s := &Store{Root: t.TempDir()}
	// An entry directory from an older layout, or a rename without marker.
	writeFile(t, filepath.Join(s.Path("k"), "old"), "stale")
	_, ok := s.Lookup("k")
	assert.False(t, ok)

	calls := 0
	p, hit, err := s.Build("k", func(dir string) error {
		calls++
		return os.WriteFile(filepath.Join(dir, "new"), []byte("fresh"), 0o644)
	})
	require.NoError(t, err)
	assert.False(t, hit)
	assert.Equal(t, 1, calls)
	assert.NoFileExists(t, filepath.Join(p, "old"), "the untrusted entry is replaced, not merged")
	assert.FileExists(t, filepath.Join(p, "new"))
	assert.FileExists(t, filepath.Join(p, completeMarker))
	_, ok = s.Lookup("k")
	assert.True(t, ok)
}

func TestStoreBuildConcurrentSameKey(t *testing.T) {
	s := &Store{Root: t.TempDir()}
	var calls atomic.Int32
	const n = 8
	var wg sync.WaitGroup
	start := make(chan struct{})
	type result struct {
		path string
		hit  bool
		err  error
	}
	results := make([]result, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			p, hit, err := s.Build("same", func(dir string) error {
				calls.Add(1)
				time.Sleep(50 * time.Millisecond) // widen the race window
				return os.WriteFile(filepath.Join(dir, "out"), []byte("x"), 0o644)
			})
			results[i] = result{p, hit, err}
		}()
	}
	close(start)
	wg.Wait()
	assert.Equal(t, int32(1), calls.Load(), "fill must run exactly once")
	misses := 0
	for _, r := range results {
		require.NoError(t, r.err)
		assert.Equal(t, s.Path("same"), r.path)
		if !r.hit {
			misses++
		}
	}
	assert.Equal(t, 1, misses)
	assert.ElementsMatch(t, []string{"same", "same.lock"}, entries(t, s.Root))
}

func TestOpenUsesCacheDir(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("LDTLAB_CACHE", tmp)
	assert.Equal(t, filepath.Join(tmp, "kernels"), Open("kernels").Root)
	assert.Equal(t, filepath.Join(tmp, "kernels", "abc"), Open("kernels").Path("abc"))
}

func TestLock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.lock")
	unlock, err := Lock(context.Background(), path)
	require.NoError(t, err)
	assert.FileExists(t, path)

	got := make(chan func(), 1)
	go func() {
		u, err := Lock(context.Background(), path)
		if err != nil {
			t.Error(err)
			got <- func() {}
			return
		}
		got <- u
	}()
	select {
	case <-got:
		t.Fatal("second Lock succeeded while the first is held")
	case <-time.After(100 * time.Millisecond):
	}
	unlock()
	select {
	case u := <-got:
		u()
	case <-time.After(5 * time.Second):
		t.Fatal("second Lock did not get the lock after unlock")
	}

	// The lock can be taken again afterwards.
	u, err := Lock(context.Background(), path)
	require.NoError(t, err)
	u()
}

func TestLockBadPath(t *testing.T) {
	_, err := Lock(context.Background(), filepath.Join(t.TempDir(), "no", "such", "dir", "x.lock"))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "x.lock")
}

// ^C while someone else holds the lock returns at once, not when they
// are done.
func TestLockGivesUpWithContext(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.lock")
	unlock, err := fileutil.TryLock(path)
	require.NoError(t, err)
	defer unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = Lock(ctx, path)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Less(t, time.Since(start), 5*time.Second)
}
