package lab

// Finding (or building) the kernel and the image a guest boots.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"ldtlab/images/kernel"
	"ldtlab/images/rootfs"
	"ldtlab/orchestrator/vm"
)

// Prepare finds (or builds) the kernel and the image, saying which.
func Prepare(ctx context.Context, o Options) (*kernel.Build, *rootfs.Image, error) {
	o.defaults()
	ko := o.KernelOptions()
	var kb *kernel.Build
	if o.NoBuild {
		b, ok, err := kernel.Find(ko)
		if err != nil {
			return nil, nil, &vm.InfraError{Op: "looking up the kernel build", Err: err}
		}
		if !ok {
			return nil, nil, &vm.InfraError{Op: "looking up the kernel build", Err: fmt.Errorf("no cached %s kernel for the current sources: run `%s`", ko.Variant(), ko.BuildCommand())}
		}
		kb = b
	} else {
		t := time.Now()
		b, hit, err := kernel.Ensure(ctx, ko)
		var se *kernel.SelectionError
		if errors.As(err, &se) {
			return nil, nil, err // a --patches the series cannot apply: a usage error
		}
		if err != nil {
			return nil, nil, &vm.InfraError{Op: "building the kernel", Err: err}
		}
		kb = b
		if hit {
			o.logf("kernel: cached %s %s (%s) in %s", ko.Variant(), b.Meta.KernelRelease, shortKey(b.Meta.Key), time.Since(t).Round(time.Millisecond))
		} else {
			o.logf("kernel: built %s %s in %s", ko.Variant(), b.Meta.KernelRelease, time.Since(t).Round(time.Second))
		}
	}
	o.logf("kernel patches: %s", kb.Meta.PatchSummary())
	t := time.Now()
	img, hit, err := rootfs.Ensure(ctx, rootfs.Options{Repo: o.Repo, Kernel: kb, Extra: o.Extra, Log: o.Log})
	if err != nil {
		return nil, nil, &vm.InfraError{Op: "building the guest image", Err: err}
	}
	if hit {
		o.logf("image: cached initramfs (%s) in %s", shortKey(img.Key), time.Since(t).Round(time.Millisecond))
	} else {
		o.logf("image: built initramfs (%s) in %s", shortKey(img.Key), time.Since(t).Round(time.Millisecond))
	}
	return kb, img, nil
}

func shortKey(k string) string {
	if len(k) > 12 {
		return k[:12]
	}
	return k
}
