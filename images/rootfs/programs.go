package rootfs

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// HostProgram returns the files that make a dynamically linked host
// program run in the guest: the binary at its host path, the shared
// libraries ldd resolves (at their host paths) and the dynamic loader.
// pkg names the Debian package to install when the binary is missing.
func HostProgram(path, pkg string) ([]File, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("%s not found: install Debian package %s (run `labctl setup`)", path, pkg)
	}
	files := map[string]bool{path: true}
	out, err := exec.Command("ldd", path).Output()
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %w", path, err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			files[f[2]] = true
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			files[f[0]] = true // the loader
		}
	}
	var names []string
	for f := range files {
		names = append(names, f)
	}
	sort.Strings(names)
	var res []File
	for _, n := range names {
		// Libraries are often symlinks (libfoo.so.1 -> libfoo.so.1.2.3):
		// the guest needs the name, with the target's bytes.
		real, err := filepath.EvalSymlinks(n)
		if err != nil {
			return nil, err
		}
		res = append(res, File{Path: n, Host: real, Mode: 0o755})
	}
	return res, nil
}

// AddFiles appends to files those of more whose image path is not there
// yet: programs share libraries, and the image refuses a path twice.
func AddFiles(files []File, more ...File) []File {
	have := make(map[string]bool, len(files))
	for _, f := range files {
		have[f.Path] = true
	}
	for _, f := range more {
		if !have[f.Path] {
			have[f.Path] = true
			files = append(files, f)
		}
	}
	return files
}
