// Package libvirt is the libvirt VM backend: one transient domain per VM
// on a local or remote libvirtd (go-libvirt, no cgo), with the domain XML
// built by libvirtxml. The console and the guest channel are libvirt
// streams, so a remote host needs nothing but libvirtd.
package libvirt
