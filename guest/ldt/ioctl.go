package ldt

// Linux ioctl request encoding (include/uapi/asm-generic/ioctl.h, which x86
// uses unchanged): nr in bits 0-7, type in 8-15, size in 16-29, direction in
// 30-31. Computed here rather than hard-coded so the numbers follow the
// struct sizes; the tests pin them against values derived by hand and by gcc.
// The tracker package reuses these for PAGEMAP_SCAN and userfaultfd.
const (
	iocNRBits   = 8
	iocTypeBits = 8
	iocSizeBits = 14

	iocNRShift   = 0
	iocTypeShift = iocNRShift + iocNRBits
	iocSizeShift = iocTypeShift + iocTypeBits
	iocDirShift  = iocSizeShift + iocSizeBits

	// Direction bits, from the caller's point of view: IOCWrite means
	// user space writes (the kernel reads the argument).
	IOCNone  = 0
	IOCWrite = 1
	IOCRead  = 2
)

// IOC encodes an ioctl request number like the kernel's _IOC macro. It
// panics on a size that does not fit the 14-bit field, which would silently
// produce a different request number.
func IOC(dir, typ, nr, size uintptr) uintptr {
	if size >= 1<<iocSizeBits || typ >= 1<<iocTypeBits || nr >= 1<<iocNRBits || dir > 3 {
		panic("ldt: ioctl field out of range")
	}
	return dir<<iocDirShift | size<<iocSizeShift | typ<<iocTypeShift | nr<<iocNRShift
}

// IOW is _IOW(typ, nr, T) with size = sizeof(T).
func IOW(typ, nr, size uintptr) uintptr { return IOC(IOCWrite, typ, nr, size) }

// IOR is _IOR(typ, nr, T) with size = sizeof(T).
func IOR(typ, nr, size uintptr) uintptr { return IOC(IOCRead, typ, nr, size) }

// IOWR is _IOWR(typ, nr, T) with size = sizeof(T).
func IOWR(typ, nr, size uintptr) uintptr { return IOC(IOCRead|IOCWrite, typ, nr, size) }
