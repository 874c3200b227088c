package kernel

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ldtlab/images/cache"
)

// series10 is named like the real series: names full of dashes.
var series10 = []string{
	"0001-x86-mm-add-the-LDT-OS-backup-and-LDT-backup-PTE-PMD-.patch",
	"0002-mm-carry-LDT-dirtiness-in-swap-and-migration-entries.patch",
	"0003-mm-keep-LDT-dirtiness-across-THP-split-and-collapse-.patch",
	"0004-mm-gup-report-writes-made-through-GUP-to-LDT.patch",
	"0005-mm-add-dev-ldt-the-lightweight-dirty-tracking-interf.patch",
	"0006-mm-userfaultfd-keep-LDT-dirtiness-across-UFFDIO_MOVE.patch",
	"0007-mm-keep-LDT-state-out-of-large-folio-PTE-batching.patch",
	"0008-mm-LDT-collapse-and-GUP-re-mark-use-the-entry-as-it-.patch",
	"0009-mm-ldt-lose-nothing-on-a-fault-flush-pending-TLB-wor.patch",
	"0010-mm-ldt-look-at-struct-page-only-in-an-mm-that-has-pi.patch",
}

func TestSelect(t *testing.T) {
	cases := []struct {
		patches, without string
		want             []int // 1-based patch numbers applied
		spec             string
	}{
		{"", "", []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, "0001-0010"},
		{"0001-0010", "", []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, "0001-0010"},
		{"0001-0005", "", []int{1, 2, 3, 4, 5}, "0001-0005"},
		{"1-5", "", []int{1, 2, 3, 4, 5}, "0001-0005"},
		{" 0001 - 0005 ", "", nil, ""}, // spaces inside a range: an error below
		{"0001-0005,0007", "", []int{1, 2, 3, 4, 5, 7}, "0001-0005,0007"},
		{"7,0001-0003", "", []int{1, 2, 3, 7}, "0001-0003,0007"},
		{"0003,0003,3", "", []int{3}, "0003"},
		{"0008-", "", []int{8, 9, 10}, "0008-0010"},
		{"-0003", "", []int{1, 2, 3}, "0001-0003"},
		{"0006-mm-userfaultfd-keep-LDT-dirtiness-across-UFFDIO_MOVE.patch", "", []int{6}, "0006"},
		{"0006-mm-userfaultfd-keep-LDT-dirtiness-across-UFFDIO_MOVE", "", []int{6}, "0006"},
		{"0001-0006-mm-userfaultfd-keep-LDT-dirtiness-across-UFFDIO_MOVE.patch", "", []int{1, 2, 3, 4, 5, 6}, "0001-0006"},
		{"0004-mm-gup-report-writes-made-through-GUP-to-LDT.patch-0006", "", []int{4, 5, 6}, "0004-0006"},
		{"", "0010", []int{1, 2, 3, 4, 5, 6, 7, 8, 9}, "0001-0009"},
		{"", "10", []int{1, 2, 3, 4, 5, 6, 7, 8, 9}, "0001-0009"},
		{"", "0006-0009", []int{1, 2, 3, 4, 5, 10}, "0001-0005,0010"},
		{"0001-0008", "0006", []int{1, 2, 3, 4, 5, 7, 8}, "0001-0005,0007-0008"},
	}
	for _, c := range cases {
		t.Run(c.patches+"/"+c.without, func(t *testing.T) {
			sel, err := Select(series10, c.patches, c.without)
			if c.want == nil {
				assert.Error(t, err)
				return
			}
			require.NoError(t, err)
			var want, omitted []string
			for i, n := range series10 {
				in := false
				for _, w := range c.want {
					in = in || w == i+1
				}
				if in {
					want = append(want, n)
				} else {
					omitted = append(omitted, n)
				}
			}
			assert.Equal(t, want, sel.Applied)
			assert.Equal(t, omitted, sel.Omitted)
			assert.Equal(t, c.spec, sel.Spec())
			assert.Equal(t, len(c.want) == 10, sel.Full())
			// The spec reads back to the same selection.
			again, err := Select(series10, sel.Spec(), "")
			require.NoError(t, err)
			assert.Equal(t, sel.Applied, again.Applied)
		})
	}
}

func TestSelectErrors(t *testing.T) {
	cases := []struct{ patches, without, want string }{
		{"0011", "", `no patch "0011" in kmod/patches/series (it has 0001-0010)`},
		{"0001-0011", "", `no patch "0001-0011"`},
		{"0005-0003", "", `range "0005-0003" runs backwards (0005 comes after 0003 in the series)`},
		{"0001,,0002", "", "an empty item"},
		{"0001,", "", "an empty item"},
		{"mm-gup", "", `no patch "mm-gup"`},
		{"0000", "", `no patch "0000"`},
		{"-", "", `no patch "-"`},
		{"", "0012", `--without "0012": no patch "0012"`},
		{"0003", "0003", "selects no patch: use --vanilla"},
		{"", "0001-0010", "selects no patch"},
	}
	for _, c := range cases {
		_, err := Select(series10, c.patches, c.without)
		if assert.Error(t, err, "%q/%q", c.patches, c.without) {
			assert.Contains(t, err.Error(), c.want)
		}
	}
	_, err := Select(nil, "0001", "")
	assert.ErrorContains(t, err, "series is empty")
	sel, err := Select(nil, "", "")
	assert.NoError(t, err, "an empty series is a valid (vanilla-like) selection")
	assert.True(t, sel.Full())
}

func TestSelectionPrefixAndSummary(t *testing.T) {
	for spec, prefix := range map[string]bool{"": true, "0001-0005": true, "0001": true, "0001-0005,0007": false, "0002-0010": false} {
		sel, err := Select(series10, spec, "")
		require.NoError(t, err)
		assert.Equal(t, prefix, sel.Prefix(), spec)
	}
	sel, _ := Select(series10, "0001-0005,0007", "")
	assert.Equal(t, "6 of 10 patches: 0001-0005,0007 (without 0006,0008-0010)", sel.Summary())
	sel, _ = Select(series10, "", "")
	assert.Equal(t, "all 10 patches of the series (0001-0010)", sel.Summary())

	m := Meta{Patches: series10[:5], Omitted: series10[5:], LDTConfig: "n"}
	assert.Equal(t, "5 of 10 patches: 0001-0005 (without 0006-0010), CONFIG_LDT=n", m.PatchSummary())
	assert.Equal(t, "all 10 patches of the series (0001-0010)", Meta{Patches: series10}.PatchSummary())
	assert.Equal(t, "vanilla (no LDT patch)", Meta{Vanilla: true}.PatchSummary())

	yes, no := true, false
	assert.True(t, Meta{Patches: series10}.HasDevice(), "entries from before ldt_device was recorded had the device")
	assert.True(t, Meta{Patches: series10, Device: &yes}.HasDevice())
	assert.False(t, Meta{Patches: series10[:4], Device: &no}.HasDevice())
	assert.False(t, Meta{Patches: series10, LDTConfig: "n", Device: &yes}.HasDevice())
	assert.False(t, Meta{Vanilla: true}.HasDevice())
}

func TestPatchID(t *testing.T) {
	assert.Equal(t, "0006", PatchID(series10[5]))
	assert.Equal(t, "fix.patch", PatchID("fix.patch"))
}

// series repo: fakeRepo with a series of n patches named like the real one.
func seriesRepo(t *testing.T, n int) (repo, tarball string) {
	repo, tarball = fakeRepo(t)
	dir := filepath.Join(repo, "kmod", "patches")
	os.Remove(filepath.Join(dir, "0001-one.patch"))
	os.Remove(filepath.Join(dir, "0002-two.patch"))
	var names []string
	for i := 0; i < n; i++ {
		writeFile(t, filepath.Join(dir, series10[i]), fmt.Sprintf("--- a/f%d\n+++ b/f%d\n@@ -1 +1 @@\n-a\n+b\n", i, i))
		names = append(names, series10[i])
	}
	writeFile(t, filepath.Join(dir, "series"), "# c\n"+strings.Join(names, "\n")+"\n")
	writeFile(t, filepath.Join(repo, "images", "config", "ldt.config"), "CONFIG_LDT=y\n")
	writeFile(t, filepath.Join(repo, "images", "config", "ldt-off.config"), "# CONFIG_LDT is not set\n")
	return repo, tarball
}

func TestKeySelection(t *testing.T) {
	needGCC(t)
	t.Setenv("LDTLAB_CACHE", t.TempDir())
	repo, tarball := seriesRepo(t, 10)
	key := func(o Options) string {
		t.Helper()
		o.Repo, o.Tarball = repo, tarball
		k, err := Key(o)
		require.NoError(t, err, "%+v", o)
		return k
	}
	full := key(Options{})

	// The whole series keeps the key it always had: the same parts as
	// before --patches existed, so cached kernels stay valid.
	p, err := newPlan(Options{Repo: repo, Tarball: tarball})
	require.NoError(t, err)
	old := cache.NewKey().
		AddString("recipe", recipeVersion).
		AddString("source", fmt.Sprintf("%s %s %d", SourcePackage, p.src.Version, p.src.Size)).
		AddString("config", "debug").
		AddString("compiler", p.compiler).
		AddString("selftests", strings.Join(Selftests, ","))
	for _, f := range []string{"base.config", "debug.config", "ldt.config"} {
		require.NoError(t, old.AddFile("fragment/"+f, filepath.Join(repo, "images", "config", f)))
	}
	for i, n := range series10 {
		b, err := os.ReadFile(filepath.Join(repo, "kmod", "patches", n))
		require.NoError(t, err)
		old.Add(fmt.Sprintf("patch/%03d/%s", i, n), b)
	}
	require.NoError(t, old.AddTree("module/labtest", filepath.Join(repo, "kmod", "labtest")))
	assert.Equal(t, old.Sum()[:24], full, "the default key is computed as before")

	// Every way of writing the whole series is the default kernel.
	for _, o := range []Options{{Patches: "0001-0010"}, {Patches: "1-10"}, {Patches: "0001-"}, {Without: ""}} {
		assert.Equal(t, full, key(o), "%+v", o)
	}

	seen := map[string]string{full: "full"}
	for _, o := range []Options{
		{Patches: "0001-0005"}, {Patches: "0001-0004"}, {Patches: "0001-0004,0006"}, {Without: "0010"},
		{Patches: "0002-0010"}, {LDTOff: true}, {Patches: "0001-0005", LDTOff: true}, {Vanilla: true},
	} {
		k := key(o)
		if other, dup := seen[k]; dup {
			t.Errorf("%s and %s share key %s", o.Variant(), other, k)
		}
		seen[k] = fmt.Sprintf("%+v", o)
	}
	// The same subset written differently is the same kernel.
	assert.Equal(t, key(Options{Patches: "0001-0005"}), key(Options{Patches: "1,2,3,4,5"}))
	assert.Equal(t, key(Options{Patches: "0001-0005"}), key(Options{Without: "0006-"}))
	assert.Equal(t, key(Options{Without: "0010"}), key(Options{Patches: "-0009"}))

	// A left-out patch does not matter to a subset's key; an applied one does.
	sub := key(Options{Patches: "0001-0005"})
	writeFile(t, filepath.Join(repo, "kmod", "patches", series10[7]), "--- a/z\n+++ b/z\n@@ -1 +1 @@\n-a\n+c\n")
	assert.Equal(t, sub, key(Options{Patches: "0001-0005"}))
	assert.NotEqual(t, full, key(Options{}))
	writeFile(t, filepath.Join(repo, "kmod", "patches", series10[2]), "--- a/z\n+++ b/z\n@@ -1 +1 @@\n-a\n+d\n")
	assert.NotEqual(t, sub, key(Options{Patches: "0001-0005"}))

	// Errors come before any build: unknown patches, vanilla with a selection.
	_, err = Key(Options{Repo: repo, Tarball: tarball, Patches: "0011"})
	assert.ErrorContains(t, err, `no patch "0011"`)
	_, err = Key(Options{Repo: repo, Tarball: tarball, Vanilla: true, Without: "0010"})
	assert.ErrorContains(t, err, "--vanilla")
	_, err = Key(Options{Repo: repo, Tarball: tarball, Vanilla: true, LDTOff: true})
	assert.ErrorContains(t, err, "CONFIG_LDT")
}

func TestVariantAndFlags(t *testing.T) {
	repo, _ := seriesRepo(t, 10)
	for _, c := range []struct {
		o              Options
		variant, flags string
	}{
		{Options{Repo: repo}, "debug", ""},
		{Options{Repo: repo, Patches: "1-10"}, "debug", ""},
		{Options{Repo: repo, Patches: "1-5"}, "debug+0001-0005", " --patches 0001-0005"},
		{Options{Repo: repo, Without: "0010", Config: "sanitize"}, "sanitize+0001-0009", " --config sanitize --patches 0001-0009"},
		{Options{Repo: repo, LDTOff: true}, "debug+all,ldt=n", " --ldt=n"},
		{Options{Repo: repo, Patches: "0001-0003", LDTOff: true}, "debug+0001-0003,ldt=n", " --patches 0001-0003 --ldt=n"},
		{Options{Repo: repo, Vanilla: true, Config: "perf"}, "perf-vanilla", " --config perf --vanilla"},
		{Options{Repo: repo, DebugInfo: true}, "debug,debuginfo", " --debuginfo"},
		{Options{Repo: repo, Vanilla: true, DebugInfo: true}, "debug-vanilla,debuginfo", " --vanilla --debuginfo"},
	} {
		assert.Equal(t, c.variant, c.o.Variant(), "%+v", c.o)
		assert.Equal(t, c.flags, c.o.Flags(), "%+v", c.o)
		assert.True(t, strings.HasPrefix(c.o.BuildCommand(), "labctl build --config "+c.o.config()), c.o.BuildCommand())
		assert.Equal(t, 1, strings.Count(c.o.BuildCommand(), "--config"), c.o.BuildCommand())
	}
}

func TestWorkName(t *testing.T) {
	repo, _ := seriesRepo(t, 10)
	for o, want := range map[*Options]string{
		{Repo: repo}:                                      "debug",
		{Repo: repo, Patches: "0001-0010"}:                "debug",
		{Repo: repo, Patches: "0001-0005"}:                "debug-subset",
		{Repo: repo, Without: "0003", Config: "perf"}:     "perf-subset",
		{Repo: repo, LDTOff: true}:                        "debug-ldt-n",
		{Repo: repo, Patches: "1-3", LDTOff: true}:        "debug-ldt-n",
		{Repo: repo, Vanilla: true}:                       "debug-vanilla",
		{Repo: repo, DebugInfo: true}:                     "debug-debuginfo",
		{Repo: repo, Config: "sanitize", DebugInfo: true}: "sanitize-debuginfo",
		{Repo: repo, Vanilla: true, DebugInfo: true}:      "debug-vanilla-debuginfo",
	} {
		sel, err := o.Selection()
		require.NoError(t, err)
		p := &plan{opts: *o, sel: sel}
		assert.Equal(t, want, p.workName(), "%+v", *o)
	}
}

func TestTrialApply(t *testing.T) {
	if _, err := exec.LookPath("patch"); err != nil {
		t.Skip("patch not installed")
	}
	repo := t.TempDir()
	pristine := t.TempDir()
	writeFile(t, filepath.Join(pristine, "mm", "a.c"), "one\ntwo\nthree\n")
	writeFile(t, filepath.Join(pristine, "mm", "b.c"), "x\n")
	dir := filepath.Join(repo, "kmod", "patches")
	names := []string{"0001-a.patch", "0002-a-again.patch", "0003-b.patch", "0004-new.patch"}
	writeFile(t, filepath.Join(dir, names[0]), "--- a/mm/a.c\n+++ b/mm/a.c\n@@ -1,3 +1,3 @@\n one\n-two\n+TWO\n three\n")
	writeFile(t, filepath.Join(dir, names[1]), "--- a/mm/a.c\n+++ b/mm/a.c\n@@ -1,3 +1,3 @@\n one\n-TWO\n+2\n three\n")
	writeFile(t, filepath.Join(dir, names[2]), "--- a/mm/b.c\n+++ b/mm/b.c\n@@ -1 +1 @@\n-x\n+y\n")
	writeFile(t, filepath.Join(dir, names[3]), "--- /dev/null\n+++ b/mm/new.c\n@@ -0,0 +1 @@\n+new\n")
	writeFile(t, filepath.Join(dir, "series"), strings.Join(names, "\n")+"\n")
	trial := func(patches, without string) error {
		t.Helper()
		o := Options{Repo: repo, Patches: patches, Without: without}
		sel, err := o.Selection()
		require.NoError(t, err)
		p := &plan{opts: o, sel: sel}
		for _, n := range sel.Applied {
			path := filepath.Join(dir, n)
			b, err := os.ReadFile(path)
			require.NoError(t, err)
			p.patches, p.patchData = append(p.patches, path), append(p.patchData, b)
		}
		return p.trialApply(context.Background(), pristine)
	}
	assert.NoError(t, trial("", ""))
	assert.NoError(t, trial("0001,0003-0004", ""))
	assert.NoError(t, trial("", "0002"))
	assert.NoError(t, trial("0003-", ""))
	err := trial("", "0001")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "the series cannot apply --patches 0002-0004")
	assert.Contains(t, err.Error(), "kmod/patches/0002-a-again.patch does not apply")
	assert.Contains(t, err.Error(), "it probably needs the left-out 0001 (changes mm/a.c too)")
	var se *SelectionError
	assert.ErrorAs(t, err, &se, "a usage error, not a lab failure")
	// The pristine tree is never written.
	b, err := os.ReadFile(filepath.Join(pristine, "mm", "a.c"))
	require.NoError(t, err)
	assert.Equal(t, "one\ntwo\nthree\n", string(b))
	_, err = os.Stat(filepath.Join(pristine, "mm", "new.c"))
	assert.True(t, os.IsNotExist(err))
}
