package boot

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Busybox is the multi-call binary used for mkswap and mke2fs.
var Busybox = "/bin/busybox"

type mount struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
}

const (
	nosuid = unix.MS_NOSUID
	nodev  = unix.MS_NODEV
	noexec = unix.MS_NOEXEC
)

// baseMounts are in dependency order: /dev before /dev/pts, /sys before its
// children.
var baseMounts = []mount{
	{"proc", "/proc", "proc", nosuid | nodev | noexec, ""},
	{"sysfs", "/sys", "sysfs", nosuid | nodev | noexec, ""},
	{"devtmpfs", "/dev", "devtmpfs", nosuid, "mode=0755"},
	{"devpts", "/dev/pts", "devpts", nosuid | noexec, "mode=0620,ptmxmode=0666"},
	{"tmpfs", "/dev/shm", "tmpfs", nosuid | nodev, "mode=1777"},
	{"tmpfs", "/tmp", "tmpfs", nosuid | nodev, "mode=1777"},
	{"tmpfs", "/run", "tmpfs", nosuid | nodev, "mode=0755"},
	{"debugfs", "/sys/kernel/debug", "debugfs", nosuid | nodev | noexec, ""},
	{"cgroup2", "/sys/fs/cgroup", "cgroup2", nosuid | nodev | noexec, ""},
}

// MountBase mounts the pseudo filesystems. Targets that are already mounted
// (EBUSY, e.g. devtmpfs with CONFIG_DEVTMPFS_MOUNT) are fine; other failures
// are logged and the rest is still attempted, so that one missing kernel
// option does not cost the whole guest.
func MountBase(log *Log) error {
	var errs []error
	for _, m := range baseMounts {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			errs = append(errs, err)
			continue
		}
		err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data)
		if err != nil && !errors.Is(err, unix.EBUSY) {
			err = fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err)
			log.Printf("%v", err)
			errs = append(errs, err)
		}
	}
	fixDevNodes()
	return errors.Join(errs...)
}

// SecureRoot makes / 0755 when the kernel left it writable by everyone:
// the rootfs an initramfs is unpacked into is a tmpfs whose root is 1777
// unless the archive carries a "." entry (ours does; an image built
// before it did not). Any guest user could otherwise plant files in /.
func SecureRoot(log *Log) {
	if err := secureDir("/"); err != nil {
		log.Printf("securing /: %v", err)
	}
}

func secureDir(path string) error {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return err
	}
	if st.Mode&0o022 == 0 {
		return nil
	}
	return unix.Chmod(path, st.Mode&0o755&^0o022)
}

// fixDevNodes adds what devtmpfs does not provide but programs expect.
func fixDevNodes() {
	// /dev/ptmx from devtmpfs already resolves to the devpts mounted at
	// /dev/pts; only fall back to the devpts node when it is missing.
	if _, err := os.Stat("/dev/ptmx"); err != nil {
		_ = os.Symlink("pts/ptmx", "/dev/ptmx")
	}
	for name, target := range map[string]string{
		"/dev/fd":     "/proc/self/fd",
		"/dev/stdin":  "/proc/self/fd/0",
		"/dev/stdout": "/proc/self/fd/1",
		"/dev/stderr": "/proc/self/fd/2",
	} {
		if _, err := os.Lstat(name); err != nil {
			_ = os.Symlink(target, name)
		}
	}
}

// FixStdio points fds 0-2 at /dev/console when the kernel could not open it
// for us (an initramfs without a /dev/console node); without that, the
// children we start would write into closed descriptors.
func FixStdio() {
	var st unix.Stat_t
	if unix.Fstat(1, &st) == nil && unix.Fstat(2, &st) == nil {
		return
	}
	fd, err := unix.Open("/dev/console", unix.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return
	}
	for i := 0; i < 3; i++ {
		if unix.Fstat(i, &st) != nil {
			_ = unix.Dup3(fd, i, 0)
		}
	}
	if fd > 2 {
		unix.Close(fd)
	}
}

// QuietKmsgLimit lifts the /dev/kmsg rate limit, which would otherwise drop
// init's lines after the first burst of ten.
func QuietKmsgLimit() {
	_ = os.WriteFile("/proc/sys/kernel/printk_devkmsg", []byte("on\n"), 0o644)
}

// ReadCmdline parses /proc/cmdline.
func ReadCmdline() (Cmdline, error) {
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return Cmdline{}, err
	}
	return ParseCmdline(string(b)), nil
}

// SetHostname sets the UTS host name.
func SetHostname(name string) error {
	if err := unix.Sethostname([]byte(name)); err != nil {
		return fmt.Errorf("sethostname %q: %w", name, err)
	}
	return nil
}

// KernelRelease is uname -r.
func KernelRelease() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

// LoadModules loads every *.ko under dir with finit_module, in sorted order.
// Failures are logged and skipped; it returns how many modules loaded.
func LoadModules(dir string, log *Log) int {
	files, err := ModuleFiles(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		log.Printf("listing modules in %s: %v", dir, err)
	}
	loaded := 0
	for _, p := range files {
		if err := loadModule(p); err != nil {
			log.Printf("insmod %s: %v", filepath.Base(p), err)
			continue
		}
		loaded++
	}
	return loaded
}

func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	err = unix.FinitModule(int(f.Fd()), "", 0)
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	return err
}

// Swap priorities: zram is preferred over the (slower) disk.
const (
	ZramSwapPriority = 100
	DiskSwapPriority = 10
)

// SetupZram sizes /dev/zram0, formats it as swap and enables it. It does
// nothing when size is 0 or the kernel has no zram0.
func SetupZram(size int64) error {
	if size == 0 {
		return nil
	}
	if _, err := os.Stat("/sys/block/zram0"); err != nil {
		return nil
	}
	if err := os.WriteFile("/sys/block/zram0/disksize", []byte(strconv.FormatInt(size, 10)), 0o644); err != nil {
		return fmt.Errorf("zram0 disksize %d: %w", size, err)
	}
	return MakeSwap("/dev/zram0", ZramSwapPriority)
}

// MakeSwap runs mkswap on dev and enables it with priority prio.
func MakeSwap(dev string, prio int) error {
	if err := run(Busybox, "mkswap", dev); err != nil {
		return err
	}
	return Swapon(dev, prio)
}

// Swapon is swapon(2) with an explicit priority.
func Swapon(dev string, prio int) error {
	p, err := unix.BytePtrFromString(dev)
	if err != nil {
		return err
	}
	// SWAP_FLAG_PREFER | prio & SWAP_FLAG_PRIO_MASK, from <sys/swap.h>.
	flags := 0x8000 | (prio & 0x7fff)
	if _, _, e := unix.Syscall(unix.SYS_SWAPON, uintptr(unsafe.Pointer(p)), uintptr(flags), 0); e != 0 {
		return fmt.Errorf("swapon %s: %w", dev, e)
	}
	return nil
}

// DataMount is where the ldtdata disk is mounted.
const DataMount = "/mnt/data"

// SetupDisks formats and enables the lab's virtio disks, found by serial:
// ldtswap becomes swap, ldtdata a fresh ext2 file system on /mnt/data.
func SetupDisks(log *Log) error {
	var errs []error
	if dev, err := FindDiskBySerial("/sys", SwapDiskSerial); err == nil {
		if err := MakeSwap(dev, DiskSwapPriority); err != nil {
			errs = append(errs, err)
		} else {
			log.Printf("swap on %s (priority %d)", dev, DiskSwapPriority)
		}
	}
	if dev, err := FindDiskBySerial("/sys", DataDiskSerial); err == nil {
		if err := setupData(dev); err != nil {
			errs = append(errs, err)
		} else {
			log.Printf("%s mounted on %s", dev, DataMount)
		}
	}
	return errors.Join(errs...)
}

func setupData(dev string) error {
	if err := run(Busybox, "mke2fs", "-F", dev); err != nil {
		return err
	}
	if err := os.MkdirAll(DataMount, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(dev, DataMount, "ext2", 0, ""); err != nil {
		return fmt.Errorf("mount %s on %s: %w", dev, DataMount, err)
	}
	return nil
}

// run executes a helper and folds its output into the error.
func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", filepath.Base(name), strings.Join(args, " "),
			err, strings.TrimSpace(string(out)))
	}
	return nil
}

// EnsurePowerApplets makes sure /sbin/poweroff (which the kernel runs on an
// ACPI power button press), /sbin/halt and /sbin/reboot exist; busybox's
// versions signal PID 1, which HandlePowerSignals turns into reboot(2).
func EnsurePowerApplets() {
	if _, err := os.Stat(Busybox); err != nil {
		return
	}
	_ = os.MkdirAll("/sbin", 0o755)
	for _, a := range []string{"poweroff", "halt", "reboot"} {
		p := "/sbin/" + a
		if _, err := os.Lstat(p); err != nil {
			_ = os.Symlink(Busybox, p)
		}
	}
}

// HandlePowerSignals installs PID 1's handlers for the signals busybox
// halt/poweroff (SIGUSR1/SIGUSR2) and reboot (SIGTERM) send, and listens for
// ACPI power button presses (QMP system_powerdown). It returns at once; the
// handling happens in goroutines so that it works in every phase of init.
func HandlePowerSignals(log *Log) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGTERM)
	go func() {
		sig := <-ch
		PowerOff(log, sig == syscall.SIGTERM, sig.String())
	}()
	go func() {
		err := WatchACPI(func(ev ACPIEvent) {
			if ev.IsPowerButton() {
				PowerOff(log, false, "ACPI power button")
			}
		})
		log.Printf("no ACPI power button handling: %v", err)
	}()
}

// PowerOff syncs and powers off (or restarts) the machine.
func PowerOff(log *Log, restart bool, why string) {
	cmd, what := unix.LINUX_REBOOT_CMD_POWER_OFF, "power off"
	if restart {
		cmd, what = unix.LINUX_REBOOT_CMD_RESTART, "reboot"
	}
	log.Printf("%s: sync and %s", why, what)
	unix.Sync()
	if err := unix.Reboot(cmd); err != nil {
		log.Printf("reboot(2): %v", err)
	}
}

// LoopbackUp brings lo up: guest programs (redis and its benchmark in the
// checkpoint oracle) talk over 127.0.0.1, and nothing else is configured.
func LoopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("loopback: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("loopback flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("loopback up: %w", err)
	}
	return nil
}
