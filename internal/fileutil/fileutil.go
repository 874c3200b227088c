// Package fileutil holds the file helpers every layer shares: atomic
// writes whose errors name the file and say when the disk is full, a
// non-blocking flock, a copy. It sits beside atomicfile (which it wraps)
// so that a VM backend or the CLI need not import the build cache to word
// a full-disk error.
package fileutil

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"ldtlab/internal/atomicfile"
)

// WriteJSON writes v as indented JSON to path atomically.
func WriteJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return WriteFileAtomic(path, append(b, '\n'), 0o644)
}

// WriteFileAtomic is atomicfile.WriteFile (temporary file, fsync, rename,
// fsync of the directory: a reader sees the old content or the new, never
// a torn file, even after a crash) with errors that name path and say
// when the disk is full.
func WriteFileAtomic(path string, data []byte, mode os.FileMode) error {
	err := atomicfile.WriteFile(path, data, mode)
	if err != nil {
		return Explain(path, err)
	}
	return nil
}

// Explain rewrites a write error on path so that a full disk reads
// "no space left on <path>" (the error is still errors.Is ENOSPC).
func Explain(path string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
		return fmt.Errorf("no space left on %s (%s): %w", path, mountHint(path), err)
	}
	var pe *fs.PathError
	if errors.As(err, &pe) && pe.Path == path {
		return err
	}
	return fmt.Errorf("writing %s: %w", path, err)
}

// SpaceHint is "; no space left on DIR (...)" when the filesystem holding
// dir has less than min bytes free, else "". For errors whose cause may be
// a full disk that could not even be recorded (a build log, a state file).
func SpaceHint(dir string, min uint64) string {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return ""
	}
	free := st.Bavail * uint64(st.Bsize)
	if free >= min {
		return ""
	}
	return fmt.Sprintf("; no space left on %s: its filesystem has %d KiB free", dir, free>>10)
}

// mountHint names the directory whose filesystem is full.
func mountHint(path string) string {
	dir := filepath.Dir(path)
	var st unix.Statfs_t
	if unix.Statfs(dir, &st) == nil {
		return fmt.Sprintf("its filesystem has %d KiB free", st.Bavail*uint64(st.Bsize)/1024)
	}
	return "its filesystem is full"
}

// ErrLocked: another process holds the lock.
var ErrLocked = errors.New("held by another process")

// TryLock takes an exclusive flock on path, creating it, without
// waiting: it fails with ErrLocked at once when another process holds
// it. It returns the unlock function. The lock dies with the process, so
// a killed holder never wedges the next one.
func TryLock(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening lock %s: %w", path, Explain(path, err))
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, ErrLocked
		}
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	return func() {
		unix.Flock(int(f.Fd()), unix.LOCK_UN)
		f.Close()
	}, nil
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
		return Explain(dst, err)
	}
	return Explain(dst, out.Close())
}
