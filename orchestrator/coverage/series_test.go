package coverage

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// hunkPlus is the oracle for the last patch of a file: the new-side line
// numbers of its '+' lines, read from the hunk headers (exact when the
// patch applies without offset, as git format-patch series do).
func hunkPlus(t *testing.T, patch string) map[int]string {
	t.Helper()
	out := map[int]string{}
	n := 0
	for _, l := range strings.Split(patch, "\n") {
		switch {
		case strings.HasPrefix(l, "@@ "):
			f := strings.Fields(l) // @@ -a,b +c,d @@
			c := strings.TrimPrefix(f[2], "+")
			c, _, _ = strings.Cut(c, ",")
			v, err := strconv.Atoi(c)
			require.NoError(t, err, l)
			n = v
		case n == 0 || strings.HasPrefix(l, "+++") || strings.HasPrefix(l, "---"):
		case strings.HasPrefix(l, "+"):
			out[n] = l[1:]
			n++
		case strings.HasPrefix(l, " "):
			n++
		}
	}
	return out
}

func setup(t *testing.T, pristine map[string]string, patches map[string]string) (string, string) {
	t.Helper()
	root := t.TempDir()
	pd, ptd := filepath.Join(root, "pristine"), filepath.Join(root, "patches")
	for f, s := range pristine {
		require.NoError(t, writeFile(filepath.Join(pd, f), []byte(s)))
	}
	for name, s := range patches {
		require.NoError(t, writeFile(filepath.Join(ptd, name), []byte(s)))
	}
	return pd, ptd
}

func TestSeriesLines(t *testing.T) {
	// The mm/ldt.c part of every patch that touches it, in order.
	var real []string
	for _, n := range []string{"0005", "0009", "0010", "0011", "0012", "0013", "0014"} {
		b, err := os.ReadFile("testdata/series/" + n + "-ldt.c.patch")
		require.NoError(t, err)
		real = append(real, n+"-ldt.c.patch\x00"+string(b))
	}
	long := "a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n"

	base := "a\nb\nc\nd\ne\nf\n"
	p1 := "--- a/x.c\n+++ b/x.c\n@@ -2,2 +2,4 @@\n b\n+P1 one\n+P1 two\n c\n"
	cases := []struct {
		name     string
		pristine map[string]string
		patches  []string // "name\x00content"
		// want: file → line → patch ("" = pristine), for every line
		want map[string][]string
		// oracle: check the last patch's lines against its hunk headers;
		// every other line is an earlier patch's (the first creates the
		// file).
		oracle string
	}{
		{
			name:     "one patch adds lines",
			pristine: map[string]string{"x.c": base},
			patches:  []string{"0001-a\x00" + p1},
			want:     map[string][]string{"x.c": {"", "", "0001-a", "0001-a", "", "", "", ""}},
		},
		{
			name:     "a later patch inserts above: the earlier lines move and keep their patch",
			pristine: map[string]string{"x.c": base},
			patches: []string{"0001-a\x00" + p1,
				"0002-b\x00--- a/x.c\n+++ b/x.c\n@@ -1,1 +1,3 @@\n a\n+P2 x\n+P2 y\n"},
			want: map[string][]string{"x.c": {"", "0002-b", "0002-b", "", "0001-a", "0001-a", "", "", "", ""}},
		},
		{
			name:     "a later patch changes a line of an earlier one: it is the later patch's",
			pristine: map[string]string{"x.c": base},
			patches: []string{"0001-a\x00" + p1,
				"0002-b\x00--- a/x.c\n+++ b/x.c\n@@ -3,2 +3,2 @@\n P1 one\n-P1 two\n+P1 two, fixed\n"},
			want: map[string][]string{"x.c": {"", "", "0001-a", "0002-b", "", "", "", ""}},
		},
		{
			name:     "a later patch removes an earlier one's line and a pristine one",
			pristine: map[string]string{"x.c": base},
			patches: []string{"0001-a\x00" + p1,
				"0002-b\x00--- a/x.c\n+++ b/x.c\n@@ -3,3 +3,1 @@\n-P1 one\n P1 two\n-c\n"},
			want: map[string][]string{"x.c": {"", "", "0001-a", "", "", ""}},
		},
		{
			name:     "a hunk whose line numbers are off applies with an offset and still lands right",
			pristine: map[string]string{"x.c": long},
			patches: []string{"0001-a\x00" + p1,
				// written against the pristine file: "f" is line 6 there, 8 now
				"0002-b\x00--- a/x.c\n+++ b/x.c\n@@ -5,4 +5,5 @@\n e\n f\n+after f\n g\n h\n"},
			want: map[string][]string{"x.c": {"", "", "0001-a", "0001-a", "", "", "", "", "0002-b", "", "", "", ""}},
		},
		{
			name:     "a changed pristine line is the patch's; a deleted file goes",
			pristine: map[string]string{"x.c": base, "gone.h": "old\n"},
			patches: []string{"0001-a\x00--- a/x.c\n+++ b/x.c\n@@ -1,2 +1,2 @@\n-a\n+A\n b\n" +
				"--- a/gone.h\n+++ /dev/null\n@@ -1 +0,0 @@\n-old\n"},
			want: map[string][]string{"x.c": {"0001-a", "", "", "", "", ""}},
		},
		{
			name:    "real: 0005 creates mm/ldt.c, six more patches edit it",
			patches: real,
			oracle:  "mm/ldt.c",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ps := map[string]string{}
			var names []string
			for _, p := range tc.patches {
				n, s, _ := strings.Cut(p, "\x00")
				ps[n] = s
				names = append(names, n)
			}
			pd, ptd := setup(t, tc.pristine, ps)
			got, err := SeriesLines(context.Background(), pd, ptd, names)
			require.NoError(t, err)
			for f, want := range tc.want {
				require.Contains(t, got, f)
				assert.Equal(t, want, got[f].Patch, "%s: %q", f, got[f].Lines)
			}
			if tc.want != nil {
				assert.Len(t, got, len(tc.want), "files")
			}
			if tc.oracle != "" {
				o := got[tc.oracle]
				require.NotNil(t, o)
				last := names[len(names)-1]
				plus := hunkPlus(t, ps[last])
				require.NotEmpty(t, plus)
				// A minimal diff may align a line that is both removed and
				// added ("\t/*", "}") elsewhere than the hunk did: the
				// texts attributed to the last patch must be exactly its
				// '+' lines, and nearly all at the hunk's positions.
				var tagged, want []string
				agree := 0
				for i, p := range o.Patch {
					if p == last {
						tagged = append(tagged, o.Lines[i])
						if _, ok := plus[i+1]; ok {
							agree++
						}
					} else {
						assert.Contains(t, names[:len(names)-1], p, "line %d %q", i+1, o.Lines[i])
					}
				}
				for _, text := range plus {
					want = append(want, text)
				}
				assert.ElementsMatch(t, want, tagged)
				assert.GreaterOrEqual(t, agree*100, 90*len(plus), "%d of %d '+' lines where the hunks put them", agree, len(plus))
			}
		})
	}
}

// TestSeriesLinesRealSeries runs the mapping over the whole series and
// the cached pristine source: the lines it attributes to some patch must
// be those a plain diff of pristine against final marks as added. Where
// identical lines repeat ("\t\treturn 0;" and a blank one, twice within a
// few lines of mm/gup.c since 0022), the diff may align the pristine copy
// elsewhere than the hunks did: the texts must then match exactly, and
// nearly all positions.
func TestSeriesLinesRealSeries(t *testing.T) {
	home, _ := os.UserHomeDir()
	tops, _ := filepath.Glob(filepath.Join(home, ".cache", "ldtlab", "src", "*", "linux-source-6.12"))
	if len(tops) == 0 {
		t.Skip("no unpacked linux-source-6.12 in ~/.cache/ldtlab/src (a kernel build unpacks it)")
	}
	pristine := tops[0]
	series, err := os.ReadFile("../../kmod/patches/series")
	require.NoError(t, err)
	var names []string
	for _, l := range strings.Split(string(series), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			names = append(names, l)
		}
	}
	got, err := SeriesLines(context.Background(), pristine, "../../kmod/patches", names)
	require.NoError(t, err)
	require.Contains(t, got, "mm/memory.c")
	for f, o := range got {
		old, _ := os.ReadFile(filepath.Join(pristine, f))
		ops, err := lineDiff(context.Background(), old, []byte(strings.Join(o.Lines, "\n")+"\n"))
		require.NoError(t, err)
		var added, attributed []string
		i, disagree := 0, 0
		for _, op := range ops {
			if op != '+' && op != '=' {
				continue
			}
			if op == '+' {
				added = append(added, o.Lines[i])
			}
			if o.Patch[i] != "" {
				attributed = append(attributed, o.Lines[i])
			}
			if (op == '+') != (o.Patch[i] != "") {
				disagree++
				t.Logf("%s:%d %q: diff says %c, attributed to %q", f, i+1, o.Lines[i], op, o.Patch[i])
			}
			i++
		}
		assert.ElementsMatch(t, added, attributed, "%s: the lines attributed to a patch are not the lines the series added", f)
		assert.LessOrEqual(t, disagree*100, 5*len(added), "%s: %d of %d added lines attributed elsewhere than the diff puts them", f, disagree, len(added))
	}
}
