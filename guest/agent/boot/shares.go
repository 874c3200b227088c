package boot

import (
	"encoding/hex"
	"fmt"
	"path"
	"sort"
	"strings"
)

// Share is a host directory (`labctl up --share`) the guest mounts over
// virtio-9p: the VMM exports it under Tag, init mounts it on Dir.
type Share struct {
	Tag      string // 9p mount tag
	Dir      string // guest directory: absolute, clean
	Writable bool
}

// SharesStatus is where init records, for the host to check, how each
// share's mount went: one line per share, "TAG ok" or "TAG error: ...".
const SharesStatus = "/run/ldtlab/shares"

// EncodeShares is the fw_cfg text that lists the shares: one line per
// share, "TAG ro|rw HEXDIR". The directory is hex so that any name (a
// space, a comma, which libvirt's fw_cfg cannot carry) survives.
func EncodeShares(shares []Share) string {
	var b strings.Builder
	for _, s := range shares {
		mode := "ro"
		if s.Writable {
			mode = "rw"
		}
		fmt.Fprintf(&b, "%s %s %s\n", s.Tag, mode, hex.EncodeToString([]byte(s.Dir)))
	}
	return b.String()
}

// DecodeShares parses EncodeShares' text, checking every directory.
func DecodeShares(text string) ([]Share, error) {
	var out []Share
	for _, line := range strings.Split(text, "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 3 || (f[1] != "ro" && f[1] != "rw") {
			return nil, fmt.Errorf("share line %q: want TAG ro|rw HEXDIR", line)
		}
		dir, err := hex.DecodeString(f[2])
		if err != nil {
			return nil, fmt.Errorf("share %s: directory not in hex: %v", f[0], err)
		}
		s := Share{Tag: f[0], Dir: string(dir), Writable: f[1] == "rw"}
		if err := CheckShareDir(s.Dir); err != nil {
			return nil, fmt.Errorf("share %s: %w", s.Tag, err)
		}
		out = append(out, s)
	}
	if err := checkNesting(out); err != nil {
		return nil, err
	}
	return out, nil
}

// guestSystem are the guest paths a share must not hide: a share on one
// of them, or on a directory above one, would take the guest's programs,
// modules, configuration or data disk away.
var guestSystem = []string{
	"/init", "/bin", "/sbin", "/usr/bin", "/usr/sbin", "/usr/lib/ldtlab",
	"/lib/modules", "/etc", "/mnt/data",
}

// guestPseudo are the guest's pseudo file systems: nothing is shared
// into them.
var guestPseudo = []string{"/proc", "/sys", "/dev", "/run"}

// CheckShareDir says why dir cannot be a share's guest directory: it
// must be absolute and clean, not hide the guest's own system (/, /bin,
// /usr/bin, /etc, /lib/modules, ...) and not lie in /proc, /sys, /dev or
// /run.
func CheckShareDir(dir string) error {
	switch {
	case dir == "" || !path.IsAbs(dir):
		return fmt.Errorf("guest directory %q: not an absolute path", dir)
	case path.Clean(dir) != dir:
		return fmt.Errorf("guest directory %q: not a clean path (write %s)", dir, path.Clean(dir))
	case strings.ContainsAny(dir, "\x00\n"):
		return fmt.Errorf("guest directory %q: NUL or newline in the name", dir)
	case dir == "/":
		return fmt.Errorf("guest directory /: a share cannot replace the guest's root")
	}
	for _, p := range guestPseudo {
		if within(dir, p) {
			return fmt.Errorf("guest directory %s: inside the guest's %s", dir, p)
		}
	}
	for _, p := range guestSystem {
		if within(p, dir) {
			return fmt.Errorf("guest directory %s: it would hide the guest's %s; choose another (HOST_DIR:GUEST_DIR)", dir, p)
		}
	}
	return nil
}

// checkNesting refuses a share inside another one (or twice the same
// directory): its mount point would be created in the other share.
func checkNesting(shares []Share) error {
	dirs := make([]string, len(shares))
	for i, s := range shares {
		dirs[i] = s.Dir
	}
	sort.Strings(dirs)
	for i := range dirs {
		for j := range dirs {
			if i != j && within(dirs[j], dirs[i]) {
				if dirs[i] == dirs[j] {
					return fmt.Errorf("guest directory %s: shared twice", dirs[i])
				}
				return fmt.Errorf("guest directory %s is inside %s, another share", dirs[j], dirs[i])
			}
		}
	}
	return nil
}

// CheckShares checks a whole list of shares as the guest will (each
// directory, no nesting).
func CheckShares(shares []Share) error {
	for _, s := range shares {
		if err := CheckShareDir(s.Dir); err != nil {
			return err
		}
	}
	return checkNesting(shares)
}

// within reports whether p is dir or lies below it.
func within(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, strings.TrimSuffix(dir, "/")+"/")
}

// ParseSharesStatus reads SharesStatus: tag -> "" when mounted, else why
// not.
func ParseSharesStatus(text string) map[string]string {
	out := map[string]string{}
	for _, line := range strings.Split(text, "\n") {
		tag, rest, ok := strings.Cut(strings.TrimSpace(line), " ")
		if !ok {
			continue
		}
		if rest == "ok" {
			out[tag] = ""
		} else {
			out[tag] = strings.TrimPrefix(rest, "error: ")
		}
	}
	return out
}
