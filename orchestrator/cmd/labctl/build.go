package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"time"

	"ldtlab/images/cache"
	"ldtlab/images/kernel"
	"ldtlab/images/rootfs"
	"ldtlab/orchestrator/lab"
	"ldtlab/orchestrator/preset"
	"ldtlab/orchestrator/setup"
	"ldtlab/orchestrator/vm"
	"ldtlab/orchestrator/vm/libvirt"
)

// guestFlags are the flags shared by every verb that boots a guest.
type guestFlags struct {
	config  string
	vanilla bool
	kernelSelection
	accel   string
	mem     int // 0: the verb's default
	cpus    int
	cmdline string
	swap    optionalMiB
	noBuild bool
	redis   bool
	backend string
	connect string
}

func (g *guestFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&g.config, "config", "debug", "kernel configuration: debug (assertions on), perf (no debug options), sanitize (debug plus KASAN, KFENCE, UBSAN, lockdep, kmemleak) or coverage (debug plus gcov counters in the files the series touches)")
	fs.BoolVar(&g.vanilla, "vanilla", false, "use the kernel built without kmod/patches (A/B comparisons)")
	g.kernelSelection.register(fs)
	fs.StringVar(&g.accel, "accel", "auto", "accelerator: auto, kvm or tcg (auto uses KVM only where hardware virtualization works)")
	fs.IntVar(&g.mem, "mem", 0, "guest memory in MiB (0 = the verb's default: 1024; 768 for check and stress; 2048 for bench paper)")
	fs.IntVar(&g.cpus, "cpus", 2, "guest vCPUs")
	fs.StringVar(&g.cmdline, "cmdline", "", "extra kernel command line (e.g. numa=fake=2)")
	fs.Var(&g.swap, "swap", "disk-backed swap device in `MiB` (0 = none; zram is always set up); default: the verb's, 512 (1024 for check and stress, none for bench paper)")
	fs.BoolVar(&g.noBuild, "no-build", false, "fail instead of building a missing kernel or image")
	fs.StringVar(&g.backend, "backend", "qemu", "VM backend: qemu (QEMU run by labctl) or libvirt (a transient domain on a libvirtd, see --connect)")
	fs.StringVar(&g.connect, "connect", libvirt.DefaultURI, "libvirt connection for --backend libvirt (qemu:///system; a remote host: qemu+ssh://USER@HOST/system; qemu+tcp://HOST/system only where nobody else reaches that port: the lab has no SASL, so it needs auth_tcp none, i.e. root for whoever connects)")
	fs.BoolVar(&g.redis, "redis", false, "ship Debian's redis-server, redis-benchmark, redis-cli and criu in the image (as labctl check does)")
}

// validate rejects sizes that make no sense, instead of silently taking
// the default (0) or handing QEMU a negative size.
func (g *guestFlags) validate() error {
	switch {
	case g.mem != 0 && g.mem < 128:
		return fmt.Errorf("--mem %d: the guest needs at least 128 MiB (0 = the verb's default)", g.mem)
	case g.mem > 1<<20:
		return fmt.Errorf("--mem %d: more than 1 TiB of guest memory is surely a typo", g.mem)
	case g.cpus < 1:
		return fmt.Errorf("--cpus %d: a guest needs at least 1 vCPU (default 2)", g.cpus)
	case g.cpus > 255:
		return fmt.Errorf("--cpus %d: QEMU's pc machine takes at most 255 vCPUs", g.cpus)
	case g.swap.set && g.swap.v < 0:
		return fmt.Errorf("--swap %d: the swap disk size cannot be negative (0 = no swap disk)", g.swap.v)
	case g.config != "" && kernel.CheckConfig(g.config) != nil:
		return fmt.Errorf("--config: %v", kernel.CheckConfig(g.config))
	case g.backend != "" && g.backend != "qemu" && g.backend != "libvirt":
		return fmt.Errorf("--backend %s: unknown backend (qemu or libvirt)", g.backend)
	}
	return g.kernelSelection.validate(g.vanilla)
}

// kernelSelection is which patches of the series a kernel is built with,
// shared by `labctl build` and every verb that boots a guest.
type kernelSelection struct {
	patches, without string
	ldt              string
	debuginfo        bool
	repo             string // where validate found the series; "" = repoRoot()
}

func (k *kernelSelection) register(fs *flag.FlagSet) {
	fs.StringVar(&k.patches, "patches", "", "apply only these patches of kmod/patches/series: numbers or file names, ranges and comma lists (0001-0005, 1-5,7, 0003-); default all")
	fs.StringVar(&k.without, "without", "", "leave these patches out (same syntax as --patches), e.g. --without 0010")
	fs.StringVar(&k.ldt, "ldt", "y", "CONFIG_LDT of the patched kernel: y, or n (the series must build and boot without the tracker too)")
	fs.BoolVar(&k.debuginfo, "debuginfo", false, "the kernel with DWARF debug info and the kernel's gdb scripts (lx-dmesg, lx-ps), cached apart from the ordinary one (a full build the first time)")
}

// validate resolves the selection against the series, so that an unknown
// patch is a usage error before anything is built or booted.
func (k *kernelSelection) validate(vanilla bool) error {
	if k.ldt != "" && k.ldt != "y" && k.ldt != "n" {
		return fmt.Errorf("--ldt %s: y or n", k.ldt)
	}
	if vanilla && k.ldt == "n" {
		return errors.New("--vanilla --ldt=n: the vanilla kernel has no CONFIG_LDT")
	}
	if k.patches == "" && k.without == "" {
		return nil
	}
	repo := k.repo
	if repo == "" {
		r, err := repoRoot()
		if err != nil {
			return err
		}
		repo = r
	}
	_, err := kernel.Options{Repo: repo, Vanilla: vanilla, Patches: k.patches, Without: k.without}.Selection()
	return err
}

func (k *kernelSelection) apply(o *kernel.Options) {
	o.Patches, o.Without, o.LDTOff, o.DebugInfo = k.patches, k.without, k.ldt == "n", k.debuginfo
}

// args are the flags that pass the selection on (to the supervisor).
func (k *kernelSelection) args() []string {
	var a []string
	if k.patches != "" {
		a = append(a, "-patches", k.patches)
	}
	if k.without != "" {
		a = append(a, "-without", k.without)
	}
	if k.ldt == "n" {
		a = append(a, "-ldt", "n")
	}
	if k.debuginfo {
		a = append(a, "-debuginfo")
	}
	return a
}

// optionalMiB is a size flag that knows whether it was given: a value
// that is not given leaves the choice to the verb, so no size (not even
// the default one) stands for "unset".
type optionalMiB struct {
	v   int
	set bool
}

func (o *optionalMiB) String() string {
	if o == nil || !o.set {
		return ""
	}
	return strconv.Itoa(o.v)
}

func (o *optionalMiB) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil {
		return fmt.Errorf("not a whole number of MiB: %q", s)
	}
	o.v, o.set = n, true
	return nil
}

// lab is the size as lab.Options.SwapMiB spells it: 0 = the default,
// negative = none.
func (o optionalMiB) lab() int {
	switch {
	case !o.set:
		return 0
	case o.v == 0:
		return -1
	}
	return o.v
}

func (g *guestFlags) options(repo, name string) lab.Options {
	g.kernelSelection.repo = repo
	if err := g.validate(); err != nil {
		fmt.Fprintf(os.Stderr, "labctl: %v\n", err)
		os.Exit(exitUsage)
	}
	o := lab.Options{
		Repo: repo, Name: name, Config: g.config, Vanilla: g.vanilla, Accel: g.accel,
		MemoryMiB: g.mem, CPUs: g.cpus, Cmdline: g.cmdline, SwapMiB: g.swap.lab(), NoBuild: g.noBuild,
		Patches: g.patches, Without: g.without, LDTOff: g.ldt == "n", DebugInfo: g.debuginfo,
	}
	o.Backend = g.backend
	if g.backend == "libvirt" {
		o.Connect = g.connect
	}
	if g.redis {
		files, err := preset.RedisFiles()
		if err != nil {
			fmt.Fprintf(os.Stderr, "labctl: --redis: %v\n", err)
			os.Exit(1)
		}
		o.Extra = append(o.Extra, files...)
	}
	return o
}

// devOptions are the options of a developer VM: the guest's, plus the
// tools ssh-config users run against it (rsync, scp -O).
func (g *guestFlags) devOptions(repo, name string) lab.Options {
	o := g.options(repo, name)
	files, err := preset.DevTools()
	if err != nil {
		fmt.Fprintf(os.Stderr, "labctl: developer tools for the guest: %v\n", err)
		os.Exit(1)
	}
	o.Extra = rootfs.AddFiles(o.Extra, files...) // --redis ships some of the same libraries
	return o
}

func init() {
	var sf struct{ backend string }
	register(&command{
		name:    "setup",
		summary: "install the Debian packages the lab needs (idempotent; fast when done)",
		setup: func(fs *flag.FlagSet) {
			fs.StringVar(&sf.backend, "backend", "qemu", "also prepare this VM backend: qemu (nothing more) or libvirt (libvirtd running here, on its unix sockets only: no TCP listener)")
		},
		run: func(ctx context.Context, fs *flag.FlagSet, args []string) error {
			if err := setup.Ensure(os.Stderr); err != nil {
				return err
			}
			switch sf.backend {
			case "qemu":
				return nil
			case "libvirt":
				return setup.Libvirt(os.Stderr)
			}
			return fmt.Errorf("setup: unknown backend %q (qemu or libvirt)", sf.backend)
		},
	})

	var bf struct {
		config  string
		vanilla bool
		all     bool
		force   bool
		sel     kernelSelection
	}
	register(&command{
		name:    "build",
		summary: "build (or find cached) the guest kernel and initramfs",
		setup: func(fs *flag.FlagSet) {
			fs.StringVar(&bf.config, "config", "debug", "kernel configuration: debug, perf, sanitize or coverage")
			fs.BoolVar(&bf.vanilla, "vanilla", false, "build without kmod/patches")
			bf.sel.register(fs)
			fs.BoolVar(&bf.all, "all", false, "build every combination (debug, perf) × (ldt, vanilla)")
			fs.BoolVar(&bf.force, "force", false, "drop the cached kernel and image entries and rebuild them (the object directory is kept, so the kernel rebuild is incremental)")
		},
		run: func(ctx context.Context, fs *flag.FlagSet, args []string) error {
			repo, err := repoRoot()
			if err != nil {
				return err
			}
			bf.sel.repo = repo
			if err := bf.sel.validate(bf.vanilla); err != nil {
				return usageError{err}
			}
			one := kernel.Options{Repo: repo, Config: bf.config, Vanilla: bf.vanilla}
			bf.sel.apply(&one)
			vs := []kernel.Options{one}
			if bf.all {
				if bf.sel.patches != "" || bf.sel.without != "" || bf.sel.ldt != "y" || bf.sel.debuginfo {
					return usageError{errors.New("--all builds the default variants: it takes no --patches, --without, --ldt or --debuginfo")}
				}
				vs = []kernel.Options{{Repo: repo, Config: "debug"}, {Repo: repo, Config: "debug", Vanilla: true},
					{Repo: repo, Config: "perf"}, {Repo: repo, Config: "perf", Vanilla: true}}
			}
			for _, v := range vs {
				if bf.force {
					if err := dropEntries(v); err != nil {
						return err
					}
				}
				t := time.Now()
				kb, img, err := lab.Prepare(ctx, lab.Options{Repo: repo, Config: v.Config, Vanilla: v.Vanilla,
					Patches: v.Patches, Without: v.Without, LDTOff: v.LDTOff, DebugInfo: v.DebugInfo})
				if err != nil {
					return err
				}
				fmt.Printf("%s\n  kernel   %s (%s, source %s %s)\n  patches  %s\n  vmlinux  %s\n  image    %s\n  took     %s\n",
					v.Variant(), kb.BzImage, kb.Meta.KernelRelease, kb.Meta.SourcePackage, kb.Meta.SourceVersion,
					kb.Meta.PatchSummary(), kb.Vmlinux, img.Initramfs, time.Since(t).Round(time.Millisecond))
				if kb.GDBScripts != "" {
					fmt.Printf("  gdb      %s\n", kb.GDBScripts)
				}
			}
			return nil
		},
	})
}

// dropEntries removes the cached kernel of a variant and the image built
// on it, for `labctl build --force`.
func dropEntries(ko kernel.Options) error {
	if kb, ok, _ := kernel.Find(ko); ok {
		if key, err := rootfs.Key(rootfs.Options{Repo: ko.Repo, Kernel: kb, Busybox: "/bin/busybox"}); err == nil {
			if err := cache.Open("images").Remove(key); err != nil {
				return &vm.InfraError{Op: "dropping the cached image", Err: err}
			}
		}
	}
	if err := kernel.Drop(ko); err != nil {
		return &vm.InfraError{Op: "dropping the cached " + ko.Variant() + " kernel", Err: err}
	}
	fmt.Fprintf(os.Stderr, "[lab] dropped the cached %s kernel and its image: rebuilding\n", ko.Variant())
	return nil
}
