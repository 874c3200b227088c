// Package cache stores build products in directories named by the content
// hash of their inputs. An entry is built in a temporary directory beside
// its final place and renamed into place only when complete, so an
// interrupted build never leaves a half entry; a lock file serialises two
// builders of the same key.
package cache

import (
	"context"
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
	"time"

	"ldtlab/internal/fileutil"
	"ldtlab/internal/secfs"
)

// Dir returns the cache root: $LDTLAB_CACHE, else $XDG_CACHE_HOME/ldtlab,
// else ~/.cache/ldtlab, where ~ is $HOME or, when HOME is unset (a
// systemd service, some CI), the home the passwd database gives the
// user. It never falls back to a shared directory such as /tmp, where
// another user could plant a kernel tree whose Makefile we would run.
func Dir() (string, error) {
	if d := os.Getenv("LDTLAB_CACHE"); d != "" {
		return d, nil
	}
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "ldtlab"), nil
	}
	home, err := secfs.Home()
	if err != nil {
		return "", fmt.Errorf("cannot tell where the build cache goes: %v; set LDTLAB_CACHE (or XDG_CACHE_HOME) to a directory of yours", err)
	}
	return filepath.Join(home, ".cache", "ldtlab"), nil
}

// Root is Dir created if missing and checked: it and every directory
// created for it are owned by this user and writable by nobody else, and
// the directories above it are owned by root or this user and not open
// to everyone (unless sticky, as /tmp is). Anything else is refused.
func Root() (string, error) {
	d, err := Dir()
	if err != nil {
		return "", err
	}
	if err := secfs.MkdirPrivate(d, 0o755); err != nil {
		return "", unsafeRoot(err)
	}
	return d, nil
}

// MkdirPrivate creates a directory inside the cache (a work or log
// directory) with the checks of Root.
func MkdirPrivate(dir string) error {
	if err := secfs.MkdirPrivate(dir, 0o755); err != nil {
		return unsafeRoot(err)
	}
	return nil
}

func unsafeRoot(err error) error {
	return fmt.Errorf("build cache: %w; set LDTLAB_CACHE (or XDG_CACHE_HOME) to a directory of yours that only you can write", err)
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
		if d.IsDir() || !d.Type().IsRegular() || isBuildOutput(d.Name()) || isDoc(d.Name()) {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		return k.AddFile(name+"/"+filepath.ToSlash(rel), p)
	})
}

// isDoc: a module's README is not compiled; editing it must not cost
// every kernel variant a rebuild.
func isDoc(name string) bool {
	return strings.HasSuffix(name, ".md") || strings.HasSuffix(name, ".txt") || strings.HasSuffix(name, ".rst")
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
	// Verify makes every lookup check the entry against the manifest
	// (size and sha256 of every file) recorded when it was written: a
	// truncated or altered entry is a miss, rebuilt with a message, never
	// booted. Files larger than HashLimit are checked by size only, to
	// keep lookups fast (vmlinux with debug info is hundreds of MB).
	Verify    bool
	HashLimit int64
	// Log receives "corrupt entry, rebuilding" notices; nil = stderr.
	Log io.Writer

	top string // the cache root Root is in ("" for a store made by hand)
	err error  // why the cache root is unknown
}

// DefaultHashLimit bounds the files hashed on every lookup.
const DefaultHashLimit = 64 << 20

// Open returns the store for kind under the cache root. Kernel and image
// entries are verified on lookup; the pristine source extraction (tens of
// thousands of files, never booted) is not.
func Open(kind string) *Store {
	top, err := Dir()
	return &Store{Root: filepath.Join(top, kind), Verify: kind != "src", HashLimit: DefaultHashLimit, top: top, err: err}
}

// secure checks (creating them with create) the cache root and the
// store's directory before anything in them is trusted: see Root. A
// lookup in a store that does not exist yet is a miss.
func (s *Store) secure(create bool) error {
	if s.err != nil {
		return s.err
	}
	if !create {
		if _, err := os.Lstat(s.Root); errors.Is(err, fs.ErrNotExist) {
			return ErrMissing
		}
	}
	if s.top != "" {
		if err := MkdirPrivate(s.top); err != nil {
			return err
		}
	}
	return MkdirPrivate(s.Root)
}

// Path is where the entry for key lives once complete.
func (s *Store) Path(key string) string { return filepath.Join(s.Root, key) }

// Lookup reports whether a complete, intact entry exists.
func (s *Store) Lookup(key string) (string, bool) {
	p, err := s.Check(key)
	return p, err == nil
}

// ErrMissing is returned by Check for an entry that was never completed.
var ErrMissing = errors.New("cache: no complete entry")

// Check returns the entry's path and nil when it is complete and (with
// Verify) matches its manifest; ErrMissing when there is no complete
// entry; a *CorruptError saying what differs otherwise.
func (s *Store) Check(key string) (string, error) {
	p := s.Path(key)
	if err := s.secure(false); err != nil {
		return p, err
	}
	if _, err := os.Stat(filepath.Join(p, completeMarker)); err != nil {
		return p, ErrMissing
	}
	if !s.Verify {
		return p, nil
	}
	m, err := readManifest(p)
	if errors.Is(err, os.ErrNotExist) {
		// Written before manifests existed: record one now (once), so
		// that later damage is caught.
		if m, err = makeManifest(p); err == nil {
			fileutil.WriteJSON(filepath.Join(p, manifestFile), m)
		}
		return p, nil
	}
	if err != nil {
		return p, &CorruptError{Entry: p, Reason: err.Error()}
	}
	if err := m.verify(p, s.hashLimit()); err != nil {
		return p, &CorruptError{Entry: p, Reason: err.Error()}
	}
	return p, nil
}

func (s *Store) hashLimit() int64 {
	if s.HashLimit <= 0 {
		return DefaultHashLimit
	}
	return s.HashLimit
}

func (s *Store) log() io.Writer {
	if s.Log == nil {
		return os.Stderr
	}
	return s.Log
}

// CorruptError: a complete entry no longer matches what was written.
type CorruptError struct {
	Entry  string
	Reason string
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("cache entry %s is corrupt: %s", e.Entry, e.Reason)
}

// Remove drops the entry for key (waiting for a builder of that key), so
// the next Build rebuilds it.
func (s *Store) Remove(key string) error {
	if err := s.secure(false); errors.Is(err, ErrMissing) {
		return nil
	} else if err != nil {
		return err
	}
	unlock, err := Lock(context.Background(), filepath.Join(s.Root, key+".lock"))
	if err != nil {
		return err
	}
	defer unlock()
	return s.discard(key)
}

// discard moves an entry out of the way (atomically, so no reader sees a
// half-deleted entry), then deletes it. The caller holds the key's lock.
func (s *Store) discard(key string) error {
	final := s.Path(key)
	if _, err := os.Lstat(final); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	trash := fmt.Sprintf("%s.tmp-discard-%d", final, os.Getpid())
	if err := os.Rename(final, trash); err != nil {
		return fmt.Errorf("dropping cache entry %s: %w", final, err)
	}
	return os.RemoveAll(trash)
}

// completeMarker is written last inside the temporary directory; an entry
// without it (for example from an older layout) is not trusted.
const completeMarker = ".complete"

// manifestFile records every file of an entry with its size and sha256.
const manifestFile = ".manifest.json"

type manifestFileEntry struct {
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

type manifest struct {
	Files []manifestFileEntry `json:"files"`
}

func readManifest(dir string) (*manifest, error) {
	b, err := os.ReadFile(filepath.Join(dir, manifestFile))
	if err != nil {
		return nil, err
	}
	var m manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("unreadable %s: %v", manifestFile, err)
	}
	return &m, nil
}

// makeManifest hashes every regular file below dir (the marker and the
// manifest itself excepted).
func makeManifest(dir string) (*manifest, error) {
	m := &manifest{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == completeMarker || rel == manifestFile {
			return nil
		}
		size, sum, err := hashFile(p)
		if err != nil {
			return err
		}
		m.Files = append(m.Files, manifestFileEntry{Path: filepath.ToSlash(rel), Size: size, SHA256: sum})
		return nil
	})
	return m, err
}

func (m *manifest) verify(dir string, hashLimit int64) error {
	for _, f := range m.Files {
		p := filepath.Join(dir, filepath.FromSlash(f.Path))
		st, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("%s is missing", f.Path)
		}
		if st.Size() != f.Size {
			return fmt.Errorf("%s has %d bytes, %d were written", f.Path, st.Size(), f.Size)
		}
		if f.Size > hashLimit {
			continue
		}
		_, sum, err := hashFile(p)
		if err != nil {
			return fmt.Errorf("reading %s: %v", f.Path, err)
		}
		if sum != f.SHA256 {
			return fmt.Errorf("%s does not match the sha256 recorded when it was written", f.Path)
		}
	}
	return nil
}

func hashFile(path string) (int64, string, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, "", err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return 0, "", err
	}
	return n, hex.EncodeToString(h.Sum(nil)), nil
}

var errNoFill = errors.New("cache: nil fill function")

// Build returns the entry for key, calling fill to produce it in a fresh
// temporary directory when it is missing. Concurrent builders of the same
// key wait for each other; the second one finds the entry done.
func (s *Store) Build(key string, fill func(dir string) error) (path string, hit bool, err error) {
	return s.BuildContext(context.Background(), key, fill)
}

// BuildContext is Build that stops waiting for another builder when ctx
// ends.
func (s *Store) BuildContext(ctx context.Context, key string, fill func(dir string) error) (path string, hit bool, err error) {
	if fill == nil {
		return "", false, errNoFill
	}
	if err := s.secure(true); err != nil {
		return "", false, err
	}
	if p, err := s.Check(key); err == nil {
		return p, true, nil
	}
	unlock, err := Lock(ctx, filepath.Join(s.Root, key+".lock"))
	if err != nil {
		return "", false, err
	}
	defer unlock()
	p, cerr := s.Check(key)
	if cerr == nil {
		return p, true, nil
	}
	var ce *CorruptError
	if errors.As(cerr, &ce) {
		fmt.Fprintf(s.log(), "ldtlab: %v; removing it and rebuilding\n", cerr)
		if err := s.discard(key); err != nil {
			return "", false, err
		}
	}
	// Leftovers of an interrupted build of this key are garbage now that
	// we hold the lock.
	s.removeStale(key)
	tmp, err := os.MkdirTemp(s.Root, key+".tmp-")
	if err != nil {
		return "", false, fmt.Errorf("creating cache entry: %w", fileutil.Explain(s.Root, err))
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		os.RemoveAll(tmp)
		return "", false, err
	}
	if err := fill(tmp); err != nil {
		os.RemoveAll(tmp)
		return "", false, err
	}
	if s.Verify {
		m, err := makeManifest(tmp)
		if err == nil {
			err = fileutil.WriteJSON(filepath.Join(tmp, manifestFile), m)
		}
		if err != nil {
			os.RemoveAll(tmp)
			return "", false, fmt.Errorf("recording the manifest of cache entry %s: %w", key, err)
		}
	}
	if err := fileutil.WriteFileAtomic(filepath.Join(tmp, completeMarker), []byte(key+"\n"), 0o644); err != nil {
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

// Lock takes an exclusive flock on path, creating it, waiting for another
// holder until ctx ends (so ^C is never stuck behind someone else's
// build). It returns the unlock function. The lock dies with the process,
// so a killed builder never wedges the next one.
func Lock(ctx context.Context, path string) (func(), error) {
	said := false
	for {
		unlock, err := fileutil.TryLock(path)
		if !errors.Is(err, fileutil.ErrLocked) {
			return unlock, err
		}
		if !said {
			fmt.Fprintf(os.Stderr, "ldtlab: waiting for another build holding %s\n", path)
			said = true
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for the lock %s: %w", path, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}
