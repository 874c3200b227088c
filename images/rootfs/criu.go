package rootfs

import (
	_ "embed"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"ldtlab/images/cache"
)

//go:embed criushim/criu_shim.c
var criuShimSource []byte

// Guest paths of CRIU: /usr/sbin/criu is a wrapper that preloads the
// shim and runs the real binary.
const (
	CriuGuestBinary = "/usr/lib/ldtlab/criu"
	CriuGuestShim   = "/usr/lib/ldtlab/criu-shim.so"
	CriuGuestPath   = "/usr/sbin/criu"
)

// criuWrapper is the guest's /usr/sbin/criu.
var criuWrapper = "#!/bin/sh\n# ldtlab: Debian's criu with the shim for the lab's small kernel (images/rootfs/criushim/criu_shim.c)\n" +
	"LD_PRELOAD=" + CriuGuestShim + " exec " + CriuGuestBinary + " \"$@\"\n"

// CriuFiles are the files that make Debian's criu (package criu, the C
// binary: its Python tools are not needed) run in the guest: the binary
// and its shared libraries, the LD_PRELOAD shim compiled here with the
// host's gcc (cached by the hash of its source and of gcc), and the
// wrapper that applies it.
func CriuFiles() ([]File, error) {
	files, err := HostProgram("/usr/sbin/criu", "criu")
	if err != nil {
		return nil, err
	}
	for i := range files {
		if files[i].Path == "/usr/sbin/criu" {
			files[i].Path = CriuGuestBinary
		}
	}
	dir, err := buildCriuShim()
	if err != nil {
		return nil, err
	}
	return append(files,
		File{Path: CriuGuestShim, Host: filepath.Join(dir, "criu-shim.so"), Mode: 0o755},
		File{Path: CriuGuestPath, Host: filepath.Join(dir, "criu"), Mode: 0o755},
	), nil
}

// buildCriuShim compiles the shim (and writes the wrapper) into a cache
// entry keyed by their content and the compiler.
func buildCriuShim() (string, error) {
	gccVersion, err := exec.Command("gcc", "-dumpfullversion").Output()
	if err != nil {
		return "", fmt.Errorf("gcc (Debian package build-essential, `labctl setup`) builds the guest's criu shim: %w", err)
	}
	key := cache.NewKey().
		Add("criu_shim.c", criuShimSource).
		AddString("wrapper", criuWrapper).
		AddString("gcc", strings.TrimSpace(string(gccVersion))).Sum()[:24]
	dir, _, err := cache.Open("criu-shim").Build(key, func(tmp string) error {
		src := filepath.Join(tmp, "criu_shim.c")
		if err := os.WriteFile(src, criuShimSource, 0o644); err != nil {
			return err
		}
		out, err := exec.Command("gcc", "-O2", "-Wall", "-Werror", "-shared", "-fPIC", "-o", filepath.Join(tmp, "criu-shim.so"), src, "-ldl").CombinedOutput()
		if err != nil {
			return fmt.Errorf("compiling the criu shim: %v\n%s", err, out)
		}
		return os.WriteFile(filepath.Join(tmp, "criu"), []byte(criuWrapper), 0o755)
	})
	return dir, err
}
