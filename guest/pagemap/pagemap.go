// Package pagemap reads /proc/PID/pagemap and /proc/kpageflags: what the
// kernel says each virtual page is (present, swapped, its frame) and
// what each frame is (part of a THP, of a large folio). The trackers,
// the scenarios, the checkpoint oracle and the self-tests all ask.
package pagemap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// PageSize is the base page size the entries are indexed by.
var PageSize = uintptr(os.Getpagesize())

// EntrySize is the size of one pagemap (and kpageflags) entry.
const EntrySize = 8

// pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
const (
	Present   = 1 << 63
	Swapped   = 1 << 62
	FilePage  = 1 << 61 // file-backed or shared anonymous page
	SoftDirty = 1 << 55
	PFNMask   = 1<<55 - 1
)

// kpageflags bits (include/uapi/linux/kernel-page-flags.h).
const (
	KPFCompoundHead = 1 << 15
	KPFCompoundTail = 1 << 16
	KPFTHP          = 1 << 22
)

// Entry is one page's pagemap entry.
type Entry uint64

func (e Entry) Present() bool   { return e&Present != 0 }
func (e Entry) Swapped() bool   { return e&Swapped != 0 }
func (e Entry) SoftDirty() bool { return e&SoftDirty != 0 }

// File tells a present page of a file (page cache) or of shared memory
// from a private anonymous one (a written copy-on-write page included).
func (e Entry) File() bool { return e&FilePage != 0 }

// PFN is the page's frame number; 0 when it is not present (or when the
// reader is not root: the kernel hides frames from others).
func (e Entry) PFN() uint64 {
	if !e.Present() {
		return 0
	}
	return uint64(e) & PFNMask
}

// File is an open pagemap. It binds the target's address space when it
// is opened, so a reused pid cannot redirect later reads.
type File struct {
	f    *os.File
	path string
}

// Open opens the pagemap of pid (0: this process).
func Open(pid int) (*File, error) {
	path := "/proc/self/pagemap"
	if pid != 0 {
		path = "/proc/" + strconv.Itoa(pid) + "/pagemap"
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	return &File{f: f, path: path}, nil
}

// Close closes the file.
func (f *File) Close() error { return f.f.Close() }

// ErrGone: the address space behind the file has exited (pagemap reads
// end early once it is torn down). It is ESRCH, as /dev/ldt says.
var ErrGone = unix.ESRCH

// ReadRaw fills b with the raw entries from the page at addr on; b's
// length is a multiple of EntrySize. It returns how many bytes were
// read: fewer than len(b), with io.EOF, past the end of the address space.
func (f *File) ReadRaw(b []byte, addr uintptr) (int, error) {
	return f.f.ReadAt(b, int64(addr/PageSize*EntrySize))
}

// Read returns the entries of the n pages from addr on.
func (f *File) Read(addr uintptr, n int) ([]Entry, error) {
	b := make([]byte, EntrySize*n)
	if _, err := f.ReadRaw(b, addr); err != nil {
		if errors.Is(err, io.EOF) {
			err = ErrGone
		}
		return nil, fmt.Errorf("read %s at %#x: %w", f.path, addr, err)
	}
	out := make([]Entry, n)
	for i := range out {
		out[i] = Entry(binary.LittleEndian.Uint64(b[EntrySize*i:]))
	}
	return out, nil
}

// Frames returns the frame of each of the n pages from addr on (0 where
// a page is not present).
func (f *File) Frames(addr uintptr, n int) ([]uint64, error) {
	es, err := f.Read(addr, n)
	if err != nil {
		return nil, err
	}
	out := make([]uint64, n)
	for i, e := range es {
		out[i] = e.PFN()
	}
	return out, nil
}

// Read returns the entries of pid's n pages from addr on (pid 0: this
// process), opening and closing the pagemap around the one read.
func Read(pid int, addr uintptr, n int) ([]Entry, error) {
	f, err := Open(pid)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Read(addr, n)
}

// PageFlags returns the kpageflags of frame pfn (needs root).
func PageFlags(pfn uint64) (uint64, error) {
	kf, err := os.Open("/proc/kpageflags")
	if err != nil {
		return 0, err
	}
	defer kf.Close()
	var b [EntrySize]byte
	if _, err := kf.ReadAt(b[:], int64(pfn)*EntrySize); err != nil {
		return 0, fmt.Errorf("read /proc/kpageflags for frame %#x: %w", pfn, err)
	}
	return binary.LittleEndian.Uint64(b[:]), nil
}

// Self returns this process's entry for the page at addr and, when it is
// present and the flags are readable, its kpageflags (0 otherwise).
func Self(addr uintptr) (e Entry, flags uint64, err error) {
	es, err := Read(0, addr, 1)
	if err != nil {
		return 0, 0, err
	}
	if e = es[0]; e.Present() {
		flags, err = PageFlags(e.PFN())
	}
	return e, flags, err
}
