package libvirt

// The accelerator a libvirt host offers.

import (
	"context"
	"fmt"
	"ldtlab/orchestrator/accel"
	"strings"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"
)

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
