package coverage

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// report3 has three series lines, one of which ran.
func report3() *Report {
	return &Report{
		KernelKey: "k", SeriesLines: 3, Executed: 1,
		Ran: []Line{{File: "mm/ldt.c", Line: 10, Patch: "0005", Function: "collect", Count: 3}},
		Unexecuted: []Line{
			{File: "mm/ldt.c", Line: 11, Text: "a();", Patch: "0005", Function: "collect"},
			{File: "mm/gup.c", Line: 7, Text: "b();", Patch: "0004", Function: "pin"},
		},
		PerPatch:    []Group{{Name: "0001"}, {Name: "0004", SeriesLines: 1}, {Name: "0005", SeriesLines: 2, Executed: 1}},
		PerFile:     []Group{{Name: "mm/gup.c", SeriesLines: 1}, {Name: "mm/ldt.c", SeriesLines: 2, Executed: 1}},
		PerFunction: []Group{{Name: "mm/gup.c:pin", SeriesLines: 1}, {Name: "mm/ldt.c:collect", SeriesLines: 2, Executed: 1}},
	}
}

func TestUnion(t *testing.T) {
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
			c := report3()
			c.Union(tc.ran)
			assert.Equal(t, 3, c.SeriesLines, "a line outside the series never counts")
			assert.Equal(t, tc.executed, c.Executed)
			var un []string
			for _, l := range c.Unexecuted {
				un = append(un, Key(l))
			}
			assert.Equal(t, tc.unexec, un)
			require.Len(t, c.PerPatch, 3, "a patch without executable lines keeps its row")
			assert.Equal(t, tc.patch0005, c.PerPatch[2])
			assert.Equal(t, tc.executed, c.PerFile[1].Executed+c.PerFile[0].Executed)
		})
	}
}

func TestMerge(t *testing.T) {
	a, b := report3(), report3()
	a.Jobs, b.Jobs = []Job{{Name: "soak"}}, []Job{{Name: "selftest"}}
	// b ran gup.c:7 and not ldt.c:10.
	b.Unexecuted = []Line{{File: "mm/ldt.c", Line: 10}, {File: "mm/ldt.c", Line: 11}}
	m, err := Merge([]*Report{a, b})
	require.NoError(t, err)
	assert.Equal(t, 2, m.Executed)
	require.Len(t, m.Unexecuted, 1)
	assert.Equal(t, "mm/ldt.c:11", Key(m.Unexecuted[0]))
	assert.Equal(t, []Job{{Name: "soak"}}, a.Jobs, "the inputs are not changed")
	assert.Len(t, m.Jobs, 2)
	assert.Len(t, a.Unexecuted, 2)

	b.KernelKey = "other"
	_, err = Merge([]*Report{a, b})
	assert.ErrorContains(t, err, "different builds")
}
