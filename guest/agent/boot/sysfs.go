package boot

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// CtlPortName is the virtio-serial port name of the guest channel.
const CtlPortName = "ldtlab.ctl"

// Serials of the virtio disks the lab may attach.
const (
	SwapDiskSerial = "ldtswap"
	DataDiskSerial = "ldtdata"
)

// readAttr reads a sysfs attribute without its trailing newline or NULs.
func readAttr(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.TrimRight(string(b), "\n\x00 "), nil
}

// FindPort returns the device node (/dev/vportNpM) of the virtio-serial port
// called name, looking under sysRoot (normally "/sys").
func FindPort(sysRoot, name string) (string, error) {
	dirs, _ := filepath.Glob(filepath.Join(sysRoot, "class", "virtio-ports", "*"))
	sort.Strings(dirs)
	for _, d := range dirs {
		if n, err := readAttr(filepath.Join(d, "name")); err == nil && n == name {
			return "/dev/" + filepath.Base(d), nil
		}
	}
	return "", fmt.Errorf("no virtio-serial port named %q under %s", name, sysRoot)
}

// FindDiskBySerial returns the device node (/dev/vdX) of the virtio disk whose
// serial is serial, looking under sysRoot (normally "/sys").
func FindDiskBySerial(sysRoot, serial string) (string, error) {
	dirs, _ := filepath.Glob(filepath.Join(sysRoot, "block", "vd*"))
	sort.Strings(dirs)
	for _, d := range dirs {
		if s, err := readAttr(filepath.Join(d, "serial")); err == nil && s == serial {
			return "/dev/" + filepath.Base(d), nil
		}
	}
	return "", fmt.Errorf("no virtio disk with serial %q under %s", serial, sysRoot)
}

// ModuleFiles lists every *.ko under dir (recursively), sorted by path so
// that the load order is stable and can be steered by file names.
func ModuleFiles(dir string) ([]string, error) {
	var files []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".ko") {
			files = append(files, p)
		}
		return nil
	})
	sort.Strings(files)
	return files, err
}
