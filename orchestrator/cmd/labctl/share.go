package main

import (
	"flag"
	"strings"

	"ldtlab/orchestrator/lab"
)

// shareFlags are --share and --share-rw (up, supervise, the throwaway
// shell): host directories mounted in the guest over virtio-9p.
type shareFlags struct{ shares []lab.Share }

// shareValue parses one --share (or --share-rw) at once, so that a bad
// directory is a usage error before anything boots.
type shareValue struct {
	f        *shareFlags
	writable bool
}

func (v shareValue) String() string {
	if v.f == nil {
		return ""
	}
	var s []string
	for _, sh := range v.f.shares {
		s = append(s, sh.String())
	}
	return strings.Join(s, " ")
}

func (v shareValue) Set(spec string) error {
	sh, err := lab.ParseShare(spec, v.writable)
	if err != nil {
		return err
	}
	v.f.shares = append(v.f.shares, sh)
	return nil
}

func (f *shareFlags) register(fs *flag.FlagSet) {
	fs.Var(shareValue{f: f}, "share", "mount the host directory `HOST_DIR[:GUEST_DIR][:rw]` in the guest (virtio-9p; repeatable): read-only unless :rw, on GUEST_DIR, by default the same path as on the host")
	fs.Var(shareValue{f: f, writable: true}, "share-rw", "as --share, writable (`HOST_DIR[:GUEST_DIR]`): what the guest creates is 0600/0700 on the host, its modes and owners kept in user.virtfs.* xattrs")
}

// args are the flags that hand the shares to the supervisor.
func (f *shareFlags) args() []string {
	var a []string
	for _, sh := range f.shares {
		a = append(a, "-share", sh.String())
	}
	return a
}

// check refuses shares the backend g names cannot have (a remote libvirt
// host) or that nest, before anything boots.
func (f *shareFlags) check(g *guestFlags) error {
	o := lab.Options{Backend: g.backend, Shares: f.shares}
	if g.backend == "libvirt" {
		o.Connect = g.connect
	}
	if err := lab.CheckShares(o); err != nil {
		return usageError{err}
	}
	return nil
}
