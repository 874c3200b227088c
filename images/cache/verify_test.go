package cache

import (
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeKernel fills an entry like a kernel build does: a boot image, an
// initramfs-sized file and some metadata.
func fakeKernel(size int) func(string) error {
	return func(dir string) error {
		b := make([]byte, size)
		rand.Read(b)
		if err := os.WriteFile(filepath.Join(dir, "bzImage"), b, 0o644); err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Join(dir, "modules"), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, "modules", "x.ko"), []byte("module"), 0o644); err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, "meta.json"), []byte(`{"key":"k"}`), 0o644)
	}
}

// A damaged entry (truncated, altered in place, or missing a file) is not a
// hit: Build says so and rebuilds it; the rebuilt entry is intact.
func TestStoreRebuildsCorruptEntry(t *testing.T) {
	cases := []struct {
		name   string
		damage func(t *testing.T, entry string)
		want   string
	}{
		{"truncated bzImage", func(t *testing.T, e string) {
			require.NoError(t, os.Truncate(filepath.Join(e, "bzImage"), 1000))
		}, "bzImage has 1000 bytes"},
		{"bzImage altered, same size", func(t *testing.T, e string) {
			f, err := os.OpenFile(filepath.Join(e, "bzImage"), os.O_WRONLY, 0)
			require.NoError(t, err)
			f.WriteAt([]byte("garbage"), 4096)
			f.Close()
		}, "bzImage does not match the sha256"},
		{"module deleted", func(t *testing.T, e string) {
			require.NoError(t, os.Remove(filepath.Join(e, "modules", "x.ko")))
		}, "modules/x.ko is missing"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("LDTLAB_CACHE", t.TempDir())
			var log bytes.Buffer
			s := Open("kernels")
			s.Log = &log
			builds := 0
			fill := func(dir string) error { builds++; return fakeKernel(1 << 20)(dir) }
			entry, hit, err := s.Build("k1", fill)
			require.NoError(t, err)
			require.False(t, hit)
			c.damage(t, entry)

			_, ok := s.Lookup("k1")
			assert.False(t, ok, "a damaged entry must not be a hit")
			entry2, hit, err := s.Build("k1", fill)
			require.NoError(t, err)
			assert.False(t, hit, "a damaged entry must be rebuilt")
			assert.Equal(t, 2, builds)
			assert.Equal(t, entry, entry2)
			assert.Contains(t, log.String(), "is corrupt")
			assert.Contains(t, log.String(), c.want)
			assert.Contains(t, log.String(), "rebuilding")
			st, err := os.Stat(filepath.Join(entry2, "bzImage"))
			require.NoError(t, err)
			assert.EqualValues(t, 1<<20, st.Size())
			_, hit, err = s.Build("k1", fill)
			require.NoError(t, err)
			assert.True(t, hit)
		})
	}
}

func TestStoreCheckReportsCorruption(t *testing.T) {
	t.Setenv("LDTLAB_CACHE", t.TempDir())
	s := Open("kernels")
	_, err := s.Check("nope")
	assert.ErrorIs(t, err, ErrMissing)
	entry, _, err := s.Build("k", fakeKernel(4096))
	require.NoError(t, err)
	_, err = s.Check("k")
	require.NoError(t, err)
	require.NoError(t, os.Truncate(filepath.Join(entry, "bzImage"), 10))
	_, err = s.Check("k")
	var ce *CorruptError
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, entry, ce.Entry)
}

// Files above HashLimit are checked by size only (vmlinux), below it by
// hash as well.
func TestStoreHashLimit(t *testing.T) {
	t.Setenv("LDTLAB_CACHE", t.TempDir())
	s := Open("kernels")
	s.HashLimit = 100
	entry, _, err := s.Build("k", fakeKernel(4096))
	require.NoError(t, err)
	f, _ := os.OpenFile(filepath.Join(entry, "bzImage"), os.O_WRONLY, 0)
	f.WriteAt([]byte("x"), 10)
	f.Close()
	_, ok := s.Lookup("k")
	assert.True(t, ok, "above the hash limit only the size is checked")
	s.HashLimit = 0 // default
	_, ok = s.Lookup("k")
	assert.False(t, ok)
}

// An entry written before manifests existed is trusted once and gets a
// manifest, so later damage is caught.
func TestStoreUpgradesEntryWithoutManifest(t *testing.T) {
	t.Setenv("LDTLAB_CACHE", t.TempDir())
	s := Open("kernels")
	legacy := s.Path("old")
	require.NoError(t, os.MkdirAll(legacy, 0o755))
	require.NoError(t, fakeKernel(2048)(legacy))
	require.NoError(t, os.WriteFile(filepath.Join(legacy, completeMarker), []byte("old\n"), 0o644))
	_, ok := s.Lookup("old")
	require.True(t, ok)
	_, err := os.Stat(filepath.Join(legacy, manifestFile))
	require.NoError(t, err)
	require.NoError(t, os.Truncate(filepath.Join(legacy, "bzImage"), 1))
	_, ok = s.Lookup("old")
	assert.False(t, ok)
}

func TestStoreRemove(t *testing.T) {
	t.Setenv("LDTLAB_CACHE", t.TempDir())
	s := Open("kernels")
	require.NoError(t, s.Remove("none"), "removing from an empty cache is fine")
	builds := 0
	fill := func(dir string) error { builds++; return fakeKernel(100)(dir) }
	_, _, err := s.Build("k", fill)
	require.NoError(t, err)
	require.NoError(t, s.Remove("k"))
	_, ok := s.Lookup("k")
	assert.False(t, ok)
	_, hit, err := s.Build("k", fill)
	require.NoError(t, err)
	assert.False(t, hit)
	assert.Equal(t, 2, builds)
	left, _ := filepath.Glob(filepath.Join(s.Root, "k.tmp-*"))
	assert.Empty(t, left)
}

// The source store is never hashed (tens of thousands of files).
func TestOpenVerifies(t *testing.T) {
	assert.True(t, Open("kernels").Verify)
	assert.True(t, Open("images").Verify)
	assert.False(t, Open("src").Verify)
}

// Lookup cost of a kernel-sized entry (~10 MB bzImage + ~10 MB initramfs):
// reported, not asserted (the figure depends on the machine).
func TestStoreLookupCost(t *testing.T) {
	t.Setenv("LDTLAB_CACHE", t.TempDir())
	s := Open("kernels")
	_, _, err := s.Build("k", func(dir string) error {
		if err := fakeKernel(10 << 20)(dir); err != nil {
			return err
		}
		b := make([]byte, 10<<20)
		return os.WriteFile(filepath.Join(dir, "initramfs.cpio.gz"), b, 0o644)
	})
	require.NoError(t, err)
	const n = 5
	start := time.Now()
	for i := 0; i < n; i++ {
		_, ok := s.Lookup("k")
		require.True(t, ok)
	}
	t.Logf("verified lookup of a 20 MiB entry: %s per lookup", time.Since(start)/n)
}
