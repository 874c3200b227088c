package lines

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestLast(t *testing.T) {
	cases := []struct {
		in   string
		n    int
		want string
	}{
		{"a\nb\nc\n", 2, "b\nc"},
		{"a\nb\nc", 5, "a\nb\nc"},
		{"", 3, ""},
		{"a\n\n\n", 1, "a"},
		{"a\nb", 0, ""},
	}
	for _, c := range cases {
		assert.Equal(t, c.want, Last(c.in, c.n), "%q %d", c.in, c.n)
	}
}
