// Package secfs holds the file system checks the lab makes where another
// user could have been first: a cache or state directory that must be
// ours, soak directories whose files are never read or written through
// a symlink, and logs read as regular files of bounded size.
package secfs

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrSymlink: a path that must not be followed is a symbolic link.
var ErrSymlink = errors.New("is a symbolic link, which ldtlab does not follow here")

// owner returns the uid of a FileInfo from os.Lstat/Stat.
func owner(fi fs.FileInfo) int {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return int(st.Uid)
	}
	return -1
}

// CheckPrivateDir verifies that path is a directory (not a symlink to
// one) owned by the effective uid and writable by nobody else.
func CheckPrivateDir(path string) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return err
	}
	return checkPrivate(path, fi)
}

func checkPrivate(path string, fi fs.FileInfo) error {
	if fi.Mode()&fs.ModeSymlink != 0 {
		return fmt.Errorf("%s %w", path, ErrSymlink)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", path)
	}
	if uid := owner(fi); uid != os.Geteuid() {
		return fmt.Errorf("%s is owned by uid %d, not by this user (uid %d): refusing to use it", path, uid, os.Geteuid())
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("%s is writable by other users (mode %04o): refusing to use it (chmod go-w it, or choose another directory)", path, fi.Mode().Perm())
	}
	return nil
}

// checkAncestor: a directory above a private one must not let another
// user swap what is below it: owned by root or us, and not writable by
// others unless sticky (as /tmp is).
func checkAncestor(path string, fi fs.FileInfo) error {
	uid := owner(fi)
	if uid != 0 && uid != os.Geteuid() {
		return fmt.Errorf("%s is owned by uid %d, neither root nor this user (uid %d): refusing to use what is below it", path, uid, os.Geteuid())
	}
	if fi.Mode().Perm()&0o002 != 0 && fi.Mode()&fs.ModeSticky == 0 {
		return fmt.Errorf("%s is writable by every user and not sticky (mode %04o): refusing to use what is below it", path, fi.Mode().Perm())
	}
	return nil
}

// MkdirPrivate creates dir and its missing parents (perm for the ones it
// creates) and checks the result: dir and every directory created are
// owned by us and not writable by others; the directories above them
// are owned by root or us and not open to everyone (unless sticky).
// Symlinks above dir are resolved (a home on another disk); dir itself
// must not be one.
func MkdirPrivate(dir string, perm os.FileMode) error {
	dir = filepath.Clean(dir)
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	// The missing components, from the top.
	var missing []string
	p := abs
	for {
		if _, err := os.Lstat(p); err == nil {
			break
		} else if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		missing = append([]string{p}, missing...)
		parent := filepath.Dir(p)
		if parent == p {
			break
		}
		p = parent
	}
	existing := p
	if len(missing) == 0 {
		existing = filepath.Dir(abs)
	}
	// What exists above: walk it from / after resolving symlinks.
	real, err := filepath.EvalSymlinks(existing)
	if err != nil {
		return err
	}
	for a := real; ; a = filepath.Dir(a) {
		fi, err := os.Stat(a)
		if err != nil {
			return err
		}
		if err := checkAncestor(a, fi); err != nil {
			return err
		}
		if a == filepath.Dir(a) {
			break
		}
	}
	for _, m := range missing {
		if err := os.Mkdir(m, perm); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
		if err := CheckPrivateDir(m); err != nil {
			return err
		}
	}
	return CheckPrivateDir(abs)
}

// Mkdir creates dir (one level) or accepts an existing directory, never
// a symlink in its place.
func Mkdir(dir string, perm os.FileMode) error {
	err := os.Mkdir(dir, perm)
	if err == nil || !errors.Is(err, fs.ErrExist) {
		return err
	}
	fi, lerr := os.Lstat(dir)
	if lerr != nil {
		return lerr
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return fmt.Errorf("%s %w", dir, ErrSymlink)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s exists and is not a directory", dir)
	}
	return nil
}

// OpenFile opens path without following a symlink at its last
// component, and only if it is a regular file (a FIFO or a device in its
// place is refused, never blocked on).
func OpenFile(path string, flag int, perm os.FileMode) (*os.File, error) {
	fd, err := unix.Open(path, flag|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, uint32(perm.Perm()))
	if err != nil {
		return nil, openError(path, err)
	}
	return regular(fd, path)
}

// OpenRegular opens path for reading, following symlinks (a path the
// user named), only if it is a regular file: a FIFO or a device is
// refused, never blocked on or read without end.
func OpenRegular(path string) (*os.File, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	return regular(fd, path)
}

// OpenIn opens rel below dir without following a symlink anywhere below
// dir (each component is opened with O_NOFOLLOW); the result must be a
// regular file, or a directory when flag has O_DIRECTORY.
func OpenIn(dir, rel string, flag int, perm os.FileMode) (*os.File, error) {
	rel = filepath.Clean(rel)
	if filepath.IsAbs(rel) || rel == ".." || strings.HasPrefix(rel, "../") {
		return nil, fmt.Errorf("%s: not a path below %s", rel, dir)
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: dir, Err: err}
	}
	parts := strings.Split(rel, "/")
	for i, part := range parts[:len(parts)-1] {
		nfd, err := unix.Openat(fd, part, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		unix.Close(fd)
		if err != nil {
			return nil, openError(filepath.Join(dir, filepath.Join(parts[:i+1]...)), err)
		}
		fd = nfd
	}
	path := filepath.Join(dir, rel)
	last := parts[len(parts)-1]
	ffd, err := unix.Openat(fd, last, flag|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, uint32(perm.Perm()))
	unix.Close(fd)
	if err != nil {
		return nil, openError(path, err)
	}
	if flag&unix.O_DIRECTORY != 0 {
		return os.NewFile(uintptr(ffd), path), nil
	}
	return regular(ffd, path)
}

func openError(path string, err error) error {
	if errors.Is(err, unix.ELOOP) {
		return fmt.Errorf("%s %w", path, ErrSymlink)
	}
	if errors.Is(err, unix.ENOTDIR) {
		if fi, lerr := os.Lstat(path); lerr == nil && fi.Mode()&fs.ModeSymlink != 0 {
			return fmt.Errorf("%s %w", path, ErrSymlink)
		}
	}
	if errors.Is(err, unix.ENXIO) {
		return fmt.Errorf("%s is not a regular file", path)
	}
	return &fs.PathError{Op: "open", Path: path, Err: err}
}

// regular wraps fd when it is a regular file, and clears O_NONBLOCK
// (which only served to not block on a FIFO).
func regular(fd int, path string) (*os.File, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, &fs.PathError{Op: "stat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	if fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); err == nil {
		unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl&^unix.O_NONBLOCK)
	}
	return os.NewFile(uintptr(fd), path), nil
}

// TooLargeError: a file is larger than what the lab reads of it.
type TooLargeError struct {
	Path      string
	Size, Max int64
}

func (e *TooLargeError) Error() string {
	if e.Size < 0 {
		return fmt.Sprintf("%s is larger than the %s read of it", e.Path, Size(e.Max))
	}
	return fmt.Sprintf("%s is %s, larger than the %s read of it", e.Path, Size(e.Size), Size(e.Max))
}

// Size renders a byte count for messages.
func Size(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}

// ReadAll reads f up to max bytes: more is a *TooLargeError.
func ReadAll(f *os.File, max int64) ([]byte, error) {
	if st, err := f.Stat(); err == nil && st.Mode().IsRegular() && st.Size() > max {
		return nil, &TooLargeError{Path: f.Name(), Size: st.Size(), Max: max}
	}
	return ReadLimited(f, f.Name(), max)
}

// ReadLimited reads r (named name in errors) up to max bytes.
func ReadLimited(r io.Reader, name string, max int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, &TooLargeError{Path: name, Size: -1, Max: max}
	}
	return b, nil
}

// ReadFile reads a regular file of at most max bytes, not following a
// symlink at its last component.
func ReadFile(path string, max int64) ([]byte, error) {
	f, err := OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ReadAll(f, max)
}

// ReadFileIn is ReadFile for rel below dir, following no symlink below
// dir.
func ReadFileIn(dir, rel string, max int64) ([]byte, error) {
	f, err := OpenIn(dir, rel, os.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ReadAll(f, max)
}

// Home is the user's home directory: $HOME, else (a systemd service,
// some CI) the home the passwd database gives the effective uid. It
// never falls back to a shared directory such as /tmp.
func Home() (string, error) {
	if h := os.Getenv("HOME"); h != "" {
		return h, nil
	}
	uid := strconv.Itoa(os.Geteuid())
	u, err := user.LookupId(uid)
	if err != nil {
		return "", fmt.Errorf("HOME is unset and uid %s is not in the passwd database (%v)", uid, err)
	}
	if u.HomeDir == "" {
		return "", fmt.Errorf("HOME is unset and uid %s has no home directory in the passwd database", uid)
	}
	return u.HomeDir, nil
}
