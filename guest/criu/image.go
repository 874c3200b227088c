// Package criu reads and rewrites the memory part of a CRIU image
// directory, so that a process restored by `criu restore` runs from pages
// someone else copied (the migrator's tracker-built image) instead of the
// pages CRIU read at dump time.
//
// CRIU (3.x) keeps a process's private memory in two files per task:
//
//	pagemap-PID.img  u32 IMG_COMMON_MAGIC, u32 PAGEMAP_MAGIC, then
//	                 protobuf messages, each preceded by its u32 length:
//	                 one pagemap_head {pages_id}, then pagemap_entry
//	                 {vaddr, nr_pages, in_parent, flags} in address order
//	pages-ID.img     raw page contents, no header: nr_pages pages for
//	                 every entry whose flags have PE_PRESENT, in the order
//	                 of the entries
//
// Entries without PE_PRESENT (PE_PARENT: in a parent image; lazy pages)
// have no data here. Shared memory has its own pagemap-shmem-*.img.
package criu

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"ldtlab/guest/result"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"google.golang.org/protobuf/encoding/protowire"
)

// PageSize is x86-64's base page size.
const PageSize = 4096

// Image magics (criu/include/magic.h).
const (
	ImgCommonMagic = 0x54564319
	PagemapMagic   = 0x56084025
)

// Pagemap entry flags (criu/include/page-read.h).
const (
	PEParent  = 1 << 0
	PELazy    = 1 << 1
	PEPresent = 1 << 2
)

// Entry is one pagemap_entry: NrPages pages from Vaddr.
type Entry struct {
	Vaddr    uint64
	NrPages  uint32
	InParent bool
	Flags    uint32
	HasFlags bool
}

// Present tells whether the entry's pages are stored in the pages image.
// Images without flags (older CRIU) store every entry not in the parent.
func (e Entry) Present() bool {
	if !e.HasFlags {
		return !e.InParent
	}
	return e.Flags&PEPresent != 0
}

// Pagemap is one decoded pagemap-*.img.
type Pagemap struct {
	PagesID uint32
	Entries []Entry
}

// PresentPages is the number of pages the pages image must hold.
func (p *Pagemap) PresentPages() int {
	n := 0
	for _, e := range p.Entries {
		if e.Present() {
			n += int(e.NrPages)
		}
	}
	return n
}

// ReadPagemap decodes a pagemap image.
func ReadPagemap(path string) (*Pagemap, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pm, err := DecodePagemap(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return pm, nil
}

// DecodePagemap decodes the bytes of a pagemap image.
func DecodePagemap(b []byte) (*Pagemap, error) {
	if len(b) < 8 {
		return nil, errors.New("pagemap image too short for its magic")
	}
	if m := binary.LittleEndian.Uint32(b); m != ImgCommonMagic {
		return nil, fmt.Errorf("bad image magic %#x (want %#x)", m, ImgCommonMagic)
	}
	if m := binary.LittleEndian.Uint32(b[4:]); m != PagemapMagic {
		return nil, fmt.Errorf("bad pagemap magic %#x (want %#x)", m, PagemapMagic)
	}
	b = b[8:]
	pm := &Pagemap{}
	first := true
	for len(b) > 0 {
		if len(b) < 4 {
			return nil, errors.New("truncated entry size")
		}
		n := int(binary.LittleEndian.Uint32(b))
		b = b[4:]
		if n > len(b) {
			return nil, fmt.Errorf("entry of %d bytes, %d left", n, len(b))
		}
		msg := b[:n]
		b = b[n:]
		if first {
			id, err := decodeHead(msg)
			if err != nil {
				return nil, fmt.Errorf("pagemap_head: %w", err)
			}
			pm.PagesID, first = id, false
			continue
		}
		e, err := decodeEntry(msg)
		if err != nil {
			return nil, fmt.Errorf("pagemap_entry %d: %w", len(pm.Entries), err)
		}
		pm.Entries = append(pm.Entries, e)
	}
	if first {
		return nil, errors.New("no pagemap_head")
	}
	return pm, nil
}

// fields walks a protobuf message, calling f for every varint field
// (the only kind pagemap messages have); other wire types are skipped.
func fields(msg []byte, f func(num protowire.Number, v uint64)) error {
	for len(msg) > 0 {
		num, typ, n := protowire.ConsumeTag(msg)
		if n < 0 {
			return protowire.ParseError(n)
		}
		msg = msg[n:]
		if typ == protowire.VarintType {
			v, n := protowire.ConsumeVarint(msg)
			if n < 0 {
				return protowire.ParseError(n)
			}
			f(num, v)
			msg = msg[n:]
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, msg)
		if n < 0 {
			return protowire.ParseError(n)
		}
		msg = msg[n:]
	}
	return nil
}

func decodeHead(msg []byte) (uint32, error) {
	var id uint32
	seen := false
	err := fields(msg, func(num protowire.Number, v uint64) {
		if num == 1 {
			id, seen = uint32(v), true
		}
	})
	if err == nil && !seen {
		err = errors.New("no pages_id")
	}
	return id, err
}

func decodeEntry(msg []byte) (Entry, error) {
	var e Entry
	var haveAddr, haveN bool
	err := fields(msg, func(num protowire.Number, v uint64) {
		switch num {
		case 1:
			e.Vaddr, haveAddr = v, true
		case 2:
			e.NrPages, haveN = uint32(v), true
		case 3:
			e.InParent = v != 0
		case 4:
			e.Flags, e.HasFlags = uint32(v), true
		}
	})
	if err == nil && (!haveAddr || !haveN) {
		err = errors.New("missing vaddr or nr_pages")
	}
	if err == nil && e.Vaddr%PageSize != 0 {
		err = fmt.Errorf("unaligned vaddr %#x", e.Vaddr)
	}
	return e, err
}

// EncodePagemap is the inverse of DecodePagemap (tests build images with it).
func EncodePagemap(pm *Pagemap) []byte {
	var out []byte
	out = binary.LittleEndian.AppendUint32(out, ImgCommonMagic)
	out = binary.LittleEndian.AppendUint32(out, PagemapMagic)
	put := func(msg []byte) {
		out = binary.LittleEndian.AppendUint32(out, uint32(len(msg)))
		out = append(out, msg...)
	}
	var head []byte
	head = protowire.AppendTag(head, 1, protowire.VarintType)
	head = protowire.AppendVarint(head, uint64(pm.PagesID))
	put(head)
	for _, e := range pm.Entries {
		var m []byte
		m = protowire.AppendTag(m, 1, protowire.VarintType)
		m = protowire.AppendVarint(m, e.Vaddr)
		m = protowire.AppendTag(m, 2, protowire.VarintType)
		m = protowire.AppendVarint(m, uint64(e.NrPages))
		if e.InParent {
			m = protowire.AppendTag(m, 3, protowire.VarintType)
			m = protowire.AppendVarint(m, 1)
		}
		if e.HasFlags {
			m = protowire.AppendTag(m, 4, protowire.VarintType)
			m = protowire.AppendVarint(m, uint64(e.Flags))
		}
		put(m)
	}
	return out
}

// PageSource gives the replacement content of the page at addr, or nil
// when it has none (the page is then written as zeros: whoever built the
// image never received it).
type PageSource func(addr uint64) []byte

// Source is what Replace writes and how it tells differences apart.
type Source struct {
	Page PageSource
	// Settled, when set, tells the pages whose replacement is known to
	// equal the process's memory at some earlier moment (the freeze): a
	// difference there is a change made after it, counted apart
	// (ChangedAfter), not in Differ.
	Settled func(addr uint64) bool
}

// Stats is result.CRIUReplace: the wire type is shared with the host.
type Stats = result.CRIUReplace

// Replace overwrites, in every task pagemap of dir, each page CRIU stored
// with src's copy (zeros where src has none), and counts how the two
// differ: after it, `criu restore -D dir` runs the process from src's
// pages. Page positions and the pagemaps are left as they are.
func Replace(dir string, src Source) (*Stats, error) {
	all, err := filepath.Glob(filepath.Join(dir, "pagemap-*.img"))
	if err != nil {
		return nil, err
	}
	sort.Strings(all)
	st := &Stats{}
	for _, p := range all {
		if strings.HasPrefix(filepath.Base(p), "pagemap-shmem-") {
			st.ShmemPagemaps = append(st.ShmemPagemaps, filepath.Base(p))
			continue
		}
		if err := replaceOne(dir, p, src, st); err != nil {
			return st, err
		}
		st.Pagemaps = append(st.Pagemaps, filepath.Base(p))
	}
	if len(st.Pagemaps) == 0 {
		return st, fmt.Errorf("no pagemap-PID.img in %s: not a CRIU dump", dir)
	}
	return st, nil
}

func replaceOne(dir, path string, src Source, st *Stats) error {
	pm, err := ReadPagemap(path)
	if err != nil {
		return err
	}
	pages := filepath.Join(dir, fmt.Sprintf("pages-%d.img", pm.PagesID))
	f, err := os.OpenFile(pages, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if want := int64(pm.PresentPages()) * PageSize; fi.Size() != want {
		return fmt.Errorf("%s holds %d bytes, its pagemap %s lists %d pages (%d bytes)", filepath.Base(pages), fi.Size(), filepath.Base(path), pm.PresentPages(), want)
	}
	zero := make([]byte, PageSize)
	old := make([]byte, PageSize)
	var off int64
	for _, e := range pm.Entries {
		if !e.Present() {
			continue
		}
		for i := uint64(0); i < uint64(e.NrPages); i++ {
			addr := e.Vaddr + i*PageSize
			if _, err := f.ReadAt(old, off); err != nil && !errors.Is(err, io.EOF) {
				return fmt.Errorf("%s at %d: %w", filepath.Base(pages), off, err)
			}
			st.Pages++
			repl := src.Page(addr)
			absent := repl == nil
			if absent {
				repl = zero
				st.Absent++
			} else if len(repl) != PageSize {
				return fmt.Errorf("source page %#x has %d bytes", addr, len(repl))
			}
			if bytes.Equal(old, repl) {
				st.Same++
			} else {
				what := "differs from"
				switch {
				case absent:
					what = "missing from the image (zeros written), CRIU has data for"
					st.Differ++
				case src.Settled != nil && src.Settled(addr):
					what = "equals the memory at the freeze but was changed after it, per"
					st.ChangedAfter++
				default:
					st.Differ++
				}
				if len(st.DifferAt) < 64 {
					st.DifferAt = append(st.DifferAt, addr)
				}
				if len(st.Samples) < 8 {
					st.Samples = append(st.Samples, fmt.Sprintf("page %#x %s the frozen process (%s): %s", addr, what, filepath.Base(path), byteDiff(old, repl)))
				}
				if _, err := f.WriteAt(repl, off); err != nil {
					return fmt.Errorf("%s at %d: %w", filepath.Base(pages), off, err)
				}
			}
			off += PageSize
		}
	}
	return f.Sync()
}

// byteDiff says how two pages differ: the number of differing bytes and
// the first few, as offset: CRIU's byte→the replacement's.
func byteDiff(criu, repl []byte) string {
	n := 0
	var first []string
	for i := range criu {
		if criu[i] != repl[i] {
			n++
			if len(first) < 4 {
				first = append(first, fmt.Sprintf("+%#x %02x→%02x", i, criu[i], repl[i]))
			}
		}
	}
	return fmt.Sprintf("%d bytes differ (%s)", n, strings.Join(first, ", "))
}
