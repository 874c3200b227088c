package initramfs

import (
	"bufio"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"
)

// Archive collects entries by archive path and writes them as one newc
// archive sorted by path, so that the bytes depend only on what was added,
// not on the order of the Add calls or on host file metadata. Sorting also
// puts every directory before its contents, as the kernel's unpacker needs.
//
// The zero Archive is ready to use. An Archive is not safe for concurrent use.
type Archive struct {
	entries map[string]*node
}

type node struct {
	Entry
	host     string // for regular files read at WriteTo time; "" if Data is used
	implicit bool   // a parent directory nobody added explicitly
}

// implicitDirMode is the mode of parent directories created automatically.
const implicitDirMode = fs.ModeDir | 0o755

// rootMode is the mode of the archive's "." entry, which sets the mode of
// the guest's /.
const rootMode = fs.ModeDir | 0o755

// cleanPath normalises an archive path: "/dev//console" and "dev/console"
// name the same entry. Paths escaping the root or naming it are refused.
func cleanPath(p string) (string, error) {
	if p == "" {
		return "", fmt.Errorf("initramfs: empty path")
	}
	c := path.Clean("/" + p)[1:]
	if c == "" {
		return "", fmt.Errorf("initramfs: %q names the archive root", p)
	}
	for _, part := range strings.Split(strings.TrimPrefix(p, "/"), "/") {
		if part == ".." {
			return "", fmt.Errorf("initramfs: %q contains ..", p)
		}
	}
	if strings.ContainsRune(c, 0) || c == trailerName {
		return "", fmt.Errorf("initramfs: invalid path %q", p)
	}
	return c, nil
}

// add inserts n at its cleaned path after creating missing parents.
func (a *Archive) add(p string, n *node) error {
	c, err := cleanPath(p)
	if err != nil {
		return err
	}
	if a.entries == nil {
		a.entries = make(map[string]*node)
	}
	// Check everything before changing anything, so that a failed Add
	// leaves the archive as it was.
	var missing []string
	for dir := path.Dir(c); dir != "."; dir = path.Dir(dir) {
		if parent, ok := a.entries[dir]; ok {
			if !parent.Mode.IsDir() {
				return fmt.Errorf("initramfs: %s: parent %s is not a directory", c, dir)
			}
			continue
		}
		missing = append(missing, dir)
	}
	if old, ok := a.entries[c]; ok {
		// An explicit directory may refine one created as a parent.
		if !(old.implicit && n.Mode.IsDir()) {
			return fmt.Errorf("initramfs: duplicate entry %s", c)
		}
	}
	for _, dir := range missing {
		a.entries[dir] = &node{Entry: Entry{Path: dir, Mode: implicitDirMode}, implicit: true}
	}
	n.Path = c
	a.entries[c] = n
	return nil
}

// checkPerm refuses type bits where only permissions make sense.
func checkPerm(p string, mode fs.FileMode) error {
	if mode.Type() != 0 {
		return fmt.Errorf("initramfs: %s: mode %v must hold permission bits only", p, mode)
	}
	return nil
}

// AddDir adds a directory. mode holds permission bits (fs.ModeDir is implied).
func (a *Archive) AddDir(p string, mode fs.FileMode) error {
	if err := checkPerm(p, mode); err != nil {
		return err
	}
	return a.add(p, &node{Entry: Entry{Mode: fs.ModeDir | mode}})
}

// AddFile adds a regular file with the given contents and permission bits.
// data is not copied.
func (a *Archive) AddFile(p string, mode fs.FileMode, data []byte) error {
	if err := checkPerm(p, mode); err != nil {
		return err
	}
	return a.add(p, &node{Entry: Entry{Mode: mode, Data: data}})
}

// AddHostFile adds a regular file whose contents are read from hostPath
// when the archive is written (large modules and binaries stay out of
// memory). Only the contents are used: mode replaces the host file's
// permissions and its owner and times are ignored, for reproducibility.
func (a *Archive) AddHostFile(p, hostPath string, mode fs.FileMode) error {
	if err := checkPerm(p, mode); err != nil {
		return err
	}
	fi, err := os.Stat(hostPath)
	if err != nil {
		return fmt.Errorf("initramfs: %s: %w", p, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("initramfs: %s: host file %s is not a regular file", p, hostPath)
	}
	return a.add(p, &node{Entry: Entry{Mode: mode}, host: hostPath})
}

// AddSymlink adds a symbolic link to target (stored verbatim, mode 0777).
func (a *Archive) AddSymlink(p, target string) error {
	if target == "" {
		return fmt.Errorf("initramfs: %s: empty symlink target", p)
	}
	return a.add(p, &node{Entry: Entry{Mode: fs.ModeSymlink | 0o777, Data: []byte(target)}})
}

// AddCharDev adds a character device node, e.g. "dev/console", 0600, 5, 1.
// The kernel creates it at unpack time, before devtmpfs is mounted, which is
// what lets /init have a console.
func (a *Archive) AddCharDev(p string, mode fs.FileMode, major, minor uint32) error {
	if err := checkPerm(p, mode); err != nil {
		return err
	}
	return a.add(p, &node{Entry: Entry{Mode: fs.ModeDevice | fs.ModeCharDevice | mode, Major: major, Minor: minor}})
}

// Len is the number of entries, implicit parent directories included.
func (a *Archive) Len() int { return len(a.entries) }

// WriteTo writes the archive, trailer included, and returns the bytes written.
func (a *Archive) WriteTo(w io.Writer) (int64, error) {
	paths := make([]string, 0, len(a.entries))
	for p := range a.entries {
		paths = append(paths, p)
	}
	slices.Sort(paths)

	cnt := &countingWriter{w: w}
	bw := bufio.NewWriterSize(cnt, 1<<16)
	cw := NewWriter(bw)
	// The root's own entry first: the kernel unpacks into a tmpfs whose
	// root is 1777 (anyone in the guest could plant files in /) and
	// chmods "." like any directory it unpacks.
	err := cw.WriteEntry(Entry{Path: ".", Mode: rootMode})
	for _, p := range paths {
		if err != nil {
			break
		}
		if n := a.entries[p]; n.host != "" {
			err = writeHost(cw, n)
		} else {
			err = cw.WriteEntry(n.Entry)
		}
	}
	if err == nil {
		err = cw.Close()
	}
	// Flush even after an error so the count matches what reached w.
	if ferr := bw.Flush(); err == nil {
		err = ferr
	}
	return cnt.n, err
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n += int64(n)
	return n, err
}

// writeHost streams a host file, sized from the open file so that the
// header and the copied bytes agree.
func writeHost(cw *Writer, n *node) error {
	f, err := os.Open(n.host)
	if err != nil {
		return fmt.Errorf("initramfs: %s: %w", n.Path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("initramfs: %s: %w", n.Path, err)
	}
	return cw.writeFileFrom(n.Path, n.Mode, fi.Size(), f)
}
