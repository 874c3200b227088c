/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * Lightweight dirty tracking (LDT): /dev/ldt.
 *
 * Open /dev/ldt, bind the file to a process with LDT_IOC_ATTACH, then call
 * LDT_IOC_COLLECT to read (and with LDT_CLEAR reset) the set of pages that
 * were written since they were last reported and cleared. The pages are
 * returned as merged [start, end) regions.
 */
#ifndef _UAPI_LINUX_LDT_H
#define _UAPI_LINUX_LDT_H

#include <linux/ioctl.h>
#include <linux/types.h>

struct ldt_region {
	__u64 start;            /* page aligned */
	__u64 end;              /* exclusive */
};

struct ldt_collect {
	__u64 size;             /* in: sizeof(struct ldt_collect) */
	__u64 flags;            /* in: LDT_CLEAR | LDT_NAIVE */
	__u64 start;            /* in: page-aligned start of the range to walk */
	__u64 end;              /* in: page-aligned end, exclusive */
	__u64 walk_end;         /* out: first address not walked; == end when done */
	__u64 vec;              /* in: user pointer to struct ldt_region[vec_len] */
	__u64 vec_len;          /* in: capacity of vec, in regions */
	/* What the call did, for benchmarks (not in LDT_COLLECT_SIZE_VER0): */
	__u64 visited;          /* out: entries the walks decided on */
	__u64 changed;          /* out: entries LDT_CLEAR rewrote */
};

#define LDT_COLLECT_SIZE_VER0	56	/* without visited and changed */

#define LDT_CLEAR	(1ULL << 0)	/* reset the state of every page reported */
#define LDT_NAIVE	(1ULL << 1)	/* negative control: see below */

/*
 * LDT_IOC_COLLECT returns the number of regions written to vec. Regions are
 * gathered in chunks: a chunk is found without changing anything, copied out
 * with walk_end, and only then, with LDT_CLEAR, are the entries inside the
 * regions copied out cleared. If a fault stops the call part-way (vec or the
 * argument unmapped or made read-only), nothing that was not returned was
 * cleared: the call returns the regions copied out (a short count; walk_end
 * says where they end) or -EFAULT when there are none. No fault loses a page.
 *
 * A mapping the kernel writes through its own mapping of the pages (the
 * io_uring SQ/CQ and provided-buffer rings, the AIO completion ring,
 * AF_PACKET rings, perf and BPF ring buffers: VM_MIXEDMAP or VM_LDT_KWRITE
 * inside the kernel) is reported whole by every collection: the kernel's
 * writes never reach a user page table entry, so the consumer must copy it
 * every time. LDT_NAIVE does not.
 *
 * visited counts the page table entries the call decided on (a PMD leaf is
 * one; page tables that do not exist and mappings reported whole are not
 * walked), changed the entries LDT_CLEAR rewrote: the per-entry work a
 * collection did, which does not depend on how fast the machine is. A
 * caller built before them uses LDT_IOC_COLLECT_VER0 and size 56.
 *
 * One tracker per address space: LDT_IOC_ATTACH to a process that another
 * open /dev/ldt file is attached to fails with EBUSY.
 *
 * LDT_NAIVE uses only the hardware dirty bit: it ignores the LDT-backup bit
 * when reporting and, with LDT_CLEAR, clears the dirty bit without setting
 * the OS-backup bit. It is the alternative the LDT paper rejects, kept as a
 * negative control: it misses pages and makes the kernel lose data, so it
 * needs CAP_SYS_ADMIN (EPERM otherwise).
 */

#define LDT_IOC_MAGIC	'L'
#define LDT_IOC_ATTACH	_IOW(LDT_IOC_MAGIC, 0x40, __s32)	/* pid, 0 = caller */
#define LDT_IOC_COLLECT	_IOWR(LDT_IOC_MAGIC, 0x41, struct ldt_collect)
/* The same call for a caller whose struct ends at vec_len. */
#define LDT_IOC_COLLECT_VER0	_IOC(_IOC_READ | _IOC_WRITE, LDT_IOC_MAGIC, \
				     0x41, LDT_COLLECT_SIZE_VER0)

#endif /* _UAPI_LINUX_LDT_H */
