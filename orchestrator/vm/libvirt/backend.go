package libvirt

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket"
	"libvirt.org/go/libvirtxml"

	"ldtlab/orchestrator/accel"
)

// DefaultURI is the connection used when none is given.
const DefaultURI = "qemu:///system"

// Pool is the storage pool the lab keeps its volumes in, on every host:
// artifacts named by content hash (uploaded once, reused by every VM) and
// each VM's disks (deleted with the VM).
const (
	PoolName = "ldtlab"
	PoolDir  = "/var/lib/libvirt/images/ldtlab"
)

// conn is a go-libvirt connection that can be cut. go-libvirt waits for
// libvirtd's answer to a call forever (a wedged daemon would hang the lab),
// so every use is bounded by a context whose end closes the socket under
// go-libvirt, which fails the pending calls.
type conn struct {
	*golibvirt.Libvirt
	u *url.URL

	mu  sync.Mutex
	raw net.Conn
}

// Dial implements socket.Dialer, keeping the net.Conn to cut.
type cuttableDialer struct {
	socket.Dialer
	c *conn
}

func (d cuttableDialer) Dial() (net.Conn, error) {
	nc, err := d.Dialer.Dial()
	if err == nil {
		d.c.mu.Lock()
		d.c.raw = nc
		d.c.mu.Unlock()
	}
	return nc, err
}

// abort closes the socket: pending and later calls fail at once.
func (c *conn) abort() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.raw != nil {
		c.raw.Close()
	}
}

// bound makes ctx's end abort the connection; call the returned stop
// when the bounded work is over.
func (c *conn) bound(ctx context.Context) (stop func() bool) {
	return context.AfterFunc(ctx, c.abort)
}

// dead says whether the connection is gone (aborted or lost).
func (c *conn) dead() bool {
	select {
	case <-c.Disconnected():
		return true
	default:
		return false
	}
}

// close says goodbye to libvirtd, within a few seconds.
func (c *conn) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	defer c.bound(ctx)()
	err := c.Disconnect()
	c.abort()
	return err
}

// connect opens a connection to uri within ctx (or 10 s).
func connect(ctx context.Context, uri string) (*conn, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return nil, fmt.Errorf("libvirt URI %q: %w", uri, err)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
	}
	dl, _ := ctx.Deadline()
	d, err := dialerFor(u, time.Until(dl))
	if err != nil {
		return nil, err
	}
	c := &conn{u: u}
	c.Libvirt = golibvirt.NewWithDialer(cuttableDialer{d, c})
	stop := c.bound(ctx)
	err = c.ConnectToURI(golibvirt.RemoteURI(u))
	stop()
	if err != nil {
		c.abort()
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		return nil, fmt.Errorf("connecting to libvirtd at %s: %w (is libvirtd running? `labctl setup --backend libvirt` starts a local one)", u.Redacted(), err)
	}
	return c, nil
}

// isLocal says whether the URI reaches this machine's daemon, where the
// lab's own accelerator probe applies.
func isLocal(u *url.URL) bool {
	h := u.Hostname()
	return h == "" || h == "localhost" || h == "127.0.0.1" || h == "::1"
}

// resolveAccel turns an accelerator request ("auto", "kvm", "tcg") into a
// choice for a libvirt host. kvmErr is what asking the host's domain
// capabilities for the kvm domain type gave.
//
// One rule on every machine: on a local host the lab's own probe speaks
// first (it also catches a PVM-only /dev/kvm that libvirt happily reports
// as kvm), so a machine without usable KVM gets the probe's reason whether
// or not libvirt offers kvm; libvirt's capabilities only veto a KVM the
// probe found usable. A remote host's capabilities are all there is.
func resolveAccel(want string, kvmErr error, local bool, probe func(want string) (accel.Choice, error)) (accel.Choice, error) {
	switch strings.ToLower(strings.TrimSpace(want)) {
	case "", "auto":
		want = "auto"
	case "kvm":
		want = "kvm"
	case "tcg":
		return accel.Choice{Kind: accel.TCG, Reason: "tcg: requested"}, nil
	default:
		return accel.Choice{}, fmt.Errorf("unknown accelerator %q (auto, kvm or tcg)", want)
	}
	if local {
		c, err := probe(want)
		if err != nil || c.Kind != accel.KVM || kvmErr == nil {
			return c, err
		}
	}
	if kvmErr != nil {
		if want == "kvm" {
			return accel.Choice{}, fmt.Errorf("kvm requested but libvirt's domain capabilities have no kvm domain type: %v", kvmErr)
		}
		return accel.Choice{Kind: accel.TCG, Reason: "tcg: libvirt host has no kvm domain type"}, nil
	}
	return accel.Choice{Kind: accel.KVM, Reason: "kvm: remote libvirt host offers the kvm domain type"}, nil
}

// OffersKVM says whether the libvirt host behind uri offers the kvm
// domain type (nil) or why not.
func OffersKVM(ctx context.Context, uri string) error {
	c, err := connect(ctx, uri)
	if err != nil {
		return err
	}
	defer c.close()
	defer c.bound(ctx)()
	return kvmCaps(c.Libvirt)
}

// domainType is the libvirt domain type for an accelerator.
func domainType(k accel.Kind) (string, error) {
	switch k {
	case accel.KVM:
		return "kvm", nil
	case accel.TCG:
		return "qemu", nil
	}
	return "", fmt.Errorf("accelerator %q has no libvirt domain type", k)
}

// kvmCaps asks the host whether it offers the kvm domain type.
func kvmCaps(l *golibvirt.Libvirt) error {
	x, err := l.ConnectGetDomainCapabilities(nil, golibvirt.OptString{"x86_64"}, nil, golibvirt.OptString{"kvm"}, 0)
	if err != nil {
		return err
	}
	var caps libvirtxml.DomainCaps
	if err := caps.Unmarshal(x); err != nil {
		return fmt.Errorf("reading domain capabilities: %w", err)
	}
	if caps.Domain != "kvm" {
		return fmt.Errorf("domain capabilities are for %q", caps.Domain)
	}
	return nil
}

// Accel resolves an accelerator request on the host behind uri.
func Accel(ctx context.Context, uri, want string) (accel.Choice, error) {
	c, err := connect(ctx, uri)
	if err != nil {
		return accel.Choice{}, err
	}
	defer c.close()
	defer c.bound(ctx)()
	return resolveAccel(want, kvmCaps(c.Libvirt), isLocal(c.u), accel.ResolveHost)
}

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
