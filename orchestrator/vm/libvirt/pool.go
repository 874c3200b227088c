package libvirt

// The `ldtlab` storage pool: artifacts by content hash, disk and fw_cfg
// volumes per VM.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"
)

// Pool is the storage pool the lab keeps its volumes in, on every host:
// artifacts named by content hash (uploaded once, reused by every VM) and
// each VM's disks (deleted with the VM).
const (
	PoolName = "ldtlab"
	PoolDir  = "/var/lib/libvirt/images/ldtlab"
)

// pools serialises pool creation and uploads within this process; across
// processes, libvirt's own "already exists" answers are the arbiter.
var poolMu sync.Mutex

// ensurePool returns the lab's pool, defining, building and starting it if
// needed (persistent and autostarted, so the artifact cache survives).
func ensurePool(l *golibvirt.Libvirt) (golibvirt.StoragePool, error) {
	poolMu.Lock()
	defer poolMu.Unlock()
	p, err := l.StoragePoolLookupByName(PoolName)
	if err != nil {
		x, merr := (&libvirtxml.StoragePool{Type: "dir", Name: PoolName, Target: &libvirtxml.StoragePoolTarget{Path: PoolDir}}).Marshal()
		if merr != nil {
			return p, merr
		}
		if p, err = l.StoragePoolDefineXML(x, 0); err != nil {
			return p, fmt.Errorf("defining storage pool %s: %w", PoolName, err)
		}
		if err := l.StoragePoolBuild(p, 0); err != nil {
			return p, fmt.Errorf("building storage pool %s at %s: %w", PoolName, PoolDir, err)
		}
		l.StoragePoolSetAutostart(p, 1)
	}
	state, _, _, _, err := l.StoragePoolGetInfo(p)
	if err != nil {
		return p, fmt.Errorf("storage pool %s: %w", PoolName, err)
	}
	if state != uint8(golibvirt.StoragePoolRunning) {
		if err := l.StoragePoolCreate(p, 0); err != nil {
			return p, fmt.Errorf("starting storage pool %s: %w", PoolName, err)
		}
	}
	return p, nil
}

// fileHash is the content hash an artifact's volume is named by.
func fileHash(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// volName is an artifact's volume: its kind and (a prefix of) its hash.
func volName(kind, hash string) string {
	if len(hash) > 24 {
		hash = hash[:24]
	}
	return kind + "-" + hash
}

// artifactVolume makes sure the file at path is in the pool as a volume
// named kind-hash and returns that volume's path on the daemon's host.
// A new artifact is uploaded under a temporary name and then cloned to
// its final one, so a volume with the final name is always complete,
// whichever process or host got there first.
func artifactVolume(ctx context.Context, l *golibvirt.Libvirt, pool golibvirt.StoragePool, kind, path, hash string) (string, bool, error) {
	var size int64
	if hash == "" {
		var err error
		if hash, size, err = fileHash(path); err != nil {
			return "", false, fmt.Errorf("hashing %s: %w", path, err)
		}
	}
	name := volName(kind, hash)
	if v, err := l.StorageVolLookupByName(pool, name); err == nil {
		p, err := l.StorageVolGetPath(v)
		return p, false, err
	}
	f, err := os.Open(path)
	if err != nil {
		return "", false, err
	}
	defer f.Close()
	if size == 0 {
		st, err := f.Stat()
		if err != nil {
			return "", false, err
		}
		size = st.Size()
	}
	tmpName := fmt.Sprintf("%s.part-%d-%d", name, os.Getpid(), time.Now().UnixNano())
	tmp, err := createVolume(l, pool, tmpName, uint64(size))
	if err != nil {
		return "", false, err
	}
	defer l.StorageVolDelete(tmp, 0)
	if err := l.StorageVolUpload(tmp, ctxReader{ctx, f}, 0, uint64(size), 0); err != nil {
		return "", false, fmt.Errorf("uploading %s to the %s pool: %w", path, PoolName, err)
	}
	x, _ := (&libvirtxml.StorageVolume{Name: name, Capacity: &libvirtxml.StorageVolumeSize{Value: uint64(size), Unit: "bytes"},
		Target: &libvirtxml.StorageVolumeTarget{Format: &libvirtxml.StorageVolumeTargetFormat{Type: "raw"}}}).Marshal()
	v, err := l.StorageVolCreateXMLFrom(pool, x, tmp, 0)
	if err != nil {
		// Someone else finished the same artifact meanwhile: use theirs.
		if v2, lerr := l.StorageVolLookupByName(pool, name); lerr == nil {
			v = v2
		} else {
			return "", false, fmt.Errorf("storing %s as volume %s: %w", path, name, err)
		}
	}
	p, err := l.StorageVolGetPath(v)
	if err == nil {
		pruneArtifacts(l, pool, kind)
	}
	return p, true, err
}

// A pool keeps the newest artifactKeep artifacts of each kind, plus any a
// running domain boots from; older ones go when a new one arrives. Only
// artifacts older than artifactMinAge are removed, so that one another
// lab process has just looked up is not pulled from under it.
const (
	artifactKeep   = 6
	artifactMinAge = time.Hour
)

type poolVol struct {
	name, path string
	mtime      time.Time
}

// toPrune picks the volumes of kind to remove.
func toPrune(vols []poolVol, kind string, keep int, minAge time.Duration, now time.Time, inUse map[string]bool) []string {
	var mine []poolVol
	for _, v := range vols {
		if strings.HasPrefix(v.name, kind+"-") && !strings.Contains(v.name, ".part-") {
			mine = append(mine, v)
		}
	}
	sort.Slice(mine, func(i, j int) bool { return mine[i].mtime.After(mine[j].mtime) })
	var out []string
	for i, v := range mine {
		if i < keep || inUse[v.path] || now.Sub(v.mtime) < minAge {
			continue
		}
		out = append(out, v.name)
	}
	return out
}

// pruneArtifacts applies toPrune to the pool; failures only cost space.
func pruneArtifacts(l *golibvirt.Libvirt, pool golibvirt.StoragePool, kind string) {
	vols, _, err := l.StoragePoolListAllVolumes(pool, 1, 0)
	if err != nil {
		return
	}
	inUse := map[string]bool{}
	doms, _, _ := l.ConnectListAllDomains(1, golibvirt.ConnectListDomainsActive)
	for _, d := range doms {
		if x, err := l.DomainGetXMLDesc(d, 0); err == nil {
			var dx libvirtxml.Domain
			if dx.Unmarshal(x) == nil && dx.OS != nil {
				inUse[dx.OS.Kernel], inUse[dx.OS.Initrd] = true, true
			}
		}
	}
	byName := map[string]golibvirt.StorageVol{}
	var pv []poolVol
	for _, v := range vols {
		x, err := l.StorageVolGetXMLDesc(v, 0)
		if err != nil {
			continue
		}
		var vx libvirtxml.StorageVolume
		if vx.Unmarshal(x) != nil || vx.Target == nil || vx.Target.Timestamps == nil {
			continue
		}
		sec, err := strconv.ParseFloat(vx.Target.Timestamps.Mtime, 64)
		if err != nil {
			continue
		}
		byName[v.Name] = v
		pv = append(pv, poolVol{name: v.Name, path: vx.Target.Path, mtime: time.Unix(0, int64(sec*1e9))})
	}
	for _, n := range toPrune(pv, kind, artifactKeep, artifactMinAge, time.Now(), inUse) {
		l.StorageVolDelete(byName[n], 0)
	}
}

// ArtifactInPool says whether the file at path is already stored (by its
// content hash) in the pool of the host behind uri; with remove, it also
// deletes that volume (for tests that must see an upload happen).
func ArtifactInPool(ctx context.Context, uri, kind, path string, remove bool) (bool, error) {
	hash, _, err := fileHash(path)
	if err != nil {
		return false, err
	}
	c, err := connect(ctx, uri)
	if err != nil {
		return false, err
	}
	defer c.close()
	defer c.bound(ctx)()
	l := c.Libvirt
	pool, err := l.StoragePoolLookupByName(PoolName)
	if err != nil {
		return false, nil
	}
	v, err := l.StorageVolLookupByName(pool, volName(kind, hash))
	if err != nil {
		return false, nil
	}
	if remove {
		if err := l.StorageVolDelete(v, 0); err != nil {
			return true, err
		}
	}
	return true, nil
}

// ctxReader stops an upload when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// createVolume creates an empty raw volume (sparse where the pool allows).
func createVolume(l *golibvirt.Libvirt, pool golibvirt.StoragePool, name string, size uint64) (golibvirt.StorageVol, error) {
	x, err := (&libvirtxml.StorageVolume{
		Name:       name,
		Capacity:   &libvirtxml.StorageVolumeSize{Value: size, Unit: "bytes"},
		Allocation: &libvirtxml.StorageVolumeSize{Value: 0, Unit: "bytes"},
		Target:     &libvirtxml.StorageVolumeTarget{Format: &libvirtxml.StorageVolumeTargetFormat{Type: "raw"}},
	}).Marshal()
	if err != nil {
		return golibvirt.StorageVol{}, err
	}
	v, err := l.StorageVolCreateXML(pool, x, 0)
	if err != nil {
		return v, fmt.Errorf("creating volume %s in the %s pool: %w", name, PoolName, err)
	}
	return v, nil
}

// fwCfgVolName is the volume holding a domain's i-th fw_cfg entry.
func fwCfgVolName(domain string, i int) string { return fmt.Sprintf("%s-fwcfg%d", domain, i) }

// secretVolume stores data (a key) as a volume readable by the daemon's
// root only (0600; libvirt hands it to QEMU's user while the domain runs)
// and returns it and its path on the daemon's host. A leftover of the
// same name (a lab killed before it could clean up) is replaced. The
// volume is returned even when the upload failed, for the caller to
// delete.
func secretVolume(l *golibvirt.Libvirt, pool golibvirt.StoragePool, name string, data []byte) (golibvirt.StorageVol, string, error) {
	if old, err := l.StorageVolLookupByName(pool, name); err == nil {
		l.StorageVolDelete(old, 0)
	}
	x, err := (&libvirtxml.StorageVolume{
		Name:       name,
		Capacity:   &libvirtxml.StorageVolumeSize{Value: uint64(len(data)), Unit: "bytes"},
		Allocation: &libvirtxml.StorageVolumeSize{Value: 0, Unit: "bytes"},
		Target: &libvirtxml.StorageVolumeTarget{
			Format:      &libvirtxml.StorageVolumeTargetFormat{Type: "raw"},
			Permissions: &libvirtxml.StorageVolumeTargetPermissions{Mode: "0600"},
		},
	}).Marshal()
	if err != nil {
		return golibvirt.StorageVol{}, "", err
	}
	v, err := l.StorageVolCreateXML(pool, x, 0)
	if err != nil {
		return v, "", fmt.Errorf("creating volume %s in the %s pool: %w", name, PoolName, err)
	}
	if err := l.StorageVolUpload(v, bytes.NewReader(data), 0, uint64(len(data)), 0); err != nil {
		return v, "", fmt.Errorf("writing volume %s: %w", name, err)
	}
	p, err := l.StorageVolGetPath(v)
	return v, p, err
}

// diskVolume creates a VM's disk, replacing a leftover of the same name
// (a lab killed before it could clean up).
func diskVolume(l *golibvirt.Libvirt, pool golibvirt.StoragePool, name string, size uint64) (golibvirt.StorageVol, error) {
	if old, err := l.StorageVolLookupByName(pool, name); err == nil {
		l.StorageVolDelete(old, 0)
	}
	return createVolume(l, pool, name, size)
}
