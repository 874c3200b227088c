package kernel

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	require.NoError(t, os.WriteFile(path, []byte(content), 0o644))
}

func TestParseConfig(t *testing.T) {
	cfg := `#
# Automatically generated file; DO NOT EDIT.
#
CONFIG_CC_VERSION_TEXT="gcc (Debian 12.2.0-14) 12.2.0"
CONFIG_X86_64=y
CONFIG_LABTEST=m
CONFIG_NR_CPUS=64
CONFIG_LOG_BUF_SHIFT=17
# CONFIG_KASAN is not set
CONFIG_DEBUG_VM=n
  CONFIG_INDENTED=y  
# a comment mentioning CONFIG_FOO=y
CONFIG_NO_EQUALS
NOT_A_CONFIG=y
CONFIG_EMPTY_STRING=""
CONFIG_CMDLINE="a=b c=d"
`
	got := ParseConfig(cfg)
	want := map[string]string{
		"CONFIG_CC_VERSION_TEXT": `"gcc (Debian 12.2.0-14) 12.2.0"`,
		"CONFIG_X86_64":          "y",
		"CONFIG_LABTEST":         "m",
		"CONFIG_NR_CPUS":         "64",
		"CONFIG_LOG_BUF_SHIFT":   "17",
		"CONFIG_KASAN":           "n",
		"CONFIG_DEBUG_VM":        "n",
		"CONFIG_INDENTED":        "y",
		"CONFIG_EMPTY_STRING":    `""`,
		"CONFIG_CMDLINE":         `"a=b c=d"`,
	}
	assert.Equal(t, want, got)
}

func TestParseConfigCRLFAndEmpty(t *testing.T) {
	assert.Empty(t, ParseConfig(""))
	assert.Equal(t, map[string]string{"CONFIG_A": "y", "CONFIG_B": "n"},
		ParseConfig("CONFIG_A=y\r\n# CONFIG_B is not set\r\n"))
}

func TestVerifyConfig(t *testing.T) {
	dir := t.TempDir()
	final := filepath.Join(dir, ".config")
	writeFile(t, final, `CONFIG_A=y
CONFIG_B=m
CONFIG_S="hello"
CONFIG_N=32
# CONFIG_OFF is not set
`)
	frag := func(name, content string) string {
		p := filepath.Join(dir, "images", "config", name)
		writeFile(t, p, content)
		return p
	}
	cases := []struct {
		name    string
		frags   map[string]string
		wantErr []string // substrings; nil = success
	}{
		{"satisfied", map[string]string{"base.config": "CONFIG_A=y\nCONFIG_B=m\nCONFIG_S=\"hello\"\nCONFIG_N=32\n"}, nil},
		{"=n satisfied by absence", map[string]string{"base.config": "CONFIG_ABSENT=n\n"}, nil},
		{"is not set satisfied by absence", map[string]string{"base.config": "# CONFIG_ABSENT is not set\n"}, nil},
		{"is not set satisfied by is not set", map[string]string{"base.config": "# CONFIG_OFF is not set\n"}, nil},
		{"comments and blanks ignored", map[string]string{"base.config": "# comment\n\nCONFIG_A=y\n"}, nil},
		{"unmet =y named with fragment", map[string]string{"base.config": "CONFIG_A=y\n", "debug.config": "CONFIG_MISSING=y\n"},
			[]string{"CONFIG_MISSING=y requested by images/config/debug.config", "final config has n"}},
		{"=y but final has m", map[string]string{"perf.config": "CONFIG_B=y\n"},
			[]string{"CONFIG_B=y requested by images/config/perf.config", "final config has m"}},
		{"=n but final has y", map[string]string{"base.config": "# CONFIG_A is not set\n"},
			[]string{"CONFIG_A=n requested by images/config/base.config", "final config has y"}},
		{"string differs", map[string]string{"base.config": "CONFIG_S=\"bye\"\n"},
			[]string{`CONFIG_S="bye"`, `final config has "hello"`}},
		{"several unmet, all reported", map[string]string{"base.config": "CONFIG_X1=y\n", "debug.config": "CONFIG_X2=m\n"},
			[]string{"CONFIG_X1=y requested by images/config/base.config", "CONFIG_X2=m requested by images/config/debug.config"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			os.RemoveAll(filepath.Join(dir, "images"))
			var paths []string
			for name, content := range c.frags {
				paths = append(paths, frag(name, content))
			}
			err := VerifyConfig(final, paths)
			if c.wantErr == nil {
				assert.NoError(t, err)
				return
			}
			require.Error(t, err)
			for _, w := range c.wantErr {
				assert.Contains(t, err.Error(), w)
			}
		})
	}
}

func TestVerifyConfigMissingFiles(t *testing.T) {
	dir := t.TempDir()
	assert.Error(t, VerifyConfig(filepath.Join(dir, "nope"), nil))
	final := filepath.Join(dir, ".config")
	writeFile(t, final, "CONFIG_A=y\n")
	assert.Error(t, VerifyConfig(final, []string{filepath.Join(dir, "missing.config")}))
}

const formatPatch = `From 1111111111111111111111111111111111111111 Mon Sep 17 00:00:00 2001
From: Lab Author <lab@example.org>
Date: Mon, 1 Jan 2024 00:00:00 +0000
Subject: [PATCH 1/5] mm: add the thing

Body text.
--- not a diff header, just prose
+++ neither is this? (only in commit text, no file)

---
 arch/x86/include/asm/pgtable.h | 10 ++++++++++
 mm/ldt.c                       | 20 ++++++++++++++++++++
 include/uapi/linux/ldt.h       |  5 +++++
 3 files changed, 35 insertions(+)
 create mode 100644 mm/ldt.c

diff --git a/arch/x86/include/asm/pgtable.h b/arch/x86/include/asm/pgtable.h
index 1234567..89abcde 100644
--- a/arch/x86/include/asm/pgtable.h
+++ b/arch/x86/include/asm/pgtable.h
@@ -1,3 +1,4 @@
 a
+b
 c
diff --git a/mm/ldt.c b/mm/ldt.c
new file mode 100644
index 0000000..1111111
--- /dev/null
+++ b/mm/ldt.c
@@ -0,0 +1,1 @@
+int ldt;
diff --git a/include/uapi/linux/ldt.h b/include/uapi/linux/ldt.h
index 2222222..3333333 100644
--- a/include/uapi/linux/ldt.h	2024-01-01 00:00:00.000000000 +0000
+++ b/include/uapi/linux/ldt.h	2024-01-01 00:00:00.000000000 +0000
@@ -1 +1,2 @@
 x
+y
diff --git a/mm/gone.c b/mm/gone.c
deleted file mode 100644
index 4444444..0000000
--- a/mm/gone.c
+++ /dev/null
@@ -1 +0,0 @@
-int gone;
-- 
2.39.2
`

func TestPatchFiles(t *testing.T) {
	p := filepath.Join(t.TempDir(), "0001-x.patch")
	writeFile(t, p, formatPatch)
	files, err := patchFiles(p)
	require.NoError(t, err)
	// The "+++ neither ..." line in the commit message looks like a header;
	// what matters is that every real target is listed with -p1 applied and
	// that /dev/null (a deletion) is not.
	assert.Contains(t, files, "arch/x86/include/asm/pgtable.h")
	assert.Contains(t, files, "mm/ldt.c")
	assert.Contains(t, files, "include/uapi/linux/ldt.h")
	assert.NotContains(t, files, "/dev/null")
	assert.NotContains(t, files, "dev/null")
	for _, f := range files {
		assert.False(t, strings.HasPrefix(f, "b/"), "-p1 not stripped from %s", f)
	}
}

func TestPatchFilesPlainDiff(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.patch")
	writeFile(t, p, "--- a/x/y.c\n+++ b/x/y.c\n@@ -1 +1 @@\n-a\n+b\n--- /dev/null\n+++ new/z.c\n@@ -0,0 +1 @@\n+z\n")
	files, err := patchFiles(p)
	require.NoError(t, err)
	assert.Equal(t, []string{"x/y.c", "z.c"}, files)

	_, err = patchFiles(filepath.Join(t.TempDir(), "missing.patch"))
	assert.Error(t, err)
}

func TestPatchFilesRealSeries(t *testing.T) {
	// The repository's own patches must parse to a non-empty file list each.
	repo := repoRoot(t)
	patches, err := readSeries(filepath.Join(repo, "kmod", "patches"))
	require.NoError(t, err)
	for _, p := range patches {
		files, err := patchFiles(p)
		require.NoError(t, err)
		assert.NotEmpty(t, files, filepath.Base(p))
		for _, f := range files {
			assert.False(t, strings.HasPrefix(f, "a/") || strings.HasPrefix(f, "b/") || strings.HasPrefix(f, "/"), "%s: %s", filepath.Base(p), f)
		}
	}
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

func TestReadSeries(t *testing.T) {
	t.Run("missing series is empty", func(t *testing.T) {
		got, err := readSeries(t.TempDir())
		assert.NoError(t, err)
		assert.Empty(t, got)
	})
	t.Run("missing directory is empty", func(t *testing.T) {
		got, err := readSeries(filepath.Join(t.TempDir(), "nope"))
		assert.NoError(t, err)
		assert.Empty(t, got)
	})
	t.Run("comments and blank lines", func(t *testing.T) {
		dir := t.TempDir()
		writeFile(t, filepath.Join(dir, "0001-a.patch"), "")
		writeFile(t, filepath.Join(dir, "0002-b.patch"), "")
		writeFile(t, filepath.Join(dir, "0003-unlisted.patch"), "")
		writeFile(t, filepath.Join(dir, "series"), "# the LDT series\n\n0002-b.patch\n   \n  0001-a.patch  \n# 0003-unlisted.patch\n")
		got, err := readSeries(dir)
		require.NoError(t, err)
		assert.Equal(t, []string{filepath.Join(dir, "0002-b.patch"), filepath.Join(dir, "0001-a.patch")}, got, "series order, not name order")
	})
	t.Run("empty series", func(t *testing.T) {
		dir := t.TempDir()
		writeFile(t, filepath.Join(dir, "series"), "")
		got, err := readSeries(dir)
		assert.NoError(t, err)
		assert.Empty(t, got)
	})
	t.Run("missing patch names the line", func(t *testing.T) {
		dir := t.TempDir()
		writeFile(t, filepath.Join(dir, "0001-a.patch"), "")
		writeFile(t, filepath.Join(dir, "series"), "# c\n0001-a.patch\n\n0002-missing.patch\n")
		_, err := readSeries(dir)
		require.Error(t, err)
		assert.Contains(t, err.Error(), "line 4")
		assert.Contains(t, err.Error(), "0002-missing.patch")
	})
}

func TestModuleDirs(t *testing.T) {
	kmod := t.TempDir()
	writeFile(t, filepath.Join(kmod, "labtest", "Kbuild"), "obj-m += labtest.o\n")
	writeFile(t, filepath.Join(kmod, "another", "Kbuild"), "obj-m += another.o\n")
	writeFile(t, filepath.Join(kmod, "patches", "series"), "")
	writeFile(t, filepath.Join(kmod, "include", "uapi", "linux", "ldt.h"), "")
	writeFile(t, filepath.Join(kmod, "Kbuild"), "") // a file at top level, not a module dir
	writeFile(t, filepath.Join(kmod, "README.md"), "")
	got, err := moduleDirs(kmod)
	require.NoError(t, err)
	assert.Equal(t, []string{filepath.Join(kmod, "another"), filepath.Join(kmod, "labtest")}, got)

	got, err = moduleDirs(filepath.Join(kmod, "missing"))
	assert.NoError(t, err)
	assert.Empty(t, got)
}

func TestOptionsVariant(t *testing.T) {
	assert.Equal(t, "debug", Options{}.Variant())
	assert.Equal(t, "debug-vanilla", Options{Vanilla: true}.Variant())
	assert.Equal(t, "perf", Options{Config: "perf"}.Variant())
	assert.Equal(t, "perf-vanilla", Options{Config: "perf", Vanilla: true}.Variant())
}

// fakeRepo builds a minimal repository tree and a small fake source tarball.
func fakeRepo(t *testing.T) (repo, tarball string) {
	t.Helper()
	repo = t.TempDir()
	writeFile(t, filepath.Join(repo, "images", "config", "base.config"), "CONFIG_A=y\n")
	writeFile(t, filepath.Join(repo, "images", "config", "debug.config"), "CONFIG_DEBUG_VM=y\n")
	writeFile(t, filepath.Join(repo, "images", "config", "perf.config"), "# CONFIG_DEBUG_VM is not set\n")
	writeFile(t, filepath.Join(repo, "kmod", "patches", "0001-one.patch"), "--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n")
	writeFile(t, filepath.Join(repo, "kmod", "patches", "0002-two.patch"), "--- a/y\n+++ b/y\n@@ -1 +1 @@\n-a\n+b\n")
	writeFile(t, filepath.Join(repo, "kmod", "patches", "series"), "0001-one.patch\n0002-two.patch\n")
	writeFile(t, filepath.Join(repo, "kmod", "labtest", "Kbuild"), "obj-m += labtest.o\n")
	writeFile(t, filepath.Join(repo, "kmod", "labtest", "labtest.c"), "int labtest;\n")
	tarball = filepath.Join(t.TempDir(), "linux-source-6.12.tar.xz")
	writeFile(t, tarball, "not really a tarball")
	return repo, tarball
}

func needGCC(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("gcc not installed (Key needs it)")
	}
}

func TestFindSourceOverride(t *testing.T) {
	t.Setenv("LDTLAB_CACHE", t.TempDir())
	_, tarball := fakeRepo(t)
	src, err := FindSource(tarball)
	require.NoError(t, err)
	assert.Equal(t, tarball, src.Tarball)
	assert.Equal(t, int64(len("not really a tarball")), src.Size)
	assert.NotEmpty(t, src.Version, "either the dpkg version or name-size-mtime")

	t.Setenv("LDTLAB_KERNEL_SOURCE", tarball)
	src2, err := FindSource("")
	require.NoError(t, err)
	assert.Equal(t, tarball, src2.Tarball)

	_, err = FindSource(filepath.Join(t.TempDir(), "missing.tar.xz"))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "missing.tar.xz")
}

func TestKey(t *testing.T) {
	needGCC(t)
	t.Setenv("LDTLAB_CACHE", t.TempDir())
	repo, tarball := fakeRepo(t)
	opts := Options{Repo: repo, Tarball: tarball}
	key := func(o Options) string {
		t.Helper()
		k, err := Key(o)
		require.NoError(t, err)
		require.Len(t, k, 24)
		return k
	}
	base := key(opts)
	assert.Equal(t, base, key(opts), "stable across calls")

	type step struct {
		name    string
		mutate  func()
		changes bool
	}
	kmod := filepath.Join(repo, "kmod")
	steps := []step{
		{"module build output .o/.ko/.cmd appears", func() {
			for _, f := range []string{"labtest.o", "labtest.ko", "labtest.mod", "labtest.mod.c", "labtest.mod.o", ".labtest.o.cmd", "Module.symvers", "modules.order"} {
				writeFile(t, filepath.Join(kmod, "labtest", f), "output "+f)
			}
		}, false},
		{"unrelated kmod README", func() { writeFile(t, filepath.Join(kmod, "README.md"), "docs") }, false},
		{"a patch not in the series", func() { writeFile(t, filepath.Join(kmod, "patches", "0009-draft.patch"), "x") }, false},
		{"patch content", func() {
			writeFile(t, filepath.Join(kmod, "patches", "0002-two.patch"), "--- a/y\n+++ b/y\n@@ -1 +1 @@\n-a\n+c\n")
		}, true},
		{"series order", func() {
			writeFile(t, filepath.Join(kmod, "patches", "series"), "0002-two.patch\n0001-one.patch\n")
		}, true},
		{"series comment only", func() {
			writeFile(t, filepath.Join(kmod, "patches", "series"), "# reordered\n0002-two.patch\n0001-one.patch\n")
		}, false},
		{"base fragment", func() {
			writeFile(t, filepath.Join(repo, "images", "config", "base.config"), "CONFIG_A=y\nCONFIG_B=y\n")
		}, true},
		{"debug fragment", func() { writeFile(t, filepath.Join(repo, "images", "config", "debug.config"), "CONFIG_KASAN=y\n") }, true},
		{"perf fragment (not used by debug)", func() { writeFile(t, filepath.Join(repo, "images", "config", "perf.config"), "CONFIG_X=y\n") }, false},
		{"ldt.config appears", func() { writeFile(t, filepath.Join(repo, "images", "config", "ldt.config"), "CONFIG_LDT=y\n") }, true},
		{"module source", func() { writeFile(t, filepath.Join(kmod, "labtest", "labtest.c"), "int labtest2;\n") }, true},
		{"new module header", func() { writeFile(t, filepath.Join(kmod, "labtest", "labtest.h"), "") }, true},
		{"new module directory", func() {
			writeFile(t, filepath.Join(kmod, "other", "Kbuild"), "obj-m += other.o\n")
			writeFile(t, filepath.Join(kmod, "other", "other.c"), "")
		}, true},
		{"source tarball size", func() { writeFile(t, tarball, "not really a tarball, longer") }, true},
	}
	prev := base
	for _, s := range steps {
		s.mutate()
		got := key(opts)
		if s.changes {
			assert.NotEqual(t, prev, got, "key must change: %s", s.name)
		} else {
			assert.Equal(t, prev, got, "key must not change: %s", s.name)
		}
		prev = got
	}
}

func TestKeyVariants(t *testing.T) {
	needGCC(t)
	t.Setenv("LDTLAB_CACHE", t.TempDir())
	repo, tarball := fakeRepo(t)
	keys := map[string]string{}
	for _, o := range []Options{
		{Repo: repo, Tarball: tarball},
		{Repo: repo, Tarball: tarball, Config: "perf"},
		{Repo: repo, Tarball: tarball, Vanilla: true},
		{Repo: repo, Tarball: tarball, Config: "perf", Vanilla: true},
	} {
		k, err := Key(o)
		require.NoError(t, err)
		if other, dup := keys[k]; dup {
			t.Errorf("%s and %s share key %s", o.Variant(), other, k)
		}
		keys[k] = o.Variant()
	}
	// Explicit "debug" is the default.
	k1, err := Key(Options{Repo: repo, Tarball: tarball})
	require.NoError(t, err)
	k2, err := Key(Options{Repo: repo, Tarball: tarball, Config: "debug"})
	require.NoError(t, err)
	assert.Equal(t, k1, k2)

	// Vanilla ignores the patch series entirely, so a patch change keeps its key.
	v1, err := Key(Options{Repo: repo, Tarball: tarball, Vanilla: true})
	require.NoError(t, err)
	writeFile(t, filepath.Join(repo, "kmod", "patches", "0001-one.patch"), "changed")
	v2, err := Key(Options{Repo: repo, Tarball: tarball, Vanilla: true})
	require.NoError(t, err)
	assert.Equal(t, v1, v2)
	// ...and a broken series does not matter to it.
	writeFile(t, filepath.Join(repo, "kmod", "patches", "series"), "0007-missing.patch\n")
	_, err = Key(Options{Repo: repo, Tarball: tarball, Vanilla: true})
	assert.NoError(t, err)
	_, err = Key(Options{Repo: repo, Tarball: tarball})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "0007-missing.patch")
}

func TestKeyErrors(t *testing.T) {
	needGCC(t)
	t.Setenv("LDTLAB_CACHE", t.TempDir())
	repo, tarball := fakeRepo(t)

	_, err := Key(Options{Tarball: tarball})
	assert.ErrorContains(t, err, "repository root")

	_, err = Key(Options{Repo: repo, Tarball: tarball, Config: "fast"})
	assert.ErrorContains(t, err, `"fast"`)

	_, err = Key(Options{Repo: repo, Tarball: filepath.Join(t.TempDir(), "none.tar.xz")})
	assert.Error(t, err)

	require.NoError(t, os.Remove(filepath.Join(repo, "images", "config", "debug.config")))
	_, err = Key(Options{Repo: repo, Tarball: tarball})
	assert.ErrorContains(t, err, "debug.config", "a missing required fragment is an error")
}

func TestFindMissesInEmptyCache(t *testing.T) {
	needGCC(t)
	t.Setenv("LDTLAB_CACHE", t.TempDir())
	repo, tarball := fakeRepo(t)
	b, ok, err := Find(Options{Repo: repo, Tarball: tarball})
	assert.NoError(t, err)
	assert.False(t, ok)
	assert.Nil(t, b)
}

func TestTopDir(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "linux-source-6.12", "Makefile"), "")
	got, err := topDir(dir)
	require.NoError(t, err)
	assert.Equal(t, filepath.Join(dir, "linux-source-6.12"), got)

	flat := t.TempDir()
	writeFile(t, filepath.Join(flat, "Makefile"), "")
	got, err = topDir(flat)
	require.NoError(t, err)
	assert.Equal(t, flat, got)

	_, err = topDir(t.TempDir())
	assert.Error(t, err)
}

// writeTar writes an uncompressed tar (tar -xf detects the format by
// content, whatever the name) holding linux/Makefile with content.
func writeTar(t *testing.T, path, content string) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	require.NoError(t, tw.WriteHeader(&tar.Header{Name: "linux/", Typeflag: tar.TypeDir, Mode: 0o755}))
	require.NoError(t, tw.WriteHeader(&tar.Header{Name: "linux/Makefile", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(content))}))
	_, err := tw.Write([]byte(content))
	require.NoError(t, err)
	require.NoError(t, tw.Close())
	require.NoError(t, os.WriteFile(path, buf.Bytes(), 0o644))
}

func TestExtractFakeTarball(t *testing.T) {
	if _, err := exec.LookPath("tar"); err != nil {
		t.Skip("no tar")
	}
	t.Setenv("LDTLAB_CACHE", t.TempDir())
	tarball := filepath.Join(t.TempDir(), "linux-source-6.12.tar.xz")
	writeTar(t, tarball, "VERSION = 6\n")
	src, err := FindSource(tarball)
	require.NoError(t, err)
	top, err := src.Extract(context.Background(), func(string, ...any) {})
	require.NoError(t, err)
	assert.Equal(t, "linux", filepath.Base(top))
	b, err := os.ReadFile(filepath.Join(top, "Makefile"))
	require.NoError(t, err)
	assert.Equal(t, "VERSION = 6\n", string(b))

	// Second call: the shared extraction is reused.
	logged := false
	top2, err := src.Extract(context.Background(), func(string, ...any) { logged = true })
	require.NoError(t, err)
	assert.Equal(t, top, top2)
	assert.False(t, logged, "no second extraction")

	bad := filepath.Join(t.TempDir(), "broken.tar.xz")
	require.NoError(t, os.WriteFile(bad, []byte("garbage"), 0o644))
	bsrc, err := FindSource(bad)
	require.NoError(t, err)
	bsrc.Version = "broken-for-test" // distinct extraction key
	_, err = bsrc.Extract(context.Background(), func(string, ...any) {})
	assert.ErrorContains(t, err, "extracting")
}

// An overriding tarball (LDTLAB_KERNEL_SOURCE / Options.Tarball) that is
// replaced by another source of the same size must change the kernel key
// and must not be served from the old extraction. Fails today whenever the
// Debian package linux-source-6.12 is installed: FindSource (source.go)
// takes the package's version from dpkg-query for ANY tarball path, so the
// "name, size and mtime" identity meant for foreign tarballs is never used;
// Extract's key (version + path) then returns the stale tree.
func TestOverrideTarballIdentity(t *testing.T) {
	needGCC(t)
	if _, err := exec.LookPath("tar"); err != nil {
		t.Skip("no tar")
	}
	t.Setenv("LDTLAB_CACHE", t.TempDir())
	repo, _ := fakeRepo(t)
	tarball := filepath.Join(t.TempDir(), "linux-custom.tar.xz")
	writeTar(t, tarball, "SOURCE = one\n")
	k1, err := Key(Options{Repo: repo, Tarball: tarball})
	require.NoError(t, err)
	src1, err := FindSource(tarball)
	require.NoError(t, err)
	top1, err := src1.Extract(context.Background(), func(string, ...any) {})
	require.NoError(t, err)

	// Another source, same size, same path, newer.
	writeTar(t, tarball, "SOURCE = two\n")
	later := time.Now().Add(time.Hour)
	require.NoError(t, os.Chtimes(tarball, later, later))

	k2, err := Key(Options{Repo: repo, Tarball: tarball})
	require.NoError(t, err)
	assert.NotEqual(t, k1, k2, "kernel key unchanged after the source tarball was replaced (version %q)", src1.Version)

	src2, err := FindSource(tarball)
	require.NoError(t, err)
	top2, err := src2.Extract(context.Background(), func(string, ...any) {})
	require.NoError(t, err)
	b, err := os.ReadFile(filepath.Join(top2, "Makefile"))
	require.NoError(t, err)
	assert.Equal(t, "SOURCE = two\n", string(b), "stale extraction %s served for a replaced tarball", top1)
}

// TestSanitizeConfig: the sanitize build is debug.config plus
// sanitize.config, so a change to either changes its key; other names are
// refused.
func TestSanitizeConfig(t *testing.T) {
	needGCC(t)
	t.Setenv("LDTLAB_CACHE", t.TempDir())
	repo, tarball := fakeRepo(t)
	writeFile(t, filepath.Join(repo, "images", "config", "sanitize.config"), "CONFIG_KASAN=y\n")
	o := Options{Repo: repo, Tarball: tarball, Config: "sanitize"}
	p, err := newPlan(o)
	require.NoError(t, err)
	var names []string
	for _, f := range p.fragments {
		names = append(names, filepath.Base(f))
	}
	assert.Equal(t, []string{"base.config", "debug.config", "sanitize.config", "ldt.config"}, names)

	k0, err := Key(o)
	require.NoError(t, err)
	kd, err := Key(Options{Repo: repo, Tarball: tarball})
	require.NoError(t, err)
	assert.NotEqual(t, kd, k0, "sanitize and debug must not share a cache entry")
	writeFile(t, filepath.Join(repo, "images", "config", "debug.config"), "CONFIG_DEBUG_VM=y\nCONFIG_DEBUG_LIST=y\n")
	k1, err := Key(o)
	require.NoError(t, err)
	assert.NotEqual(t, k0, k1, "debug.config is part of the sanitize build")
	writeFile(t, filepath.Join(repo, "images", "config", "sanitize.config"), "CONFIG_KASAN=y\nCONFIG_KFENCE=y\n")
	k2, err := Key(o)
	require.NoError(t, err)
	assert.NotEqual(t, k1, k2)

	_, err = Key(Options{Repo: repo, Tarball: tarball, Config: "kasan"})
	assert.ErrorContains(t, err, `unknown kernel config "kasan"`)
}

// TestDebugInfoKey: --debuginfo is a build of its own (the fragment is
// merged last and hashed), and it leaves the ordinary kernels' keys alone:
// adding or editing debuginfo.config must not rebuild them.
func TestDebugInfoKey(t *testing.T) {
	needGCC(t)
	t.Setenv("LDTLAB_CACHE", t.TempDir())
	repo, tarball := fakeRepo(t)
	for _, c := range []struct {
		name string
		o    Options
	}{
		{"debug", Options{Repo: repo, Tarball: tarball}},
		{"debug-vanilla", Options{Repo: repo, Tarball: tarball, Vanilla: true}},
		{"perf", Options{Repo: repo, Tarball: tarball, Config: "perf"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := filepath.Join(repo, "images", "config", "debuginfo.config")
			os.Remove(cfg)
			plain, err := Key(c.o)
			require.NoError(t, err)
			writeFile(t, cfg, "CONFIG_DEBUG_INFO=y\n")
			again, err := Key(c.o)
			require.NoError(t, err)
			assert.Equal(t, plain, again, "debuginfo.config is not part of the ordinary build")

			d := c.o
			d.DebugInfo = true
			p, err := newPlan(d)
			require.NoError(t, err)
			assert.Equal(t, "debuginfo.config", filepath.Base(p.fragments[len(p.fragments)-1]), "merged last, so it wins")
			assert.NotEqual(t, plain, p.key)
			writeFile(t, cfg, "CONFIG_DEBUG_INFO=y\nCONFIG_GDB_SCRIPTS=y\n")
			k2, err := Key(d)
			require.NoError(t, err)
			assert.NotEqual(t, p.key, k2, "an edit of debuginfo.config rebuilds the debuginfo kernel")
		})
	}
}

// TestDebugInfoFragment: the real fragment asks for DWARF and the gdb
// scripts, and never for DEBUG_INFO_REDUCED (the lx- commands need the
// full types).
func TestDebugInfoFragment(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "config", "debuginfo.config"))
	require.NoError(t, err)
	m := ParseConfig(string(b))
	for k, want := range map[string]string{
		"CONFIG_DEBUG_INFO": "y", "CONFIG_GDB_SCRIPTS": "y", "CONFIG_DEBUG_INFO_NONE": "n", "CONFIG_DEBUG_INFO_REDUCED": "n",
	} {
		assert.Equal(t, want, m[k], k)
	}
}

// TestKeepGDBScripts: the entry gets real copies of vmlinux-gdb.py and
// scripts/gdb/linux/*.py, which in the object directory are symlinks
// into the work tree (replaced by the next build), laid out as
// vmlinux-gdb.py expects: its own directory + "/scripts/gdb".
func TestKeepGDBScripts(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make not installed")
	}
	src, out, dst := t.TempDir(), t.TempDir(), t.TempDir()
	writeFile(t, filepath.Join(src, "scripts", "gdb", "vmlinux-gdb.py"), "import linux.utils\n")
	writeFile(t, filepath.Join(src, "scripts", "gdb", "linux", "utils.py"), "# utils\n")
	writeFile(t, filepath.Join(src, "scripts", "gdb", "linux", "dmesg.py"), "# dmesg\n")
	// What the kernel's scripts_gdb target does with O=: links, plus the
	// generated constants.py.
	writeFile(t, filepath.Join(src, "Makefile"), `scripts_gdb:
	mkdir -p $(O)/scripts/gdb/linux
	ln -fsn $(CURDIR)/scripts/gdb/vmlinux-gdb.py $(O)/vmlinux-gdb.py
	for f in $(CURDIR)/scripts/gdb/linux/*.py; do ln -fsn $$f $(O)/scripts/gdb/linux/; done
	echo 'LX_CONFIG_DEBUG_INFO_REDUCED = 0' > $(O)/scripts/gdb/linux/constants.py
`)
	p := &plan{opts: Options{Log: io.Discard}, variant: "debug,debuginfo"}
	require.NoError(t, p.keepGDBScripts(context.Background(), src, out, dst, io.Discard))
	for _, f := range []string{"vmlinux-gdb.py", "scripts/gdb/linux/utils.py", "scripts/gdb/linux/dmesg.py", "scripts/gdb/linux/constants.py"} {
		fi, err := os.Lstat(filepath.Join(dst, f))
		require.NoError(t, err, f)
		assert.True(t, fi.Mode().IsRegular(), "%s is a copy, not a link: %v", f, fi.Mode())
	}
	os.RemoveAll(src) // the next build replaces the work tree
	b, err := os.ReadFile(filepath.Join(dst, "scripts", "gdb", "linux", "dmesg.py"))
	require.NoError(t, err)
	assert.Equal(t, "# dmesg\n", string(b))

	// Without CONFIG_GDB_SCRIPTS's output, say so.
	src2 := t.TempDir()
	writeFile(t, filepath.Join(src2, "Makefile"), "scripts_gdb:\n\ttrue\n")
	err = p.keepGDBScripts(context.Background(), src2, t.TempDir(), t.TempDir(), io.Discard)
	assert.ErrorContains(t, err, "CONFIG_GDB_SCRIPTS")
}
