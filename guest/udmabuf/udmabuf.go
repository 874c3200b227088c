// Package udmabuf makes dma-bufs of memfd pages through /dev/udmabuf
// (CONFIG_UDMABUF). The driver pins the folios with memfd_pin_folios(),
// which walks no page table: no mm holds the pin, none gets
// MMF_HAS_PINNED (issue 19, finding 2). Its mapping is VM_PFNMAP: stores
// through it are seen by no entry of any other mapping of the memfd.
package udmabuf

import (
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"

	"ldtlab/guest/ldt"
)

// ErrNoDevice: the kernel has no /dev/udmabuf.
var ErrNoDevice = errors.New("no /dev/udmabuf (CONFIG_UDMABUF, the debug config's)")

// create is struct udmabuf_create (include/uapi/linux/udmabuf.h).
type create struct {
	memfd, flags uint32
	offset, size uint64
}

// createIoctl is UDMABUF_CREATE, _IOW('u', 0x42, struct udmabuf_create).
var createIoctl = ldt.IOW('u', 0x42, unsafe.Sizeof(create{}))

const flagsCloexec = 1 // UDMABUF_FLAGS_CLOEXEC

// Buf is a udmabuf and its shared mapping: the pages stay pinned until
// Close.
type Buf struct {
	fd  int
	Mem []byte
}

// New makes a dma-buf of bytes [offset, offset+size) of memfd (sealed
// against shrinking, page-aligned) and maps it read-write.
func New(memfd int, offset, size uint64) (*Buf, error) {
	dev, err := unix.Open("/dev/udmabuf", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return nil, ErrNoDevice
	}
	if err != nil {
		return nil, fmt.Errorf("open /dev/udmabuf: %w", err)
	}
	defer unix.Close(dev)
	arg := create{memfd: uint32(memfd), flags: flagsCloexec, offset: offset, size: size}
	fd, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(dev), createIoctl, uintptr(unsafe.Pointer(&arg)))
	if errno != 0 {
		return nil, fmt.Errorf("UDMABUF_CREATE: %w", errno)
	}
	mem, err := unix.Mmap(int(fd), 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(int(fd))
		return nil, fmt.Errorf("mmap the udmabuf: %w", err)
	}
	return &Buf{fd: int(fd), Mem: mem}, nil
}

// Close unmaps and closes the buffer: its pages are unpinned.
func (b *Buf) Close() error {
	if err := unix.Munmap(b.Mem); err != nil {
		unix.Close(b.fd)
		return err
	}
	return unix.Close(b.fd)
}
