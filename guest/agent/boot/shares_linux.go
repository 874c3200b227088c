package boot

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// shareMountData are the 9p mount options: virtio transport, the Linux
// dialect, 256 KiB messages, and cache=mmap so that programs on a share
// can be mapped (and run) while reads and writes stay uncached, so that
// both sides see each other's changes at once.
const shareMountData = "trans=virtio,version=9p2000.L,msize=262144,cache=mmap"

// MountShares mounts the shares listed in spec (EncodeShares' text) and
// records in status (SharesStatus) how each went. A share that fails does
// not stop the others; the host reads the status and fails the boot.
func MountShares(spec, status string, log *Log) error {
	shares, err := DecodeShares(spec)
	var lines []string
	var errs []error
	if err != nil {
		errs = append(errs, err)
		lines = append(lines, "* error: "+oneLine(err.Error()))
	}
	for _, s := range shares {
		if err := mountShare(s); err != nil {
			log.Printf("share %s: %v", s.Tag, err)
			errs = append(errs, err)
			lines = append(lines, s.Tag+" error: "+oneLine(err.Error()))
			continue
		}
		mode := "read-only"
		if s.Writable {
			mode = "writable"
		}
		log.Printf("share %s mounted on %s (%s)", s.Tag, s.Dir, mode)
		lines = append(lines, s.Tag+" ok")
	}
	if err := os.MkdirAll(filepath.Dir(status), 0o755); err != nil {
		return errors.Join(append(errs, err)...)
	}
	if err := os.WriteFile(status, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func mountShare(s Share) error {
	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		return err
	}
	var flags uintptr
	if !s.Writable {
		flags |= unix.MS_RDONLY
	}
	if err := unix.Mount(s.Tag, s.Dir, "9p", flags, shareMountData); err != nil {
		if errors.Is(err, unix.ENODEV) {
			return fmt.Errorf("mount 9p %s on %s: %w (the kernel has no 9p file system: CONFIG_9P_FS, CONFIG_NET_9P_VIRTIO)", s.Tag, s.Dir, err)
		}
		return fmt.Errorf("mount 9p %s on %s: %w", s.Tag, s.Dir, err)
	}
	return nil
}

func oneLine(s string) string { return strings.ReplaceAll(s, "\n", "; ") }
