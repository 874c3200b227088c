package channel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/pkg/sftp"
)

// The guest is not trusted: whatever its SFTP server lists or answers, a
// download writes, creates and chmods nothing outside the copy it makes.
//
//   - Every host operation goes through an os.Root opened on the directory
//     that holds the copy, then one per directory of the copy, with single
//     file names checked beforehand: a name from the guest that is empty,
//     ".", ".." or holds a "/" stops the copy, and so does a name listed
//     twice in one directory.
//   - Nothing is written or chmodded through a symlink. A file is created
//     afresh (O_CREAT|O_EXCL, which never follows a symlink) after whatever
//     was at its name is removed; a directory is entered only after Lstat
//     said it is one, and the handle opened is checked to be that same
//     directory; modes are set with fchmod on open handles.
//   - Setuid, setgid and sticky bits are copied only when asked
//     (CopyOptions.PreserveSpecialBits): a guest file made 4755 must not
//     become a setuid binary owned by the host user.
//   - A guest symlink is recreated only when its target is relative and
//     cannot lead out of the copy: a run of leading ".." no longer than the
//     link's depth inside the copy, then names only. Others are skipped
//     with a warning (CopyOptions.Warn). With names only after the leading
//     "..", no chain of such links can climb higher than its own text
//     (a link s -> "." makes "s/../x" resolve beside the copy, not in it).
//     A guest path that is itself a symlink is refused: any target of it
//     lies outside the copy.
//   - Limits: MaxBytes (optional) on content, maxDepth on directories;
//     progress and errors say how much was copied, and a partly written
//     file is removed.

// CopyOptions tune Upload and Download.
type CopyOptions struct {
	// PreserveSpecialBits copies setuid, setgid and sticky bits; without
	// it only the permission bits (rwx for user, group, others) are.
	PreserveSpecialBits bool
	// MaxBytes, when positive, stops the copy with an error wrapping
	// ErrCopyLimit before more than this much file content is written.
	MaxBytes int64
	// Warn receives what the copy skipped (guest symlinks that could lead
	// out of the copy). Nil discards it.
	Warn func(msg string)
	// Progress, when set, is called as content is copied.
	Progress func(Progress)
}

// Progress is how far a copy got.
type Progress struct {
	Files int   // regular files started
	Bytes int64 // file content copied
}

// notExistError: a guest path (or the directory a copy goes into) that
// does not exist, named as such; it matches fs.ErrNotExist.
type notExistError struct{ what string }

func (e *notExistError) Error() string { return e.what + " does not exist" }
func (e *notExistError) Unwrap() error { return fs.ErrNotExist }

// guestPath is remote as the guest resolves it (a relative path is in its
// home directory), for messages.
func guestPath(sc *sftp.Client, remote string) string {
	if abs, err := sc.RealPath(remote); err == nil && abs != "" {
		return abs
	}
	return remote
}

// ErrCopyLimit is wrapped by the error of a copy stopped by
// CopyOptions.MaxBytes.
var ErrCopyLimit = errors.New("copy size limit reached")

// maxDepth bounds how deep a download goes: a guest can answer with an
// endless chain of directories.
const maxDepth = 1000

// Upload copies the local file or directory tree to the guest path remote
// (remote names the copy itself, not a directory to put it in). Regular
// files, directories and symlinks are copied, with their permission bits.
// Host symlinks are recreated as symlinks, never followed.
func (c *Client) Upload(ctx context.Context, local, remote string, o CopyOptions) error {
	sc, stop, err := c.sftp(ctx)
	if err != nil {
		return fmt.Errorf("upload %s: %w", local, err)
	}
	defer stop()
	if err := upload(ctx, sc, local, remote, o); err != nil {
		return fmt.Errorf("upload %s to guest %s: %w", local, remote, ctxErr(ctx, err))
	}
	return nil
}

// Download copies the guest file or directory tree remote to local (which
// names the copy itself), the mirror image of Upload but without trusting
// the guest: see the comment at the top of this file.
func (c *Client) Download(ctx context.Context, remote, local string, o CopyOptions) error {
	sc, stop, err := c.sftp(ctx)
	if err != nil {
		return fmt.Errorf("download %s: %w", remote, err)
	}
	defer stop()
	if err := download(ctx, sc, remote, local, o); err != nil {
		return fmt.Errorf("download guest %s to %s: %w", remote, local, ctxErr(ctx, err))
	}
	return nil
}

// concurrentRequests is how many reads or writes of one file are in
// flight at once: they hide the guest channel's latency (virtio-serial,
// and an emulated CPU under TCG), as scp's SFTP client does with its 64.
const concurrentRequests = 64

// sftpOptions configure the sftp client of Upload and Download.
func sftpOptions() []sftp.ClientOption {
	return []sftp.ClientOption{
		sftp.UseConcurrentWrites(true), sftp.UseConcurrentReads(true),
		sftp.MaxConcurrentRequestsPerFile(concurrentRequests),
	}
}

// sftp opens an sftp session that is torn down when ctx ends, which aborts
// any transfer in flight.
func (c *Client) sftp(ctx context.Context) (*sftp.Client, func(), error) {
	sc, err := sftp.NewClient(c.ssh, sftpOptions()...)
	if err != nil {
		return nil, nil, fmt.Errorf("starting sftp: %w", err)
	}
	stopCtx := context.AfterFunc(ctx, func() { sc.Close() })
	return sc, func() { stopCtx(); sc.Close() }, nil
}

func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return err
}

// tally counts what a copy did, for progress, the size limit and errors.
type tally struct {
	o     CopyOptions
	files int
	bytes int64
}

func (t *tally) mode(m fs.FileMode) fs.FileMode {
	keep := fs.ModePerm
	if t.o.PreserveSpecialBits {
		keep |= fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky
	}
	return m & keep
}

func (t *tally) warn(format string, args ...any) {
	if t.o.Warn != nil {
		t.o.Warn(fmt.Sprintf(format, args...))
	}
}

func (t *tally) startFile() {
	t.files++
	t.progress()
}

func (t *tally) progress() {
	if t.o.Progress != nil {
		t.o.Progress(Progress{Files: t.files, Bytes: t.bytes})
	}
}

// take accounts for n more bytes, or refuses them over the limit.
func (t *tally) take(n int) error {
	if t.o.MaxBytes > 0 && t.bytes+int64(n) > t.o.MaxBytes {
		return fmt.Errorf("%w: more than %s", ErrCopyLimit, humanBytes(t.o.MaxBytes))
	}
	return nil
}

func (t *tally) sofar() string {
	return fmt.Sprintf("%s in %d files copied so far", humanBytes(t.bytes), t.files)
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d bytes", n)
}

// countingWriter writes file content to the host, within the limit; err
// keeps the host's own error apart from the guest's read errors.
type countingWriter struct {
	t   *tally
	w   io.Writer
	err error
}

func (c *countingWriter) Write(p []byte) (int, error) {
	if err := c.t.take(len(p)); err != nil {
		c.err = err
		return 0, err
	}
	n, err := c.w.Write(p)
	c.t.bytes += int64(n)
	c.t.progress()
	if err != nil {
		c.err = err
	}
	return n, err
}

// countingReader reads host file content for an upload.
type countingReader struct {
	t *tally
	r io.Reader
}

func (c *countingReader) Read(p []byte) (int, error) {
	if err := c.t.take(len(p)); err != nil {
		// Only refuse what would really go over the limit.
		if rest := c.t.o.MaxBytes - c.t.bytes; rest > 0 {
			p = p[:rest]
		} else {
			return 0, err
		}
	}
	n, err := c.r.Read(p)
	c.t.bytes += int64(n)
	c.t.progress()
	return n, err
}

// splitLocal splits a host path into the directory that holds it and its
// name, for an os.Root on the former. A path that names no entry of its
// own (".", "..", "/") gives the directory itself and ".".
func splitLocal(local string) (dir, name string) {
	clean := filepath.Clean(local)
	name = filepath.Base(clean)
	if name == "." || name == ".." || name == string(filepath.Separator) {
		return clean, "."
	}
	return filepath.Dir(clean), name
}

// openDir opens the directory name inside dir as a root of its own after
// checking that it is a directory and no symlink: if name is replaced
// between the check and the open, the handle is not the directory checked
// and the copy stops.
func openDir(dir *os.Root, name string) (*os.Root, error) {
	host := filepath.Join(dir.Name(), name)
	fi, err := dir.Lstat(name)
	if err != nil {
		return nil, err
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("%s is not a directory", host)
	}
	sub, err := dir.OpenRoot(name)
	if err != nil {
		return nil, err
	}
	st, err := sub.Stat(".")
	if err != nil {
		sub.Close()
		return nil, err
	}
	if !os.SameFile(fi, st) {
		sub.Close()
		return nil, fmt.Errorf("%s changed during the copy (replaced by a symlink?)", host)
	}
	return sub, nil
}

// chmodDir sets the mode of the directory a root is open on, by handle.
func chmodDir(dir *os.Root, mode fs.FileMode) error {
	f, err := dir.Open(".")
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Chmod(mode)
}

// validName reports whether a name from a guest directory listing is one
// file name: not empty, ".", ".." and without a "/" (the sftp client keeps
// only the last element of a name, so "a/.." arrives as "..", "../" as
// ".." and "/" as "/").
func validName(name string) bool {
	return name != "" && name != "." && name != ".." && !strings.ContainsAny(name, "/\x00")
}

// unsafeLink says why a guest symlink target could lead out of the copy
// ("" when it cannot), for a link in a directory depth levels below the
// copy's top (0: in the top directory).
func unsafeLink(target string, depth int) string {
	if target == "" {
		return "empty target"
	}
	if path.IsAbs(target) {
		return "absolute target"
	}
	up, named := 0, false
	for _, c := range strings.Split(target, "/") {
		switch c {
		case "", ".":
		case "..":
			if named {
				return `".." after a name (through another symlink it can climb out of the copy)`
			}
			up++
		default:
			named = true
		}
	}
	if up > depth {
		return "it leads out of the copy"
	}
	return ""
}

func upload(ctx context.Context, sc *sftp.Client, local, remote string, o CopyOptions) error {
	dir, name := splitLocal(local)
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	u := &uploader{tally: tally{o: o}, sc: sc}
	if err := u.put(ctx, root, name, remote); err != nil {
		if u.files > 0 {
			return fmt.Errorf("%w (%s; the copy is incomplete)", err, u.sofar())
		}
		return err
	}
	return nil
}

type uploader struct {
	tally
	sc *sftp.Client
}

// put uploads the entry name of the host directory dir. Reading goes
// through the root: the tree is read as it is, a symlink is sent as a
// symlink and nothing outside the tree is opened.
func (u *uploader) put(ctx context.Context, dir *os.Root, name, remote string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	host := filepath.Join(dir.Name(), name)
	fi, err := dir.Lstat(name)
	if err != nil {
		return err
	}
	switch {
	case fi.Mode().IsRegular():
		return u.file(dir, name, remote, fi)
	case fi.Mode()&fs.ModeSymlink != 0:
		target, err := dir.Readlink(name)
		if err != nil {
			return err
		}
		_ = u.sc.Remove(remote)
		if err := u.sc.Symlink(target, remote); err != nil {
			return u.createErr("symlink", remote, err)
		}
		return nil
	case fi.IsDir():
		sub, err := openDir(dir, name)
		if err != nil {
			return err
		}
		defer sub.Close()
		// Writable while filling it; the real mode is set afterwards so a
		// read-only directory can still be populated.
		if err := u.sc.Mkdir(remote); err != nil {
			if st, serr := u.sc.Lstat(remote); serr != nil || !st.IsDir() {
				return u.createErr("mkdir", remote, err)
			}
		}
		if err := u.sc.Chmod(remote, 0o700); err != nil {
			return err
		}
		f, err := sub.Open(".")
		if err != nil {
			return err
		}
		entries, err := f.ReadDir(-1)
		f.Close()
		if err != nil {
			return err
		}
		for _, e := range entries {
			if err := u.put(ctx, sub, e.Name(), path.Join(remote, e.Name())); err != nil {
				return err
			}
		}
		return u.sc.Chmod(remote, u.mode(fi.Mode()))
	}
	return fmt.Errorf("%s: unsupported file type %v", host, fi.Mode().Type())
}

// createErr explains why the guest path remote could not be created: a
// directory on its way that does not exist is named.
func (u *uploader) createErr(op, remote string, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		dir := guestPath(u.sc, path.Dir(remote))
		if _, serr := u.sc.Stat(dir); errors.Is(serr, fs.ErrNotExist) {
			return &notExistError{what: "guest directory " + dir}
		}
	}
	return fmt.Errorf("%s %s: %w", op, remote, err)
}

func (u *uploader) file(dir *os.Root, name, remote string, fi fs.FileInfo) error {
	host := filepath.Join(dir.Name(), name)
	// The root follows a symlink swapped in since the Lstat only inside
	// the tree, and then the handle is not the file checked: refused.
	// O_NONBLOCK: a FIFO swapped in does not hang the open.
	src, err := dir.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return err
	}
	defer src.Close()
	st, err := src.Stat()
	if err != nil {
		return err
	}
	if !os.SameFile(fi, st) || !st.Mode().IsRegular() {
		return fmt.Errorf("%s changed during the copy", host)
	}
	dst, err := u.sc.OpenFile(remote, os.O_WRONLY|os.O_CREATE|os.O_TRUNC)
	if err != nil {
		return u.createErr("create", remote, err)
	}
	u.startFile()
	// Concurrent writes whatever the reader: File.ReadFrom goes
	// concurrent only for a reader whose size it can tell, which the
	// counting reader hides.
	if _, err := dst.ReadFromWithConcurrency(&countingReader{t: &u.tally, r: src}, concurrentRequests); err != nil {
		dst.Close()
		return fmt.Errorf("write %s: %w", remote, err)
	}
	if err := dst.Close(); err != nil {
		return fmt.Errorf("close %s: %w", remote, err)
	}
	return u.sc.Chmod(remote, u.mode(fi.Mode()))
}

func download(ctx context.Context, sc *sftp.Client, remote, local string, o CopyOptions) error {
	dir, name := splitLocal(local)
	if name == "." {
		return fmt.Errorf("%s: the destination must name the copy (DIR/NAME)", local)
	}
	fi, err := sc.Lstat(remote)
	if errors.Is(err, fs.ErrNotExist) {
		return &notExistError{what: "guest " + guestPath(sc, remote)}
	}
	if err != nil {
		return err
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		target, _ := sc.ReadLink(remote)
		return fmt.Errorf("guest %s is a symlink (to %q), which cp does not recreate on the host: its target could be anywhere; copy the target itself", remote, target)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	d := &downloader{tally: tally{o: o}, sc: sc}
	if err := d.get(ctx, root, name, remote, fi, -1); err != nil {
		if d.files > 0 {
			return fmt.Errorf("%w (%s; the copy is incomplete)", err, d.sofar())
		}
		return err
	}
	return nil
}

type downloader struct {
	tally
	sc *sftp.Client
}

// get copies the guest entry remote (fi, as the guest described it) to
// name in the host directory dir, which is depth levels below the copy's
// top (-1: dir holds the copy).
func (d *downloader) get(ctx context.Context, dir *os.Root, name, remote string, fi fs.FileInfo, depth int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	switch {
	case fi.Mode().IsRegular():
		return d.file(dir, name, remote, fi.Mode())
	case fi.Mode()&fs.ModeSymlink != 0:
		return d.symlink(dir, name, remote, depth)
	case fi.IsDir():
		return d.dir(ctx, dir, name, remote, fi.Mode(), depth+1)
	}
	return fmt.Errorf("guest %s: unsupported file type %v", remote, fi.Mode().Type())
}

// makeRoom clears name in dir for a new entry: a directory stays when a
// directory is wanted; a symlink (to anything) is removed, never
// followed; so is any other non-directory when a file or symlink is
// wanted. It reports whether a directory is there.
func makeRoom(dir *os.Root, name string, forDir bool) (bool, error) {
	host := filepath.Join(dir.Name(), name)
	fi, err := dir.Lstat(name)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	case err != nil:
		return false, err
	case fi.IsDir() && forDir:
		return true, nil
	case fi.IsDir():
		return false, fmt.Errorf("%s is a directory on the host, not on the guest", host)
	case forDir && fi.Mode()&fs.ModeSymlink == 0:
		return false, fmt.Errorf("%s exists on the host and is not a directory", host)
	}
	return false, dir.Remove(name)
}

func (d *downloader) file(dir *os.Root, name, remote string, mode fs.FileMode) error {
	host := filepath.Join(dir.Name(), name)
	src, err := d.sc.Open(remote)
	if err != nil {
		return err
	}
	defer src.Close()
	if _, err := makeRoom(dir, name, false); err != nil {
		return err
	}
	// O_EXCL: an entry that appeared since makeRoom (a symlink, say) is
	// an error, never opened.
	dst, err := dir.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	d.startFile()
	w := &countingWriter{t: &d.tally, w: dst}
	_, err = src.WriteTo(w)
	switch {
	case w.err != nil:
		err = fmt.Errorf("writing %s: %w", host, w.err)
	case err != nil:
		err = fmt.Errorf("reading guest %s: %w", remote, err)
	default:
		// By handle, and explicit: the umask must not eat mode bits.
		err = dst.Chmod(d.mode(mode))
	}
	if cerr := dst.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("writing %s: %w", host, cerr)
	}
	if err != nil {
		_ = dir.Remove(name) // a partial file only takes space
	}
	return err
}

func (d *downloader) symlink(dir *os.Root, name, remote string, depth int) error {
	target, err := d.sc.ReadLink(remote)
	if err != nil {
		return err
	}
	if why := unsafeLink(target, depth); why != "" {
		d.warn("skipped guest symlink %s -> %s: %s", remote, target, why)
		return nil
	}
	if _, err := makeRoom(dir, name, false); err != nil {
		return err
	}
	return dir.Symlink(target, name)
}

// dir copies a guest directory to name in parent; depth is the new
// directory's own depth in the copy (0: the copy's top).
func (d *downloader) dir(ctx context.Context, parent *os.Root, name, remote string, mode fs.FileMode, depth int) error {
	if depth >= maxDepth {
		return fmt.Errorf("guest %s: more than %d directories deep", remote, maxDepth)
	}
	entries, err := d.sc.ReadDir(remote)
	if err != nil {
		return err
	}
	seen := make(map[string]bool, len(entries))
	for _, e := range entries {
		n := e.Name()
		if !validName(n) {
			return fmt.Errorf("guest directory %s lists an entry named %q: not a file name", remote, n)
		}
		if seen[n] {
			return fmt.Errorf("guest directory %s lists %q twice", remote, n)
		}
		seen[n] = true
	}
	exists, err := makeRoom(parent, name, true)
	if err != nil {
		return err
	}
	if !exists {
		if err := parent.Mkdir(name, 0o700); err != nil {
			return err
		}
	}
	sub, err := openDir(parent, name)
	if err != nil {
		return err
	}
	defer sub.Close()
	// Writable while filling it; the real mode is set afterwards so a
	// read-only directory can still be populated.
	if err := chmodDir(sub, 0o700); err != nil {
		return err
	}
	for _, e := range entries {
		child := path.Join(remote, e.Name())
		fi, err := d.sc.Lstat(child)
		if err != nil {
			return err
		}
		if err := d.get(ctx, sub, e.Name(), child, fi, depth); err != nil {
			return err
		}
	}
	return chmodDir(sub, d.mode(mode))
}
