package rootfs

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ldtlab/images/kernel"
)

func writeFile(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	require.NoError(t, os.WriteFile(path, []byte(content), mode))
	require.NoError(t, os.Chmod(path, mode))
}

func repoRoot(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	require.NoError(t, err)
	for d := wd; d != "/"; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d
		}
	}
	t.Fatal("repository root not found")
	return ""
}

func needBusybox(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("/bin/busybox not installed (Debian package busybox-static)")
	}
	if err := checkStatic("/bin/busybox"); err != nil {
		t.Skipf("unusable busybox: %v", err)
	}
	return "/bin/busybox"
}

// fakeKernel is a kernel.Build that was never built: only what the image
// takes from it.
func fakeKernel(t *testing.T) *kernel.Build {
	t.Helper()
	dir := t.TempDir()
	mods := filepath.Join(dir, "modules")
	writeFile(t, filepath.Join(mods, "lib", "modules", "6.12.0-test", "extra", "x.ko"), "\x7fELF fake module", 0o644)
	writeFile(t, filepath.Join(mods, "lib", "modules", "6.12.0-test", "modules.dep"), "extra/x.ko:\n", 0o644)
	require.NoError(t, os.Symlink("/nonexistent/build", filepath.Join(mods, "lib", "modules", "6.12.0-test", "build")))
	st := filepath.Join(dir, "selftests", "mm")
	writeFile(t, filepath.Join(st, "soft-dirty"), "#!/bin/sh\necho ok\n", 0o755)
	return &kernel.Build{
		Dir:         dir,
		BzImage:     filepath.Join(dir, "bzImage"),
		Vmlinux:     filepath.Join(dir, "vmlinux"),
		Modules:     mods,
		SelftestDir: st,
		Meta:        kernel.Meta{Key: "0123456789abcdef01234567", KernelRelease: "6.12.0-test"},
	}
}

type cpioEntry struct {
	mode uint32
	data []byte
}

// readNewc parses a newc archive into name → entry.
func readNewc(t *testing.T, b []byte) map[string]cpioEntry {
	t.Helper()
	out := map[string]cpioEntry{}
	off := 0
	pad := func(n int) int { return (n + 3) &^ 3 }
	for {
		require.GreaterOrEqual(t, len(b)-off, 110, "truncated header at %d", off)
		h := b[off : off+110]
		require.Equal(t, "070701", string(h[:6]), "bad magic at %d", off)
		field := func(i int) int {
			v, err := strconv.ParseUint(string(h[6+8*i:14+8*i]), 16, 32)
			require.NoError(t, err)
			return int(v)
		}
		mode, size, namesize := field(1), field(6), field(11)
		nameStart := off + 110
		name := string(b[nameStart : nameStart+namesize-1])
		dataStart := pad(nameStart + namesize)
		if name == "TRAILER!!!" {
			return out
		}
		out[name] = cpioEntry{mode: uint32(mode), data: b[dataStart : dataStart+size]}
		off = pad(dataStart + size)
	}
}

func TestBuildToReproducible(t *testing.T) {
	if testing.Short() {
		t.Skip("compiles the guest programs")
	}
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("go tool not in PATH")
	}
	bb := needBusybox(t)
	t.Setenv("LDTLAB_CACHE", t.TempDir())
	extra := filepath.Join(t.TempDir(), "tool")
	writeFile(t, extra, "#!/bin/sh\n", 0o755)
	o := Options{
		Repo:    repoRoot(t),
		Kernel:  fakeKernel(t),
		Busybox: bb,
		Extra:   []File{{Path: "/usr/local/bin/tool", Host: extra, Mode: 0o755}},
		Log:     io.Discard,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var images [][]byte
	for range 2 {
		dir := t.TempDir()
		require.NoError(t, BuildTo(ctx, o, dir))
		b, err := os.ReadFile(filepath.Join(dir, "initramfs.cpio"))
		require.NoError(t, err)
		images = append(images, b)
	}
	require.True(t, bytes.Equal(images[0], images[1]), "two builds of the same inputs differ (%d vs %d bytes)", len(images[0]), len(images[1]))

	ents := readNewc(t, images[0])
	const (
		sIFMT  = 0o170000
		sIFREG = 0o100000
		sIFDIR = 0o040000
		sIFLNK = 0o120000
		sIFCHR = 0o020000
	)
	typ := func(name string) uint32 {
		t.Helper()
		e, ok := ents[name]
		require.True(t, ok, "%s missing from the image", name)
		return e.mode & sIFMT
	}
	assert.Equal(t, uint32(sIFREG), typ("init"), "the agent is /init")
	assert.Equal(t, uint32(0o755), ents["init"].mode&0o777)
	assert.Equal(t, uint32(sIFLNK), typ("sbin/ldtlab-agent"))
	assert.Equal(t, "../init", string(ents["sbin/ldtlab-agent"].data))
	assert.Equal(t, uint32(sIFREG), typ("bin/busybox"))
	assert.Equal(t, uint32(sIFLNK), typ("bin/sh"))
	assert.Equal(t, "busybox", string(ents["bin/sh"].data))
	assert.Equal(t, uint32(sIFCHR), typ("dev/console"))
	assert.Equal(t, uint32(sIFDIR), typ("mnt/data"))
	assert.Equal(t, uint32(sIFREG), typ("etc/passwd"))
	assert.Equal(t, uint32(sIFREG), typ("usr/bin/ldt-selftest"))
	assert.Equal(t, uint32(sIFREG), typ("lib/modules/6.12.0-test/extra/x.ko"))
	assert.Equal(t, "\x7fELF fake module", string(ents["lib/modules/6.12.0-test/extra/x.ko"].data))
	assert.Equal(t, uint32(0o644), ents["lib/modules/6.12.0-test/extra/x.ko"].mode&0o777)
	assert.Equal(t, uint32(sIFLNK), typ("lib/modules/6.12.0-test/build"))
	assert.Equal(t, uint32(sIFREG), typ("usr/lib/ldtlab/selftests/mm/soft-dirty"))
	assert.Equal(t, uint32(0o755), ents["usr/lib/ldtlab/selftests/mm/soft-dirty"].mode&0o777, "selftests stay executable")
	assert.Equal(t, uint32(sIFREG), typ("usr/local/bin/tool"))
	assert.Equal(t, uint32(0o755), ents["usr/local/bin/tool"].mode&0o777)
	_, hasInitApplet := ents["sbin/init"]
	assert.False(t, hasInitApplet, "busybox init must not shadow the agent")
	for name := range ents {
		assert.False(t, strings.HasPrefix(name, "/") || strings.Contains(name, ".."), "bad archive path %q", name)
	}
}

func TestEnsureNoBusybox(t *testing.T) {
	t.Setenv("LDTLAB_CACHE", t.TempDir())
	o := Options{Repo: repoRoot(t), Kernel: fakeKernel(t), Busybox: filepath.Join(t.TempDir(), "busybox"), Log: io.Discard}
	_, _, err := Ensure(context.Background(), o)
	require.Error(t, err)
	assert.Contains(t, err.Error(), BusyboxPackage)
}

func TestEnsureNeedsKernel(t *testing.T) {
	t.Setenv("LDTLAB_CACHE", t.TempDir())
	_, _, err := Ensure(context.Background(), Options{Repo: t.TempDir()})
	assert.Error(t, err)
}

func TestCheckStatic(t *testing.T) {
	assert.Error(t, checkStatic(filepath.Join(t.TempDir(), "missing")))
	if _, err := os.Stat("/bin/ls"); err == nil {
		err := checkStatic("/bin/ls")
		require.Error(t, err, "/bin/ls is dynamically linked")
		assert.Contains(t, err.Error(), BusyboxPackage)
	}
}

// keyRepo is the part of a repository Key reads.
func keyRepo(t *testing.T) string {
	t.Helper()
	repo := t.TempDir()
	writeFile(t, filepath.Join(repo, "go.mod"), "module ldtlab\n", 0o644)
	writeFile(t, filepath.Join(repo, "go.sum"), "", 0o644)
	writeFile(t, filepath.Join(repo, "guest", "cmd", "ldtlab-agent", "main.go"), "package main\n", 0o644)
	writeFile(t, filepath.Join(repo, "guest", "agent", "agent.go"), "package agent\n", 0o644)
	return repo
}

func TestKey(t *testing.T) {
	repo := keyRepo(t)
	bb := filepath.Join(t.TempDir(), "busybox")
	writeFile(t, bb, "busybox bytes", 0o755)
	extra := filepath.Join(t.TempDir(), "extra")
	writeFile(t, extra, "v1", 0o755)
	k := fakeKernel(t)
	o := Options{Repo: repo, Kernel: k, Busybox: bb, Extra: []File{{Path: "/usr/bin/extra", Host: extra, Mode: 0o755}}}
	key := func() string {
		t.Helper()
		s, err := Key(o)
		require.NoError(t, err)
		require.Len(t, s, 24)
		return s
	}
	base := key()
	assert.Equal(t, base, key(), "stable across calls")

	steps := []struct {
		name    string
		mutate  func()
		changes bool
	}{
		{"guest test file", func() { writeFile(t, filepath.Join(repo, "guest", "agent", "agent_test.go"), "package agent\n", 0o644) }, false},
		{"guest non-Go file", func() { writeFile(t, filepath.Join(repo, "guest", "README.md"), "x", 0o644) }, false},
		{"file outside guest", func() { writeFile(t, filepath.Join(repo, "orchestrator", "x.go"), "package x\n", 0o644) }, false},
		{"extra file content", func() { writeFile(t, extra, "v2", 0o755) }, true},
		{"extra file mode", func() { o.Extra[0].Mode = 0o644 }, true},
		{"extra file path", func() { o.Extra[0].Path = "/usr/bin/extra2" }, true},
		{"guest source", func() {
			writeFile(t, filepath.Join(repo, "guest", "agent", "agent.go"), "package agent\n// x\n", 0o644)
		}, true},
		{"new guest source", func() { writeFile(t, filepath.Join(repo, "guest", "ldt", "ldt.go"), "package ldt\n", 0o644) }, true},
		{"go.sum", func() { writeFile(t, filepath.Join(repo, "go.sum"), "x v1 h1:\n", 0o644) }, true},
		{"go.mod", func() { writeFile(t, filepath.Join(repo, "go.mod"), "module ldtlab\n\ngo 1.26\n", 0o644) }, true},
		{"busybox", func() { writeFile(t, bb, "other busybox", 0o755) }, true},
		{"kernel key", func() { k.Meta.Key = "fedcba9876543210fedcba98" }, true},
		{"second extra file", func() {
			o.Extra = append(o.Extra, File{Path: "/usr/bin/more", Host: extra, Mode: 0o755})
		}, true},
	}
	prev := base
	for _, s := range steps {
		s.mutate()
		got := key()
		if s.changes {
			assert.NotEqual(t, prev, got, "key must change: %s", s.name)
		} else {
			assert.Equal(t, prev, got, "key must not change: %s", s.name)
		}
		prev = got
	}
}

func TestKeyMissingInputs(t *testing.T) {
	repo := keyRepo(t)
	bb := filepath.Join(t.TempDir(), "busybox")
	writeFile(t, bb, "bb", 0o755)
	k := fakeKernel(t)

	_, err := Key(Options{Repo: repo, Kernel: k, Busybox: filepath.Join(t.TempDir(), "none")})
	assert.Error(t, err)

	_, err = Key(Options{Repo: repo, Kernel: k, Busybox: bb, Extra: []File{{Path: "/x", Host: filepath.Join(t.TempDir(), "gone")}}})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "gone")

	require.NoError(t, os.Remove(filepath.Join(repo, "go.sum")))
	_, err = Key(Options{Repo: repo, Kernel: k, Busybox: bb})
	assert.Error(t, err)
}

func TestHostProgram(t *testing.T) {
	if _, err := os.Stat("/bin/ls"); err != nil {
		t.Skip("/bin/ls absent")
	}
	if _, err := exec.LookPath("ldd"); err != nil {
		t.Skip("ldd absent")
	}
	files, err := HostProgram("/bin/ls", "coreutils")
	require.NoError(t, err)
	var binary, libc, loader bool
	seen := map[string]bool{}
	for _, f := range files {
		assert.False(t, seen[f.Path], "duplicate %s", f.Path)
		seen[f.Path] = true
		assert.True(t, filepath.IsAbs(f.Path), f.Path)
		assert.Equal(t, os.FileMode(0o755), f.Mode)
		st, err := os.Lstat(f.Host)
		require.NoError(t, err)
		assert.True(t, st.Mode().IsRegular(), "host side of %s must be the symlink's target, got %s", f.Path, f.Host)
		switch base := filepath.Base(f.Path); {
		case f.Path == "/bin/ls":
			binary = true
		case strings.HasPrefix(base, "libc.so"):
			libc = true
		case strings.HasPrefix(base, "ld-linux"):
			loader = true
		}
		assert.NotContains(t, f.Path, "vdso")
	}
	assert.True(t, binary, "binary missing from %v", files)
	assert.True(t, libc, "libc missing from %v", files)
	assert.True(t, loader, "loader missing from %v", files)
}

func TestHostProgramMissing(t *testing.T) {
	_, err := HostProgram(filepath.Join(t.TempDir(), "no-such-tool"), "some-package")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "some-package")
	assert.Contains(t, err.Error(), "no-such-tool")
}

func TestAddFiles(t *testing.T) {
	a := File{Path: "/lib/libc.so.6", Host: "/a"}
	b := File{Path: "/usr/bin/rsync", Host: "/b"}
	got := AddFiles([]File{a}, b, File{Path: a.Path, Host: "/other"}, b)
	if len(got) != 2 || got[0] != a || got[1] != b {
		t.Fatalf("AddFiles: %v, want [a b] (the first of each path)", got)
	}
}
