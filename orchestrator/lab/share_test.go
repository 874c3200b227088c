package lab

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"ldtlab/guest/agent/boot"
	"ldtlab/orchestrator/vm"
)

func TestParseShare(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "real")
	require.NoError(t, os.Mkdir(real, 0o755))
	link := filepath.Join(dir, "link")
	require.NoError(t, os.Symlink(real, link))
	file := filepath.Join(dir, "file")
	require.NoError(t, os.WriteFile(file, nil, 0o644))

	for _, c := range []struct {
		spec     string
		writable bool
		want     Share
	}{
		{real, false, Share{Host: real, Guest: real}},
		{real + ":/mnt/src", false, Share{Host: real, Guest: "/mnt/src"}},
		{real + ":rw", false, Share{Host: real, Guest: real, Writable: true}},
		{real + ":/mnt/src:rw", false, Share{Host: real, Guest: "/mnt/src", Writable: true}},
		{real + ":/mnt/src:ro", true, Share{Host: real, Guest: "/mnt/src"}},
		{real, true, Share{Host: real, Guest: real, Writable: true}}, // --share-rw
		{link, false, Share{Host: link, Guest: link}},                // the name the user gave
	} {
		got, err := ParseShare(c.spec, c.writable)
		if assert.NoError(t, err, c.spec) {
			assert.Equal(t, c.want, got, c.spec)
			back, err := ParseShare(got.String(), false)
			require.NoError(t, err)
			assert.Equal(t, got, back, "String() parses back")
		}
	}
	t.Chdir(dir)
	got, err := ParseShare("real", false)
	require.NoError(t, err)
	assert.Equal(t, Share{Host: real, Guest: real}, got, "a relative host path is made absolute")

	for spec, why := range map[string]string{
		"":                         "no host directory",
		":/x":                      "no host directory",
		filepath.Join(dir, "nope"): "no such file or directory",
		file:                       "is not a directory",
		real + ":/a:/b":            "want HOST_DIR[:GUEST_DIR]",
		real + ":rel":              "not an absolute path",
		real + ":/usr":             "hide the guest's /usr/bin",
		real + ":/proc/x":          "inside the guest's /proc",
		"/:rw":                     "cannot replace the guest's root",
	} {
		_, err := ParseShare(spec, false)
		if assert.Error(t, err, spec) {
			assert.Contains(t, err.Error(), why, spec)
		}
	}
}

func TestShareConfig(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "real")
	require.NoError(t, os.Mkdir(real, 0o755))
	link := filepath.Join(dir, "link")
	require.NoError(t, os.Symlink(real, link))
	vs, fw, err := shareConfig([]Share{{Host: link, Guest: "/src"}, {Host: real, Guest: "/out", Writable: true}})
	require.NoError(t, err)
	assert.Equal(t, []vm.Share{
		{Host: real, Tag: "ldtshare0"}, // the VMM gets the resolved directory
		{Host: real, Tag: "ldtshare1", Writable: true},
	}, vs)
	assert.Equal(t, vm.FwCfgShares, fw.Name)
	gs, err := boot.DecodeShares(string(fw.Data))
	require.NoError(t, err)
	assert.Equal(t, []boot.Share{{Tag: "ldtshare0", Dir: "/src"}, {Tag: "ldtshare1", Dir: "/out", Writable: true}}, gs)

	_, _, err = shareConfig([]Share{{Host: real, Guest: "/a"}, {Host: real, Guest: "/a/b"}})
	assert.ErrorContains(t, err, "inside /a")
}

func TestSharesHere(t *testing.T) {
	for _, o := range []Options{
		{Backend: "qemu"},
		{Backend: "libvirt", Connect: "qemu:///system"},
		{Backend: "libvirt", Connect: "qemu+tcp://127.0.0.1/system"},
		{Backend: "libvirt", Connect: "qemu+ssh://me@localhost/system"},
	} {
		assert.NoError(t, sharesHere(o), o.Connect)
	}
	err := sharesHere(Options{Backend: "libvirt", Connect: "qemu+ssh://me@build1/system"})
	assert.ErrorContains(t, err, "the guest on build1")
}
