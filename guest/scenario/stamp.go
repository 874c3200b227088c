package scenario

import (
	"encoding/binary"
	"fmt"
	"unsafe"
)

// PageSize is the x86-64 base page.
const PageSize = 4096

const pageWords = PageSize / 8

// A stamp is the 64-bit value a whole page's content derives from: word 0
// holds the stamp itself, words 1..511 a splitmix64 stream seeded by it, so
// a page that lost a write, came back as zeros or holds another page's data
// is told apart from the right content by every byte, not just a header.
// Stamp 0 stands for an all-zero page (never written, or discarded).

// splitmix is the splitmix64 step: cheap, and every output word depends on
// every bit of the stamp.
//
//go:nosplit
func splitmix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	z := x
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// StampFor derives the stamp of logical page id at generation gen. The
// result is never 0 (0 means "zero page").
func StampFor(seed uint64, id int, gen uint64) uint64 {
	s := splitmix(seed ^ splitmix(uint64(id)<<20^gen))
	if s == 0 {
		s = 1
	}
	return s
}

// fillWords writes the content of stamp s over one page. It is nosplit and
// allocation free because the raw-forked child of the fork scenarios runs
// it without a working Go runtime.
//
//go:nosplit
func fillWords(p *[pageWords]uint64, s uint64) {
	if s == 0 {
		for i := range p {
			p[i] = 0
		}
		return
	}
	p[0] = s
	x := s
	for i := 1; i < pageWords; i++ {
		x = splitmix(x)
		p[i] = x
	}
}

// Fill writes stamp s over page b (len(b) == PageSize).
func Fill(b []byte, s uint64) {
	if len(b) != PageSize {
		panic(fmt.Sprintf("scenario: Fill on %d bytes", len(b)))
	}
	// Page-aligned mmap memory in practice; the byte path keeps odd
	// buffers correct too.
	if uintptr(unsafe.Pointer(&b[0]))%8 == 0 {
		fillWords((*[pageWords]uint64)(unsafe.Pointer(&b[0])), s)
		return
	}
	var w [pageWords]uint64
	fillWords(&w, s)
	for i, v := range w {
		binary.LittleEndian.PutUint64(b[8*i:], v)
	}
}

// Content returns the page content of stamp s as a fresh buffer.
func Content(s uint64) []byte {
	b := make([]byte, PageSize)
	Fill(b, s)
	return b
}

// Matches reports whether page b holds exactly the content of stamp s.
func Matches(b []byte, s uint64) bool {
	if len(b) != PageSize || binary.LittleEndian.Uint64(b) != s {
		return false
	}
	if s == 0 {
		for _, c := range b {
			if c != 0 {
				return false
			}
		}
		return true
	}
	x := s
	for i := 1; i < pageWords; i++ {
		x = splitmix(x)
		if binary.LittleEndian.Uint64(b[8*i:]) != x {
			return false
		}
	}
	return true
}

// Header is the stamp a page claims to hold (its word 0).
func Header(b []byte) uint64 { return binary.LittleEndian.Uint64(b) }

// isZero reports whether b is all zeros.
func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
