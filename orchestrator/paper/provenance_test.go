package paper

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSeriesSHA256(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "0001-a.patch"), []byte("a\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "0002-b.patch"), []byte("b\n"), 0o644))
	// printf 'a\nb\n' | sha256sum: the patches concatenated in series order.
	assert.Equal(t, "911169ddaaf146aff539f58c26c489af3b892dff0fe283c1c264c65ae5aa59a2", SeriesSHA256(dir, []string{"0001-a.patch", "0002-b.patch"}))
	assert.NotEqual(t, SeriesSHA256(dir, []string{"0001-a.patch", "0002-b.patch"}), SeriesSHA256(dir, []string{"0002-b.patch", "0001-a.patch"}), "order matters")
	assert.Equal(t, "", SeriesSHA256(dir, nil), "vanilla: no series")
	assert.Equal(t, "unreadable", SeriesSHA256(dir, []string{"0003-missing.patch"}))
}

func TestGitCommit(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("no git")
	}
	dir := t.TempDir()
	git := func(args ...string) {
		cmd := exec.Command("git", append([]string{"-C", dir, "-c", "user.email=t@t", "-c", "user.name=t"}, args...)...)
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s", out)
	}
	git("init", "-q")
	require.NoError(t, os.WriteFile(filepath.Join(dir, "f"), []byte("1"), 0o644))
	git("add", "f")
	git("commit", "-qm", "one")
	c := GitCommit(dir)
	assert.Regexp(t, regexp.MustCompile(`^[0-9a-f]{40}$`), c)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "untracked"), []byte("x"), 0o644))
	assert.Equal(t, c, GitCommit(dir), "untracked files (a run's own output) do not make it dirty")
	require.NoError(t, os.WriteFile(filepath.Join(dir, "f"), []byte("2"), 0o644))
	assert.Equal(t, c+"-dirty", GitCommit(dir))
	assert.Equal(t, "unknown", GitCommit(t.TempDir()))
}

func TestSampleLoad(t *testing.T) {
	var xs []float64
	stop := sampleLoad(10*time.Millisecond, &xs)
	time.Sleep(60 * time.Millisecond)
	stop()
	stop() // twice is fine
	n := len(xs)
	assert.GreaterOrEqual(t, n, 2, "one at once, then one per period")
	time.Sleep(30 * time.Millisecond)
	assert.Equal(t, n, len(xs), "nothing after stop")
}
