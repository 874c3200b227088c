package lab

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"ldtlab/guest/agent/boot"
	"ldtlab/orchestrator/vm"
)

// Share is a host directory mounted in the guest (`labctl up --share
// HOST_DIR[:GUEST_DIR][:rw]`): read-only unless Writable, on GuestDir,
// which defaults to the host path itself (as virtme-ng does), so paths
// printed on either side mean the same file.
type Share struct {
	Host     string // absolute, clean (symlinks kept: what the user named)
	Guest    string // absolute, clean
	Writable bool
}

// ParseShare parses HOST_DIR[:GUEST_DIR][:ro|:rw]; writable is the mode
// when the spec names none (--share-rw). The host directory must exist;
// the guest one must not hide the guest's system (boot.CheckShareDir).
func ParseShare(spec string, writable bool) (Share, error) {
	parts := strings.Split(spec, ":")
	if n := len(parts); n > 1 && (parts[n-1] == "ro" || parts[n-1] == "rw") {
		writable = parts[n-1] == "rw"
		parts = parts[:n-1]
	}
	if len(parts) > 2 {
		return Share{}, fmt.Errorf("--share %s: want HOST_DIR[:GUEST_DIR][:ro|:rw] (a path with ':' cannot be shared)", spec)
	}
	if parts[0] == "" {
		return Share{}, fmt.Errorf("--share %s: no host directory", spec)
	}
	host, err := filepath.Abs(parts[0])
	if err != nil {
		return Share{}, fmt.Errorf("--share %s: %v", spec, err)
	}
	s := Share{Host: host, Guest: host, Writable: writable}
	if len(parts) == 2 {
		s.Guest = parts[1]
	}
	if _, err := s.resolve(); err != nil {
		return Share{}, fmt.Errorf("--share %s: %w", spec, err)
	}
	if err := boot.CheckShareDir(s.Guest); err != nil {
		return Share{}, fmt.Errorf("--share %s: %w", spec, err)
	}
	return s, nil
}

// String is the spec ParseShare reads back: HOST:GUEST:ro|rw.
func (s Share) String() string {
	mode := "ro"
	if s.Writable {
		mode = "rw"
	}
	return s.Host + ":" + s.Guest + ":" + mode
}

// Describe is the share for people: "HOST -> GUEST (read-only)".
func (s Share) Describe() string {
	mode := "read-only"
	if s.Writable {
		mode = "writable"
	}
	return fmt.Sprintf("%s -> %s (%s)", s.Host, s.Guest, mode)
}

// resolve is the host directory as the VMM opens it: symlinks resolved
// here, once, so that the VMM is handed a directory and not a name that
// could be swapped later.
func (s Share) resolve() (string, error) {
	real, err := filepath.EvalSymlinks(s.Host)
	if err != nil {
		return "", fmt.Errorf("host directory %s: %w", s.Host, errors.Unwrap(err))
	}
	fi, err := os.Stat(real)
	if err != nil {
		return "", err
	}
	if !fi.IsDir() {
		return "", fmt.Errorf("host path %s is not a directory", s.Host)
	}
	if strings.ContainsAny(real, "\x00\n") {
		return "", fmt.Errorf("host directory %q: newline in the name", real)
	}
	return real, nil
}

// shareTag is the 9p mount tag of the i-th share.
func shareTag(i int) string { return fmt.Sprintf("ldtshare%d", i) }

// shareConfig is what the backend exports and the fw_cfg entry that tells
// the guest's init where to mount each share.
func shareConfig(shares []Share) ([]vm.Share, vm.FwCfg, error) {
	var vs []vm.Share
	var gs []boot.Share
	for i, s := range shares {
		host, err := s.resolve()
		if err != nil {
			return nil, vm.FwCfg{}, err
		}
		vs = append(vs, vm.Share{Host: host, Tag: shareTag(i), Writable: s.Writable})
		gs = append(gs, boot.Share{Tag: shareTag(i), Dir: s.Guest, Writable: s.Writable})
	}
	if err := boot.CheckShares(gs); err != nil {
		return nil, vm.FwCfg{}, err
	}
	return vs, vm.FwCfg{Name: vm.FwCfgShares, Data: []byte(boot.EncodeShares(gs))}, nil
}

// sharesHere says why shares cannot go to the backend o names: the host
// directories are this machine's, so the VMM must run here too.
func sharesHere(o Options) error {
	if o.Backend == "qemu" || o.Connect == "" {
		return nil
	}
	u, err := url.Parse(o.Connect)
	if err != nil {
		return err
	}
	switch u.Hostname() {
	case "", "localhost", "127.0.0.1", "::1":
		return nil
	}
	return fmt.Errorf("--share: the directories are on this machine, the guest on %s (--connect %s); share only with a local backend", u.Hostname(), o.Connect)
}

// checkShares reads the guest's record of its share mounts (init writes
// it before the agent starts) and fails when one is not mounted.
func (m *Machine) checkShares(ctx context.Context, shares []Share) error {
	res, err := m.Run(ctx, "cat "+boot.SharesStatus)
	if err != nil {
		return err
	}
	status := boot.ParseSharesStatus(string(res.Stdout))
	var errs []string
	for i, s := range shares {
		why, ok := status[shareTag(i)]
		switch {
		case !ok:
			errs = append(errs, fmt.Sprintf("%s: the guest did not mount it (%s)", s.Describe(), strings.TrimSpace(string(res.Stdout)+string(res.Stderr))))
		case why != "":
			errs = append(errs, fmt.Sprintf("%s: %s", s.Describe(), why))
		}
	}
	if why, ok := status["*"]; ok {
		errs = append(errs, why)
	}
	if len(errs) == 0 {
		return nil
	}
	sort.Strings(errs)
	return &vm.InfraError{Op: "mounting the shared directories", Err: errors.New(strings.Join(errs, "; "))}
}

// CheckShares checks o's shares before anything boots (usage errors): a
// backend on this machine, guest directories that do not nest.
func CheckShares(o Options) error {
	if len(o.Shares) == 0 {
		return nil
	}
	o.defaults()
	if err := sharesHere(o); err != nil {
		return err
	}
	_, _, err := shareConfig(o.Shares)
	if err != nil {
		return fmt.Errorf("--share: %w", err)
	}
	return nil
}
