package shquote

import (
	"os/exec"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestWord(t *testing.T) {
	cases := []struct{ in, want string }{
		{"abc", "abc"},
		{"/usr/bin/qemu-system-x86_64", "/usr/bin/qemu-system-x86_64"},
		{"", "''"},
		{"a b", "'a b'"},
		{"it's", `'it'\''s'`},
		{"$HOME", "'$HOME'"},
		{"file=d.img,if=virtio", "file=d.img,if=virtio"},
		{"x;rm", "'x;rm'"},
	}
	for _, c := range cases {
		assert.Equal(t, c.want, Word(c.in), "%q", c.in)
	}
	assert.Equal(t, "'abc'", Always("abc"))
	assert.Equal(t, "echo 'a b' '' c", Join([]string{"echo", "a b", "", "c"}))
}

// TestRoundTrip hands quoted words to a real shell and reads them back.
func TestRoundTrip(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh on this machine")
	}
	words := []string{"plain", "", "two words", "it's", `back\slash`, "$(false)", "`x`", "a\nb", "*", "~", "!x", "é"}
	out, err := exec.Command(sh, "-c", `for a in `+Join(words)+`; do printf '%s\0' "$a"; done`).Output()
	require.NoError(t, err)
	var got []string
	for len(out) > 0 {
		i := 0
		for out[i] != 0 {
			i++
		}
		got = append(got, string(out[:i]))
		out = out[i+1:]
	}
	assert.Equal(t, words, got)
}
