package lab

import (
	"errors"
	"fmt"
	"ldtlab/internal/fileutil"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// nameLockPath is the lock `labctl up NAME` holds while it creates the
// VM, beside the VM directories (the directory itself is what it creates).
func nameLockPath(name string) (string, error) {
	dir, err := VMDir(name)
	if err != nil {
		return "", err
	}
	return filepath.Join(filepath.Dir(dir), "."+name+".lock"), nil
}

// LockName takes the per-name lock without waiting (fileutil.ErrLocked when
// another `up` of that name holds it). unlock(true) also removes the lock
// file, for `down`: the name is free again and nothing of it stays in the
// state directory. Removing a lock file others may be opening is safe
// because every taker checks, once it holds the flock, that the path
// still names the file it locked, and starts over if not.
func LockName(name string) (unlock func(remove bool), err error) {
	path, err := nameLockPath(name)
	if err != nil {
		return nil, err
	}
	for try := 0; ; try++ {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
		if err != nil {
			return nil, fmt.Errorf("opening lock %s: %w", path, fileutil.Explain(path, err))
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, fileutil.ErrLocked
			}
			return nil, fmt.Errorf("locking %s: %w", path, err)
		}
		if sameFile(f, path) {
			return func(remove bool) {
				if remove {
					os.Remove(path) // while held: a taker that opened it retries
				}
				unix.Flock(int(f.Fd()), unix.LOCK_UN)
				f.Close()
			}, nil
		}
		// A `down` removed it between our open and our flock.
		f.Close()
		if try > 100 {
			return nil, fmt.Errorf("locking %s: it keeps being removed", path)
		}
	}
}

// sameFile reports whether path still names the open file f.
func sameFile(f *os.File, path string) bool {
	var a, b syscall.Stat_t
	if syscall.Fstat(int(f.Fd()), &a) != nil || syscall.Stat(path, &b) != nil {
		return false
	}
	return a.Dev == b.Dev && a.Ino == b.Ino
}

// ReleaseName removes the per-name lock file of a VM that is gone, unless
// an `up` of that name holds it right now (it is creating a new VM).
func ReleaseName(name string) {
	if unlock, err := LockName(name); err == nil {
		unlock(true)
	}
}
