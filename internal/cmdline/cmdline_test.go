package cmdline

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestFakeNUMA(t *testing.T) {
	cases := []struct {
		in    string
		nodes int
		want  string
	}{
		{"", 2, "numa=fake=2"},
		{"quiet", 2, "quiet numa=fake=2"},
		{" ldtlab.hang=1 ", 4, "ldtlab.hang=1 numa=fake=4"},
		{"numa=fake=4", 2, "numa=fake=4"},
		{"a numa=fake=3 b", 2, "a numa=fake=3 b"},
		{"xnuma=fake=3", 2, "xnuma=fake=3 numa=fake=2"},
	}
	for _, c := range cases {
		assert.Equal(t, c.want, FakeNUMA(c.in, c.nodes), "%q", c.in)
	}
}
