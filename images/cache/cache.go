// Package cache stores build products in directories named by the content
// hash of their inputs. An entry is built in a temporary directory beside
// its final place and renamed into place only when complete, so an
// interrupted build never leaves a half entry; a lock file serialises two
// builders of the same key.
package cache

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// Dir returns the cache root: $LDTLAB_CACHE, else $XDG_CACHE_HOME/ldtlab,
// else ~/.cache/ldtlab.
func Dir() string {
	if d := os.Getenv("LDTLAB_CACHE"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "ldtlab")
	}
	home, err := os.UserHomeDir()
	if err != nil || home == "" {
		home = os.TempDir()
	}
	return filepath.Join(home, ".cache", "ldtlab")
}

// Key accumulates named inputs into a content hash. Names are part of the
// hash so that moving bytes from one input to another changes the key.
type Key struct {
	parts map[string][]byte
}

// NewKey returns an empty key.
func NewKey() *Key { return &Key{parts: map[string][]byte{}} }

// Add records an input by name.
func (k *Key) Add(name string, data []byte) *Key {
	k.parts[name] = append([]byte(nil), data...)
	return k
}

// AddString records a string input.
func (k *Key) AddString(name, s string) *Key { return k.Add(name, []byte(s)) }

// AddFile records a file's content under its name.
func (k *Key) AddFile(name, path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("hashing %s: %w", path, err)
	}
	k.Add(name, b)
	return nil
}

// AddTree records every regular file below dir (relative names, sorted),
// skipping build droppings so that building in place does not change the key.
func (k *Key) AddTree(name, dir string) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && p != dir && strings.HasPrefix(d.Name(), ".") {
			return filepath.SkipDir // .git, editor state
		}
		if d.IsDir() || !d.Type().IsRegular() || isBuildOutput(d.Name()) {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		return k.AddFile(name+"/"+filepath.ToSlash(rel), p)
	})
}

func isBuildOutput(name string) bool {
	for _, suf := range []string{".o", ".ko", ".mod", ".mod.c", ".cmd", ".symvers", ".order", ".a"} {
		if strings.HasSuffix(name, suf) {
			return true
		}
	}
	return strings.HasPrefix(name, ".")
}

// Sum is the hex sha256 over all inputs in name order.
func (k *Key) Sum() string {
	names := make([]string, 0, len(k.parts))
	for n := range k.parts {
		names = append(names, n)
	}
	sort.Strings(names)
	h := sha256.New()
	for _, n := range names {
		fmt.Fprintf(h, "%d:%s\n%d:", len(n), n, len(k.parts[n]))
		h.Write(k.parts[n])
		h.Write([]byte{'\n'})
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Names lists the recorded inputs (for build metadata).
func (k *Key) Names() []string {
	var names []string
	for n := range k.parts {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Store is one kind of cache entry (kernels, initramfs images) under the root.
type Store struct {
	Root string
}

// Open returns the store for kind under the cache root.
func Open(kind string) *Store { return &Store{Root: filepath.Join(Dir(), kind)} }

// Path is where the entry for key lives once complete.
func (s *Store) Path(key string) string { return filepath.Join(s.Root, key) }

// Lookup reports whether a complete entry exists.
func (s *Store) Lookup(key string) (string, bool) {
	p := s.Path(key)
	if _, err := os.Stat(filepath.Join(p, completeMarker)); err == nil {
		return p, true
	}
	return p, false
}

// completeMarker is written last inside the temporary directory; an entry
// without it (for example from an older layout) is not trusted.
const completeMarker = ".complete"

var errNoFill = errors.New("cache: nil fill function")

// Build returns the entry for key, calling fill to produce it in a fresh
// temporary directory when it is missing. Concurrent builders of the same
// key wait for each other; the second one finds the entry done.
func (s *Store) Build(key string, fill func(dir string) error) (path string, hit bool, err error) {
	if fill == nil {
		return "", false, errNoFill
	}
	if p, ok := s.Lookup(key); ok {
		return p, true, nil
	}
	if err := os.MkdirAll(s.Root, 0o755); err != nil {
		return "", false, fmt.Errorf("creating cache %s: %w", s.Root, err)
	}
	unlock, err := Lock(filepath.Join(s.Root, key+".lock"))
	if err != nil {
		return "", false, err
	}
	defer unlock()
	if p, ok := s.Lookup(key); ok {
		return p, true, nil
	}
	// Leftovers of an interrupted build of this key are garbage now that
	// we hold the lock.
	s.removeStale(key)
	tmp, err := os.MkdirTemp(s.Root, key+".tmp-")
	if err != nil {
		return "", false, fmt.Errorf("creating cache entry: %w", err)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		os.RemoveAll(tmp)
		return "", false, err
	}
	if err := fill(tmp); err != nil {
		os.RemoveAll(tmp)
		return "", false, err
	}
	if err := os.WriteFile(filepath.Join(tmp, completeMarker), []byte(key+"\n"), 0o644); err != nil {
		os.RemoveAll(tmp)
		return "", false, err
	}
	syncDir(tmp)
	final := s.Path(key)
	os.RemoveAll(final) // an incomplete entry without marker
	if err := os.Rename(tmp, final); err != nil {
		os.RemoveAll(tmp)
		return "", false, fmt.Errorf("publishing cache entry %s: %w", final, err)
	}
	syncDir(s.Root)
	return final, false, nil
}

func (s *Store) removeStale(key string) {
	matches, _ := filepath.Glob(filepath.Join(s.Root, key+".tmp-*"))
	for _, m := range matches {
		os.RemoveAll(m)
	}
}

func syncDir(dir string) {
	if f, err := os.Open(dir); err == nil {
		f.Sync()
		f.Close()
	}
}

// Lock takes an exclusive flock on path, creating it. It returns the unlock
// function. The lock dies with the process, so a killed builder never
// wedges the next one.
func Lock(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening lock %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		fmt.Fprintf(os.Stderr, "ldtlab: waiting for another build holding %s\n", path)
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", path, err)
		}
	}
	return func() {
		unix.Flock(int(f.Fd()), unix.LOCK_UN)
		f.Close()
	}, nil
}

// WriteJSON writes v as indented JSON to path atomically.
func WriteJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return WriteFileAtomic(path, append(b, '\n'), 0o644)
}

// WriteFileAtomic writes data to a temporary file and renames it over path.
func WriteFileAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return err
	}
	tmp := f.Name()
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, path)
}

// CopyFile copies src to dst with mode.
func CopyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
