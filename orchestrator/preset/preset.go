// Package preset holds the lab's standard guests, shared by the verbs
// that boot them: the pressure guest of the catalogue (check, stress,
// soak, fuzz, migrate) and the redis/CRIU files of the checkpoint and
// migration oracles. A preset is data about a guest, not policy about
// what runs in it.
package preset

import (
	"ldtlab/images/rootfs"
	"ldtlab/internal/cmdline"
	"ldtlab/orchestrator/cell"
	"ldtlab/orchestrator/lab"
)

// Pressure sizes the guest for real pressure: little RAM, zram and a
// disk swap device, a data disk for writeback, two fake NUMA nodes for
// migration, 2 vCPUs for the concurrency scenario.
func Pressure(o *lab.Options) {
	if o.MemoryMiB == 0 {
		o.MemoryMiB = 768
	}
	if o.CPUs < 2 {
		o.CPUs = 2
	}
	if o.SwapMiB == 0 {
		o.SwapMiB = 1024
	}
	if o.DataMiB <= 0 {
		o.DataMiB = 256
	}
	o.Cmdline = cmdline.FakeNUMA(o.Cmdline, 2)
	if o.Name == "" {
		o.Name = "check"
	}
}

// RedisFiles are shipped into the image for the checkpoint and migration
// oracles: Debian's redis-server, redis-benchmark and redis-cli with the
// shared libraries they link, and CRIU (rootfs.CriuFiles: Debian's criu
// behind a small shim for the lab's kernel).
func RedisFiles() ([]rootfs.File, error) {
	var files []rootfs.File
	for _, p := range []struct{ path, pkg string }{
		{"/usr/bin/redis-server", "redis-server"},
		{"/usr/bin/redis-benchmark", "redis-tools"},
		{"/usr/bin/redis-cli", "redis-tools"},
	} {
		fs, err := rootfs.HostProgram(p.path, p.pkg)
		if err != nil {
			return nil, err
		}
		files = rootfs.AddFiles(files, fs...)
	}
	criu, err := rootfs.CriuFiles()
	if err != nil {
		return nil, err
	}
	return rootfs.AddFiles(files, criu...), nil
}

// MigrateShort is the short form of `labctl migrate` that check (and the
// soak) run: three pre-copy rounds under memory pressure, half the
// default data set.
var MigrateShort = cell.MigrateOptions{Rounds: 3, Pressure: true, Keys: 8000}

// DevTools are shipped into developer VMs (up, and run/shell's throwaway
// guests) so that the tools a kernel engineer points at a guest through
// `labctl ssh-config` work: rsync and `scp -O` run their own binary on the
// far side (the agent's SFTP server only serves plain scp and sftp).
func DevTools() ([]rootfs.File, error) {
	var files []rootfs.File
	for _, p := range []struct{ path, pkg string }{
		{"/usr/bin/rsync", "rsync"},
		{"/usr/bin/scp", "openssh-client"},
	} {
		fs, err := rootfs.HostProgram(p.path, p.pkg)
		if err != nil {
			return nil, err
		}
		files = rootfs.AddFiles(files, fs...)
	}
	return files, nil
}
