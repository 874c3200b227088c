package kernel

import (
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// saveGcov must keep the notes of a profiled object whose directory holds
// no other touched file (fs/aio.c: the first coverage build failed there).
func TestSaveGcovNotesInNewDirs(t *testing.T) {
	root := t.TempDir()
	pristine, src, out, dst := filepath.Join(root, "p"), filepath.Join(root, "s"), filepath.Join(root, "o"), filepath.Join(root, "d")
	write := func(path, data string) {
		require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
		require.NoError(t, os.WriteFile(path, []byte(data), 0o644))
	}
	write(filepath.Join(out, ".ldtlab-patched-files"), "fs/aio.c\nmm/ldt.c\n")
	for _, f := range []string{"fs/aio", "mm/ldt"} {
		write(filepath.Join(src, f+".c"), "int x;\n")
		write(filepath.Join(pristine, f+".c"), "int y;\n")
		write(filepath.Join(out, f+".o"), "obj")
		write(filepath.Join(out, f+".gcno"), "notes of "+f)
	}
	p := &plan{opts: Options{Log: io.Discard}}
	require.NoError(t, p.saveGcov(pristine, src, out, dst))
	for _, f := range []string{"fs/aio", "mm/ldt"} {
		b, err := os.ReadFile(filepath.Join(dst, GcovDir, "notes", f+".gcno"))
		require.NoError(t, err)
		assert.Equal(t, "notes of "+f, string(b))
	}

	// An object compiled without notes is a clear error.
	require.NoError(t, os.Remove(filepath.Join(out, "mm/ldt.gcno")))
	err := p.saveGcov(pristine, src, out, filepath.Join(root, "d2"))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "mm/ldt.o was built without gcov notes")
}
