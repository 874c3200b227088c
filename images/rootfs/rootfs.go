// Package rootfs decides what goes into the guest's initramfs and builds it
// as a cache entry: busybox, the static guest programs from guest/cmd
// (ldtlab-agent becomes /init), the kernel's modules, and a few files in
// /etc. Same inputs, same bytes: the archive is written by
// images/initramfs in sorted order with fixed metadata.
package rootfs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	"ldtlab/images/cache"
	"ldtlab/images/initramfs"
	"ldtlab/images/kernel"
)

// recipeVersion changes whenever the image layout changes.
const recipeVersion = "rootfs-recipe-3" // 3: the archive's "." entry makes / 0755

// BusyboxPackage provides the static busybox.
const BusyboxPackage = "busybox-static"

// File is an extra host file to put into the image.
type File struct {
	Path string // in the image
	Host string // on the host
	Mode os.FileMode
}

// Options select the image.
type Options struct {
	Repo    string
	Kernel  *kernel.Build
	Busybox string // default /bin/busybox
	Extra   []File // more files (test programs, libraries)
	Log     io.Writer
}

// Image is a complete initramfs cache entry.
type Image struct {
	Dir       string
	Initramfs string
	Key       string
}

func (o Options) logf(format string, args ...any) {
	w := o.Log
	if w == nil {
		w = os.Stderr
	}
	fmt.Fprintf(w, "[image] %s\n", fmt.Sprintf(format, args...))
}

// Ensure returns the image for o, building it when not cached. A cache hit
// hashes the inputs only (guest sources, busybox, kernel key) and never
// runs the Go compiler.
func Ensure(ctx context.Context, o Options) (*Image, bool, error) {
	if o.Kernel == nil {
		return nil, false, errors.New("image: no kernel build given")
	}
	if o.Busybox == "" {
		o.Busybox = "/bin/busybox"
	}
	if err := checkStatic(o.Busybox); err != nil {
		return nil, false, err
	}
	key, err := Key(o)
	if err != nil {
		return nil, false, err
	}
	dir, hit, err := cache.Open("images").BuildContext(ctx, key, func(tmp string) error {
		return build(ctx, o, tmp)
	})
	if err != nil {
		return nil, false, err
	}
	return &Image{Dir: dir, Initramfs: filepath.Join(dir, "initramfs.cpio"), Key: key}, hit, nil
}

// Key is the content hash of every input of the image.
func Key(o Options) (string, error) {
	k := cache.NewKey().
		AddString("recipe", recipeVersion).
		AddString("go", goVersion()).
		AddString("kernel", o.Kernel.Meta.Key)
	if err := k.AddFile("busybox", o.Busybox); err != nil {
		return "", err
	}
	for _, f := range []string{"go.mod", "go.sum"} {
		if err := k.AddFile(f, filepath.Join(o.Repo, f)); err != nil {
			return "", err
		}
	}
	if err := addGoSources(k, filepath.Join(o.Repo, "guest")); err != nil {
		return "", err
	}
	for _, e := range o.Extra {
		if err := k.AddFile("extra"+e.Path, e.Host); err != nil {
			return "", err
		}
		k.AddString("extra-mode"+e.Path, e.Mode.String())
	}
	return k.Sum()[:24], nil
}

// goVersion is the toolchain that compiles the guest programs: the go on
// PATH, not necessarily the one that built this binary.
func goVersion() string {
	out, err := exec.Command("go", "env", "GOVERSION").Output()
	if err != nil {
		return runtime.Version()
	}
	return strings.TrimSpace(string(out))
}

func addGoSources(k *cache.Key, dir string) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		return k.AddFile("guest/"+rel, p)
	})
}

func checkStatic(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("busybox not found at %s: install Debian package %s (run `labctl setup`)", path, BusyboxPackage)
	}
	defer f.Close()
	// A dynamic binary names its ELF interpreter (ld.so) in the first
	// page; only that is read, the whole file is hashed by Key anyway.
	head := make([]byte, 4096)
	n, _ := io.ReadFull(f, head)
	if bytes.Contains(head[:n], []byte("/lib64/ld-linux")) {
		return fmt.Errorf("%s is dynamically linked; the guest needs Debian package %s", path, BusyboxPackage)
	}
	return nil
}

// BuildTo builds the image into dir without the cache (benchmarks).
func BuildTo(ctx context.Context, o Options, dir string) error {
	if o.Busybox == "" {
		o.Busybox = "/bin/busybox"
	}
	return build(ctx, o, dir)
}

func build(ctx context.Context, o Options, dst string) error {
	start := time.Now()
	bin, err := os.MkdirTemp("", "ldtlab-guestbin-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(bin)
	o.logf("compiling guest programs (static)")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w -buildid=", "-o", bin+"/", "./guest/cmd/...")
	cmd.Dir = o.Repo
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOFLAGS=-buildvcs=false")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building guest programs: %v\n%s", err, out)
	}

	a := &initramfs.Archive{}
	for _, d := range []string{"proc", "sys", "dev", "tmp", "run", "root", "mnt", "mnt/data", "var", "etc", "usr/bin", "usr/sbin", "bin", "sbin", "lib"} {
		if err := a.AddDir(d, 0o755); err != nil {
			return err
		}
	}
	if err := a.AddCharDev("dev/console", 0o600, 5, 1); err != nil {
		return err
	}
	if err := a.AddCharDev("dev/null", 0o666, 1, 3); err != nil {
		return err
	}
	// Busybox and its applets.
	if err := a.AddHostFile("bin/busybox", o.Busybox, 0o755); err != nil {
		return err
	}
	list, err := exec.CommandContext(ctx, o.Busybox, "--list-full").Output()
	if err != nil {
		return fmt.Errorf("listing busybox applets: %w", err)
	}
	applets := strings.Fields(string(list))
	sort.Strings(applets)
	for _, ap := range applets {
		if ap == "bin/busybox" || ap == "init" || ap == "sbin/init" {
			continue
		}
		rel, _ := filepath.Rel(filepath.Dir(ap), "bin/busybox")
		if err := a.AddSymlink(ap, rel); err != nil {
			return err
		}
	}
	// Guest programs: the agent is /init, the rest go to /usr/bin.
	progs, _ := os.ReadDir(bin)
	for _, p := range progs {
		host := filepath.Join(bin, p.Name())
		if p.Name() == "ldtlab-agent" {
			if err := a.AddHostFile("init", host, 0o755); err != nil {
				return err
			}
			if err := a.AddSymlink("sbin/ldtlab-agent", "../init"); err != nil {
				return err
			}
			continue
		}
		if err := a.AddHostFile("usr/bin/"+p.Name(), host, 0o755); err != nil {
			return err
		}
	}
	// Kernel modules.
	mods := filepath.Join(o.Kernel.Modules, "lib", "modules")
	if err := addTree(a, mods, "lib/modules"); err != nil {
		return err
	}
	// The kernel's mm selftests, built from the same tree.
	if err := addTree(a, o.Kernel.SelftestDir, "usr/lib/ldtlab/selftests/mm"); err != nil {
		return err
	}
	etc := map[string]string{
		"etc/passwd":     "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
		"etc/group":      "root:x:0:\nnogroup:x:65534:\n",
		"etc/profile":    "export PS1='\\h:\\w\\$ '\nexport PATH=/usr/sbin:/usr/bin:/sbin:/bin\n",
		"etc/shells":     "/bin/sh\n",
		"etc/os-release": "NAME=ldtlab\nID=ldtlab\nPRETTY_NAME=\"ldtlab guest\"\n",
	}
	for p, c := range etc {
		if err := a.AddFile(p, 0o644, []byte(c)); err != nil {
			return err
		}
	}
	for _, e := range o.Extra {
		if err := a.AddHostFile(strings.TrimPrefix(e.Path, "/"), e.Host, e.Mode); err != nil {
			return err
		}
	}
	out := filepath.Join(dst, "initramfs.cpio")
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	n, err := a.WriteTo(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", out, err)
	}
	o.logf("initramfs %.1f MiB built in %s", float64(n)/(1<<20), time.Since(start).Round(time.Millisecond))
	return nil
}

// addTree adds every file and symlink below host as prefix/... .
func addTree(a *initramfs.Archive, host, prefix string) error {
	if _, err := os.Stat(host); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return filepath.WalkDir(host, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(host, p)
		if rel == "." {
			return nil
		}
		target := prefix + "/" + filepath.ToSlash(rel)
		switch {
		case d.IsDir():
			return a.AddDir(target, 0o755)
		case d.Type()&fs.ModeSymlink != 0:
			l, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return a.AddSymlink(target, l)
		case d.Type().IsRegular():
			info, err := d.Info()
			if err != nil {
				return err
			}
			return a.AddHostFile(target, p, info.Mode().Perm())
		}
		return nil
	})
}
