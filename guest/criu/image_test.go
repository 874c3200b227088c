package criu

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func page(b byte) []byte { return bytes.Repeat([]byte{b}, PageSize) }

func TestPagemapRoundTrip(t *testing.T) {
	pm := &Pagemap{PagesID: 7, Entries: []Entry{
		{Vaddr: 0x400000, NrPages: 2, Flags: PEPresent, HasFlags: true},
		{Vaddr: 0x7f0000000000, NrPages: 1, Flags: PEParent, HasFlags: true},
		{Vaddr: 0x7ffd00000000, NrPages: 3, InParent: false},
	}}
	got, err := DecodePagemap(EncodePagemap(pm))
	require.NoError(t, err)
	assert.Equal(t, pm, got)
	assert.Equal(t, 5, got.PresentPages())
	assert.True(t, got.Entries[0].Present())
	assert.False(t, got.Entries[1].Present())
	assert.True(t, got.Entries[2].Present(), "no flags, not in parent: stored")
}

func TestDecodePagemapErrors(t *testing.T) {
	good := EncodePagemap(&Pagemap{PagesID: 1, Entries: []Entry{{Vaddr: 0x1000, NrPages: 1, Flags: PEPresent, HasFlags: true}}})
	for name, b := range map[string][]byte{
		"short":          good[:4],
		"bad magic":      append([]byte{1, 2, 3, 4}, good[4:]...),
		"bad pagemap":    append(append([]byte{}, good[:4]...), append([]byte{0, 0, 0, 0}, good[8:]...)...),
		"truncated size": good[:len(good)-1],
		"no head":        good[:8],
	} {
		_, err := DecodePagemap(b)
		assert.Error(t, err, name)
	}
	unaligned := EncodePagemap(&Pagemap{PagesID: 1, Entries: []Entry{{Vaddr: 0x1001, NrPages: 1}}})
	_, err := DecodePagemap(unaligned)
	assert.ErrorContains(t, err, "unaligned")
}

// A dump of three present pages at 0x1000, 0x2000 and 0x5000 (0x3000 is
// in a parent image, so not stored).
func writeDump(t *testing.T, dir string) {
	t.Helper()
	pm := &Pagemap{PagesID: 1, Entries: []Entry{
		{Vaddr: 0x1000, NrPages: 2, Flags: PEPresent, HasFlags: true},
		{Vaddr: 0x3000, NrPages: 1, Flags: PEParent, HasFlags: true},
		{Vaddr: 0x5000, NrPages: 1, Flags: PEPresent, HasFlags: true},
	}}
	require.NoError(t, os.WriteFile(filepath.Join(dir, "pagemap-42.img"), EncodePagemap(pm), 0o600))
	data := append(append(page(1), page(2)...), page(5)...)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "pages-1.img"), data, 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "pagemap-shmem-9.img"), EncodePagemap(&Pagemap{PagesID: 2}), 0o600))
}

func TestReplace(t *testing.T) {
	dir := t.TempDir()
	writeDump(t, dir)
	img := map[uint64][]byte{0x1000: page(1), 0x2000: page(9), 0x3000: page(3)}
	st, err := Replace(dir, Source{Page: func(a uint64) []byte { return img[a] }})
	require.NoError(t, err)
	assert.Equal(t, 3, st.Pages)
	assert.Equal(t, 1, st.Same, "0x1000 equal")
	assert.Equal(t, 2, st.Differ, "0x2000 differs, 0x5000 absent with data")
	assert.Equal(t, 1, st.Absent)
	assert.Equal(t, []string{"pagemap-42.img"}, st.Pagemaps)
	assert.Equal(t, []string{"pagemap-shmem-9.img"}, st.ShmemPagemaps)
	assert.Len(t, st.Samples, 2)
	assert.Contains(t, st.Samples[1], "missing from the image")
	assert.Contains(t, st.Samples[0], "4096 bytes differ (+0x0 02→09, +0x1 02→09, +0x2 02→09, +0x3 02→09)")
	got, err := os.ReadFile(filepath.Join(dir, "pages-1.img"))
	require.NoError(t, err)
	assert.Equal(t, append(append(page(1), page(9)...), page(0)...), got, "the image's pages, zeros for the absent one")

	// Replacing again with the same source changes nothing.
	st, err = Replace(dir, Source{Page: func(a uint64) []byte { return img[a] }})
	require.NoError(t, err)
	assert.Equal(t, 3, st.Same)
}

// TestReplaceSettled: a page the caller vouches for (it equalled the
// memory at the freeze) that CRIU read differently changed after the
// freeze: counted apart, and the caller's copy still wins.
func TestReplaceSettled(t *testing.T) {
	dir := t.TempDir()
	writeDump(t, dir)
	img := map[uint64][]byte{0x1000: page(1), 0x2000: page(9), 0x5000: page(7)}
	st, err := Replace(dir, Source{Page: func(a uint64) []byte { return img[a] }, Settled: func(a uint64) bool { return a == 0x2000 }})
	require.NoError(t, err)
	assert.Equal(t, 1, st.Same)
	assert.Equal(t, 1, st.ChangedAfter, "0x2000")
	assert.Equal(t, 1, st.Differ, "0x5000")
	assert.Equal(t, []uint64{0x2000, 0x5000}, st.DifferAt)
	assert.Contains(t, st.Samples[0], "changed after it")
	got, err := os.ReadFile(filepath.Join(dir, "pages-1.img"))
	require.NoError(t, err)
	assert.Equal(t, append(append(page(1), page(9)...), page(7)...), got)
}

func TestReplaceChecksSize(t *testing.T) {
	dir := t.TempDir()
	writeDump(t, dir)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "pages-1.img"), page(1), 0o600))
	_, err := Replace(dir, Source{Page: func(uint64) []byte { return nil }})
	assert.ErrorContains(t, err, "lists 3 pages")
	_, err = Replace(t.TempDir(), Source{Page: func(uint64) []byte { return nil }})
	assert.ErrorContains(t, err, "not a CRIU dump")
}
