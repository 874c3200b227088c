package coverage

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestUnion(t *testing.T) {
	r := &Report{
		Ran: []Line{{File: "mm/ldt.c", Line: 10, Patch: "0005", Function: "collect", Count: 3}},
		Unexecuted: []Line{
			{File: "mm/ldt.c", Line: 11, Text: "a();", Patch: "0005", Function: "collect"},
			{File: "mm/gup.c", Line: 7, Text: "b();", Patch: "0004", Function: "pin"},
		},
		PerPatch: []Group{{Name: "0001"}, {Name: "0004"}, {Name: "0005"}},
	}
	for _, tc := range []struct {
		name      string
		ran       map[string]bool
		executed  int
		unexec    []string
		patch0005 Group
	}{
		{"nothing new", map[string]bool{"mm/ldt.c:10": true}, 1, []string{"mm/ldt.c:11", "mm/gup.c:7"}, Group{Name: "0005", SeriesLines: 2, Executed: 1, Percent: 50}},
		{"another guest ran one", map[string]bool{"mm/ldt.c:11": true, "fs/aio.c:1": true}, 2, []string{"mm/gup.c:7"}, Group{Name: "0005", SeriesLines: 2, Executed: 2, Percent: 100}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := *r
			c.Ran = append([]Line(nil), r.Ran...)
			c.Unexecuted = append([]Line(nil), r.Unexecuted...)
			c.Union(tc.ran)
			assert.Equal(t, 3, c.SeriesLines, "a line outside the series never counts")
			assert.Equal(t, tc.executed, c.Executed)
			var un []string
			for _, l := range c.Unexecuted {
				un = append(un, Key(l))
			}
			assert.Equal(t, tc.unexec, un)
			assert.Len(t, c.PerPatch, 3, "a patch without executable lines keeps its row")
			assert.Equal(t, tc.patch0005, c.PerPatch[2])
		})
	}
}
