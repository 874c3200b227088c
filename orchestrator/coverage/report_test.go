package coverage

import (
	"bytes"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestMap(t *testing.T) {
	origins := map[string]*Origin{
		"mm/memory.c": {
			Lines: []string{"int f(void)", "{", "\tif (ldt)", "\t\tldt_mark();", "\treturn 0;", "}"},
			Patch: []string{"", "", "0002-b", "0002-b", "0001-a", ""},
		},
		"mm/migrate_device.c": { // not compiled in this config
			Lines: []string{"", "\tldt_keep();"},
			Patch: []string{"0001-a", "0001-a"},
		},
		"include/linux/mm.h": {
			Lines: []string{"/* comment */", "static inline bool ldt(void)", "{", "\treturn x;", "extern int y;"},
			Patch: []string{"0001-a", "0001-a", "0001-a", "0001-a", "0001-a"},
		},
	}
	counts := Counts{
		"mm/memory.c":        {1: {1, "f"}, 3: {1, "f"}, 4: {0, "f"}, 5: {1, "f"}},
		"include/linux/mm.h": {4: {0, "ldt"}},
	}
	var r Report
	Map(&r, origins, counts, map[string]bool{"mm/memory.c": true})
	assert.Equal(t, 4, r.SeriesLines, "memory.c 3-5 and mm.h 4")
	assert.Equal(t, 2, r.Executed)
	assert.Equal(t, 50.0, r.Percent)
	assert.Equal(t, []Group{{"0001-a", 2, 1, 50}, {"0002-b", 2, 1, 50}}, r.PerPatch)
	assert.Equal(t, []Group{{"include/linux/mm.h:ldt", 1, 0, 0}, {"mm/memory.c:f", 3, 2, 66.7}}, r.PerFunction)
	assert.Equal(t, []Line{
		{File: "include/linux/mm.h", Line: 4, Text: "\treturn x;", Patch: "0001-a", Function: "ldt"},
		{File: "mm/memory.c", Line: 4, Text: "\t\tldt_mark();", Patch: "0002-b", Function: "f"},
	}, r.Unexecuted)
	// What ran, for the soak's union (keyed by file and line).
	assert.Equal(t, []Line{
		{File: "mm/memory.c", Line: 3, Patch: "0002-b", Function: "f", Count: 1},
		{File: "mm/memory.c", Line: 5, Patch: "0001-a", Function: "f", Count: 1},
	}, r.Ran)
	assert.Equal(t, []FileLines{{"mm/migrate_device.c", 1}}, r.NotBuilt)
	// The declaration lines of the header have no code anywhere.
	assert.Equal(t, []FileLines{{"include/linux/mm.h", 2}}, r.NoLineData)

	var md bytes.Buffer
	Markdown(&md, &r)
	for _, want := range []string{"**2 of 4 executable series lines ran (50.0%).**", "- `mm/memory.c:4` (0002) `ldt_mark();`", "`mm/migrate_device.c`: 1 changed lines, not compiled"} {
		assert.Contains(t, md.String(), want)
	}
}

func TestReasons(t *testing.T) {
	in := "# comment\n" +
		"mm/ldt.c:ldt_attach:-EFAULT\tunreachable: a valid pointer\n" +
		"mm/ldt.c:ldt_attach\tscenario to write: attach twice\n" +
		"mm/gup.c:*\tnot x86\n" +
		"mm/rmap.c:gone\tstale\n"
	reasons, err := ParseReasons(strings.NewReader(in))
	require.NoError(t, err)
	require.Len(t, reasons, 4)
	r := Report{Unexecuted: []Line{
		{File: "mm/ldt.c", Function: "ldt_attach", Text: "\t\treturn -EFAULT;"},
		{File: "mm/ldt.c", Function: "ldt_attach", Text: "\t\treturn -EBUSY;"},
		{File: "mm/gup.c", Function: "x", Text: "y"},
		{File: "mm/memory.c", Function: "ldt_attach", Text: "-EFAULT"},
	}}
	stale := Explain(&r, reasons)
	want := []string{"unreachable: a valid pointer", "scenario to write: attach twice", "not x86", ""}
	for i, w := range want {
		assert.Equal(t, w, r.Unexecuted[i].Reason, "line %d", i)
	}
	assert.Equal(t, 1, r.Unexplained)
	require.Len(t, stale, 1)
	assert.Equal(t, "gone", stale[0].Function)

	for _, bad := range []string{"mm/ldt.c:f no tab\n", "mm/ldt.c\twhy\n", "mm/ldt.c:f\t \n"} {
		_, err := ParseReasons(strings.NewReader(bad))
		assert.Error(t, err, "%q", bad)
	}
}
