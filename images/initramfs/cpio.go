// Package initramfs writes the guest's initramfs: a newc ("070701") cpio
// writer and an Archive builder whose output depends only on its contents,
// so that the image cache can key it by content hash.
//
// Metadata the kernel's unpacker does not need is fixed (uid/gid 0, mtime 0,
// device 0, inode numbers in write order) because host values would make
// two builds of the same tree differ.
package initramfs

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
)

// Entry is one cpio record.
type Entry struct {
	// Path is the name stored in the archive, e.g. "dev/console".
	Path string
	// Mode holds the type (0 for a regular file, fs.ModeDir, fs.ModeSymlink,
	// fs.ModeDevice|fs.ModeCharDevice, fs.ModeDevice), the permission bits
	// and setuid/setgid/sticky (fs.ModeSetuid… or Unix 0o4000…).
	Mode fs.FileMode
	// Data is a regular file's contents or a symlink's target.
	Data []byte
	// Major and Minor are a device node's device number.
	Major, Minor uint32
}

const (
	magic       = "070701"
	headerLen   = 110 // magic + 13 fields of 8 hex digits
	trailerName = "TRAILER!!!"

	sIFMT  = 0o170000
	sIFDIR = 0o040000
	sIFREG = 0o100000
	sIFLNK = 0o120000
	sIFCHR = 0o020000
	sIFBLK = 0o060000
)

// unixMode converts an fs.FileMode to st_mode bits, rejecting types the
// initramfs has no use for (sockets, pipes, irregular files).
//
// Unix-style 0o4000/0o2000/0o1000 are accepted as well as fs.ModeSetuid &c.:
// fs.FileMode leaves those bits unused, and AddDir("tmp", 0o1777) silently
// losing its sticky bit would be a trap.
func unixMode(m fs.FileMode) (uint32, error) {
	bits := uint32(m.Perm()) | uint32(m)&0o7000
	if m&fs.ModeSetuid != 0 {
		bits |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		bits |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		bits |= 0o1000
	}
	switch m.Type() {
	case 0:
		return bits | sIFREG, nil
	case fs.ModeDir:
		return bits | sIFDIR, nil
	case fs.ModeSymlink:
		return bits | sIFLNK, nil
	case fs.ModeDevice | fs.ModeCharDevice:
		return bits | sIFCHR, nil
	case fs.ModeDevice:
		return bits | sIFBLK, nil
	}
	return 0, fmt.Errorf("unsupported file type %v", m.Type())
}

// Writer writes newc records. Call Close to write the trailer.
type Writer struct {
	w      io.Writer
	n      int64
	ino    uint32
	err    error // sticky: after a failed write the stream is unusable
	closed bool
}

// NewWriter returns a Writer on w. It does not buffer: wrap w in a
// bufio.Writer for many small records.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// Written is the number of bytes written so far.
func (w *Writer) Written() int64 { return w.n }

var zeros [4]byte

func pad4(n int) int { return (4 - n%4) % 4 }

func (w *Writer) write(b []byte) {
	if w.err != nil {
		return
	}
	n, err := w.w.Write(b)
	w.n += int64(n)
	w.err = err
}

// header writes a record's header and name, padded so that the data starts
// on a 4-byte boundary (the header and name are padded together).
func (w *Writer) header(ino, mode, nlink uint32, name string, size int64, rmajor, rminor uint32) {
	nameSize := len(name) + 1 // the NUL terminator counts
	hdr := fmt.Sprintf("%s%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		magic, ino, mode, 0, 0, nlink, 0, size, 0, 0, rmajor, rminor, nameSize, 0)
	w.write([]byte(hdr))
	w.write([]byte(name))
	w.write(zeros[:1+pad4(headerLen+nameSize)])
}

func (w *Writer) check(path string, size int64) error {
	if w.closed {
		return errors.New("initramfs: write after Close")
	}
	if w.err != nil {
		return w.err
	}
	if path == "" || strings.ContainsRune(path, 0) || path == trailerName {
		return fmt.Errorf("initramfs: invalid entry name %q", path)
	}
	if size < 0 || size > 0xFFFFFFFF {
		return fmt.Errorf("initramfs: %s: %d bytes is too large for newc", path, size)
	}
	return nil
}

// WriteEntry writes one record. Only the path's basic validity is checked:
// ordering and parent directories are the caller's business (see Archive).
func (w *Writer) WriteEntry(e Entry) error {
	if err := w.check(e.Path, int64(len(e.Data))); err != nil {
		return err
	}
	mode, err := unixMode(e.Mode)
	if err != nil {
		return fmt.Errorf("initramfs: %s: %w", e.Path, err)
	}
	var data []byte
	var rmajor, rminor uint32
	nlink := uint32(1) // >1 on a regular file makes the kernel look for hard links
	switch mode & sIFMT {
	case sIFREG, sIFLNK:
		data = e.Data
	case sIFDIR:
		nlink = 2 // "." and the entry in its parent, as for an empty directory
	case sIFCHR, sIFBLK:
		rmajor, rminor = e.Major, e.Minor
	}
	if mode&sIFMT == sIFLNK && len(data) == 0 {
		return fmt.Errorf("initramfs: %s: empty symlink target", e.Path)
	}
	if mode&sIFMT != sIFREG && mode&sIFMT != sIFLNK && len(e.Data) != 0 {
		return fmt.Errorf("initramfs: %s: data on a non-file entry", e.Path)
	}
	w.ino++
	w.header(w.ino, mode, nlink, e.Path, int64(len(data)), rmajor, rminor)
	w.write(data)
	w.write(zeros[:pad4(len(data))])
	return w.err
}

// writeFileFrom writes a regular file whose contents come from r, which
// must yield exactly size bytes. It keeps large host files out of memory.
func (w *Writer) writeFileFrom(path string, perm fs.FileMode, size int64, r io.Reader) error {
	if err := w.check(path, size); err != nil {
		return err
	}
	if perm.Type() != 0 {
		return fmt.Errorf("initramfs: %s: not a regular file mode: %v", path, perm)
	}
	mode, _ := unixMode(perm)
	w.ino++
	w.header(w.ino, mode, 1, path, size, 0, 0)
	if w.err != nil {
		return w.err
	}
	n, err := io.CopyN(w.w, r, size)
	w.n += n
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = fmt.Errorf("initramfs: %s: file shrank to %d of %d bytes while writing", path, n, size)
		}
		w.err = err
		return err
	}
	w.write(zeros[:pad4(int(size%4))])
	return w.err
}

// Close writes the TRAILER!!! record. It does not close the underlying writer.
func (w *Writer) Close() error {
	if w.closed {
		return w.err
	}
	w.closed = true
	if w.err != nil {
		return w.err
	}
	// The trailer carries nlink 1 and inode 0, as GNU cpio writes it.
	w.header(0, 0, 1, trailerName, 0, 0, 0)
	return w.err
}
