package coverage

import (
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The testdata are real `gcov --json-format --stdout` output of GCC 12
// (Debian 12.2.0) on testdata/gcov/t.c and h.h, compiled with -O2
// --coverage, with and without -fno-early-inlining, run once.
func TestParseGcovJSON(t *testing.T) {
	read := func(name string) []byte {
		b, err := os.ReadFile("testdata/gcov/" + name)
		require.NoError(t, err)
		return b
	}
	noEarly, early := read("gcc12-noearlyinline.json"), read("gcc12-earlyinline.json")
	// Cut from the real output on mm/gup.gcno of the coverage kernel
	// before it ever ran (notes only: every count 0): two functions of
	// mm/gup.c and one of a header, absolute paths under the build tree.
	kernelNotes := read("kernel-gup-notes-only.json")
	cases := []struct {
		name    string
		in      []byte
		docs    int
		wantErr string
		// want: file → line → count, as merged by Counts.Add
		want map[string]map[int]uint64
		fn   map[string]map[int]string
		src  string // the tree the compiler saw; default the toy's
	}{
		{
			name: "kernel notes: absolute paths under the tree, headers too",
			in:   kernelNotes, docs: 1, src: "/root/.cache/ldtlab/work/coverage/src",
			want: map[string]map[int]uint64{"mm/gup.c": {635: 0, 670: 0}, "include/linux/swapops.h": {74: 0}},
			fn:   map[string]map[int]string{"mm/gup.c": {635: "gup_ldt_needs_mark", 670: "gup_ldt_mark_written"}, "include/linux/swapops.h": {74: "pte_swp_clear_flags"}},
		},
		{
			name: "instrumented before inlining: every line that ran counts",
			in:   noEarly, docs: 1,
			want: map[string]map[int]uint64{"t.c": {2: 1, 4: 1, 5: 1, 8: 1}, "h.h": {1: 1, 3: 1, 5: 1}},
			fn:   map[string]map[int]string{"t.c": {4: "f", 8: "main"}, "h.h": {3: "sq"}},
		},
		{
			// Why the coverage kernel is built with -fno-early-inlining:
			// f ran (inlined into main), yet its lines read 0.
			name: "early inlining: the inlined copy's lines are lost",
			in:   early, docs: 1,
			want: map[string]map[int]uint64{"t.c": {2: 0, 4: 0, 5: 0, 8: 1}, "h.h": {3: 1, 5: 1}},
		},
		{
			name: "two objects in one call: one document per line",
			in:   append(append(append([]byte{}, noEarly...), '\n'), early...), docs: 2,
			// header lines add up over objects
			want: map[string]map[int]uint64{"t.c": {2: 1, 4: 1, 8: 2}, "h.h": {3: 2, 1: 1}},
		},
		{name: "empty output", in: nil, wantErr: "no JSON"},
		{name: "not gcov output", in: []byte(`{"files": []}`), wantErr: "not gcov"},
		{name: "truncated", in: noEarly[:len(noEarly)/2], wantErr: "parsing gcov JSON"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			docs, err := ParseGcovJSON(tc.in)
			if tc.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.wantErr)
				return
			}
			require.NoError(t, err)
			require.Len(t, docs, tc.docs)
			assert.Equal(t, "12.2.0", docs[0].GCCVersion)
			c := Counts{}
			src := tc.src
			if src == "" {
				src = "/tmp/cov/g" // where the toy was compiled
			}
			for i := range docs {
				c.Add(&docs[i], src)
			}
			assert.Len(t, c, len(tc.want), "files under the tree")
			for f, lines := range tc.want {
				for l, n := range lines {
					require.NotNil(t, c[f][l], "%s:%d has no line data", f, l)
					assert.Equal(t, n, c[f][l].Count, "%s:%d", f, l)
				}
			}
			for f, lines := range tc.fn {
				for l, name := range lines {
					assert.Equal(t, name, c[f][l].Function, "%s:%d", f, l)
				}
			}
			if tc.src == "" {
				assert.Nil(t, c["t.c"][3], "a brace has no code")
			}
		})
	}
}

func TestRelToTree(t *testing.T) {
	cases := []struct {
		file, cwd, src, want string
		ok                   bool
	}{
		{"/w/src/mm/memory.c", "/w/out", "/w/src", "mm/memory.c", true},
		{"../src/include/linux/mm.h", "/w/out", "/w/src", "include/linux/mm.h", true},
		{"./arch/x86/include/generated/asm/rwonce.h", "/w/out", "/w/src", "", false}, // generated: in the object tree
		{"/usr/lib/gcc/x86_64-linux-gnu/12/include/stddef.h", "/w/out", "/w/src", "", false},
	}
	for _, tc := range cases {
		got, ok := relToTree(tc.file, tc.cwd, tc.src)
		assert.Equal(t, tc.ok, ok, tc.file)
		assert.Equal(t, tc.want, got, tc.file)
	}
}

func TestFunctionAt(t *testing.T) {
	fns := []GcovFunc{{Name: "outer", Demangled: "outer", StartLine: 10, EndLine: 40}, {Name: "inner", StartLine: 20, EndLine: 25}}
	for line, want := range map[int]string{9: "", 10: "outer", 22: "inner", 26: "outer", 41: ""} {
		assert.Equal(t, want, functionAt(fns, line), "line %d", line)
	}
}
