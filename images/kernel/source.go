// Package kernel builds the lab's guest kernel: Debian's linux-source-6.12
// tarball, the LDT patch series from kmod/patches (unless vanilla), the
// config fragments from images/config, and the out-of-tree modules in
// kmod/. Results are cache entries keyed by the content of all inputs.
package kernel

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"ldtlab/images/cache"
	"ldtlab/internal/lines"
)

// SourcePackage is the Debian package that provides the kernel source.
const SourcePackage = "linux-source-6.12"

// Source is the kernel source tarball and its identity.
type Source struct {
	Tarball string // /usr/src/linux-source-6.12.tar.xz
	Version string // Debian package version, e.g. 6.12.117-1~deb12u1
	Size    int64
	mtime   int64
}

// FindSource locates the installed source tarball. tarball may override
// the location (tests, other distributions).
func FindSource(tarball string) (*Source, error) {
	if tarball == "" {
		tarball = os.Getenv("LDTLAB_KERNEL_SOURCE")
	}
	if tarball == "" {
		matches, _ := filepath.Glob("/usr/src/" + SourcePackage + ".tar.*")
		sort.Strings(matches)
		if len(matches) == 0 {
			return nil, fmt.Errorf("kernel source not found: /usr/src/%s.tar.xz is missing; install Debian package %s (run `labctl setup` or `make setup`)", SourcePackage, SourcePackage)
		}
		tarball = matches[0]
	}
	st, err := os.Stat(tarball)
	if err != nil {
		return nil, fmt.Errorf("kernel source tarball: %w", err)
	}
	src := &Source{Tarball: tarball, Size: st.Size(), mtime: st.ModTime().UnixNano()}
	// The package version identifies only the package's own tarball.
	fromPackage := strings.HasPrefix(filepath.Base(tarball), SourcePackage+".tar.") && filepath.Dir(tarball) == "/usr/src"
	out, err := exec.Command("dpkg-query", "-W", "-f=${Version}", SourcePackage).Output()
	if fromPackage && err == nil && len(out) > 0 {
		src.Version = strings.TrimSpace(string(out))
	} else {
		// Not from the package: identify it by name, size and mtime.
		src.Version = fmt.Sprintf("%s-%d-%d", filepath.Base(tarball), st.Size(), st.ModTime().Unix())
	}
	return src, nil
}

// Extract returns a pristine extraction of the source, shared by all
// builds of that version and never modified after it is published.
func (s *Source) Extract(ctx context.Context, log func(string, ...any)) (string, error) {
	store := cache.Open("src")
	key := cache.NewKey().AddString("version", s.Version).AddString("tarball", s.Tarball).
		AddString("stat", fmt.Sprintf("%d %d", s.Size, s.mtime)).Sum()[:16]
	dir, hit, err := store.BuildContext(ctx, key, func(tmp string) error {
		log("extracting %s (%s) once for all builds", s.Tarball, s.Version)
		cmd := exec.CommandContext(ctx, "tar", "-xf", s.Tarball, "-C", tmp)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("extracting %s: %v: %s", s.Tarball, err, lines.Last(string(out), 10))
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	_ = hit
	top, err := topDir(dir)
	if err != nil {
		return "", err
	}
	return top, nil
}

// topDir finds the single directory holding the kernel's Makefile.
func topDir(dir string) (string, error) {
	if _, err := os.Stat(filepath.Join(dir, "Makefile")); err == nil {
		return dir, nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	for _, e := range entries {
		if e.IsDir() {
			if _, err := os.Stat(filepath.Join(dir, e.Name(), "Makefile")); err == nil {
				return filepath.Join(dir, e.Name()), nil
			}
		}
	}
	return "", errors.New("no kernel Makefile in extracted source " + dir)
}
