package libvirt

// Finding and destroying the lab's domains: orphans of a killed
// orchestrator, and the leftover of one VM directory.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"
)

// Sweep destroys the lab's domains on the host behind uri that match
// (NamePrefix is required whatever match says) and deletes their disk
// volumes. It returns the names it destroyed.
func Sweep(ctx context.Context, uri string, match func(name, description string) bool) ([]string, error) {
	c, err := connect(ctx, uri)
	if err != nil {
		return nil, err
	}
	defer c.close()
	defer c.bound(ctx)()
	return sweep(c.Libvirt, match)
}

func sweep(l *golibvirt.Libvirt, match func(name, description string) bool) ([]string, error) {
	doms, _, err := l.ConnectListAllDomains(1, 0)
	if err != nil {
		return nil, fmt.Errorf("listing domains: %w", err)
	}
	var gone []string
	var errs []error
	var vols []string // the destroyed domains' own disk volumes
	for _, d := range doms {
		if !strings.HasPrefix(d.Name, NamePrefix) {
			continue
		}
		var dx libvirtxml.Domain
		if x, err := l.DomainGetXMLDesc(d, 0); err == nil {
			dx.Unmarshal(x)
		}
		if !match(d.Name, dx.Description) {
			continue
		}
		if err := l.DomainDestroy(d); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("destroying %s: %w", d.Name, err))
			continue
		}
		gone = append(gone, d.Name)
		if dx.Devices != nil {
			for _, disk := range dx.Devices.Disks {
				// The lab's disk volumes only (artifacts are shared).
				if v := disk.Source; v != nil && v.Volume != nil && v.Volume.Pool == PoolName && strings.HasPrefix(v.Volume.Volume, d.Name+"-") {
					vols = append(vols, v.Volume.Volume)
				}
			}
		}
		// And its fw_cfg volumes (the keys), named after it.
		for _, si := range dx.SysInfo {
			if si.FWCfg == nil {
				continue
			}
			for _, e := range si.FWCfg.Entry {
				if strings.HasPrefix(filepath.Base(e.File), d.Name+"-fwcfg") {
					vols = append(vols, filepath.Base(e.File))
				}
			}
		}
	}
	if len(vols) > 0 {
		if pool, err := l.StoragePoolLookupByName(PoolName); err == nil {
			for _, name := range vols {
				if v, err := l.StorageVolLookupByName(pool, name); err == nil {
					l.StorageVolDelete(v, 0)
				}
			}
		}
	}
	return gone, errors.Join(errs...)
}

// owner is what a domain's description records about the process that
// created it, so that a later sweep can tell an orphan from a live VM.
func owner() string {
	h, _ := os.Hostname()
	return fmt.Sprintf("ldtlab owner pid %d on %s", os.Getpid(), h)
}

// orphaned says whether a domain's recorded owner is a process of this
// host that no longer exists. Domains of other hosts' labs, or without
// the record, are never orphans here.
func orphaned(description string, alive func(pid int) bool) bool {
	var pid int
	var host string
	if n, _ := fmt.Sscanf(description, "ldtlab owner pid %d on %s", &pid, &host); n != 2 || pid <= 0 {
		return false
	}
	if h, _ := os.Hostname(); h != host {
		return false
	}
	return !alive(pid)
}

func pidAlive(pid int) bool {
	return syscall.Kill(pid, 0) == nil || errors.Is(syscall.Kill(pid, 0), syscall.EPERM)
}

// Domains lists the domains on uri whose names start with prefix.
func Domains(ctx context.Context, uri, prefix string) ([]string, error) {
	c, err := connect(ctx, uri)
	if err != nil {
		return nil, err
	}
	defer c.close()
	defer c.bound(ctx)()
	doms, _, err := c.ConnectListAllDomains(1, 0)
	if err != nil {
		return nil, fmt.Errorf("listing domains: %w", err)
	}
	var names []string
	for _, d := range doms {
		if strings.HasPrefix(d.Name, prefix) {
			names = append(names, d.Name)
		}
	}
	return names, nil
}

func isNotFound(err error) bool {
	var e golibvirt.Error
	return errors.As(err, &e) && (e.Code == uint32(golibvirt.ErrNoDomain) || e.Code == uint32(golibvirt.ErrOperationInvalid))
}
