/*
 * ldtlab's LD_PRELOAD shim for Debian's criu 3.17.1 in the lab's guest
 * (images/rootfs/criu.go ships it; /usr/sbin/criu in the guest is a
 * wrapper that preloads it). The guest kernel is built small: no
 * CONFIG_INOTIFY_USER, no CONFIG_NETFILTER, no CONFIG_NETDEVICES. CRIU
 * 3.17 treats the first two as fatal while it probes the kernel at start
 * (kerndat), and the third while it dumps any socket, although the
 * process the lab migrates (redis-server: a TCP listener, a pipe, an
 * epoll) uses none of them. Each override below answers one such probe
 * with what this kernel really has; nothing else of CRIU is touched, and
 * the restored process never sees the shim (CRIU replaces its whole
 * address space with the image's).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

/*
 * kerndat_has_inotify_setnextwd() fails CRIU's start when inotify_init()
 * fails. It only asks whether INOTIFY_IOC_SETNEXTWD works: an eventfd
 * answers that ioctl with ENOTTY, so CRIU records "no SETNEXTWD" (true:
 * no inotify at all) and goes on.
 */
int inotify_init(void)
{
	return eventfd(0, EFD_CLOEXEC);
}

/*
 * kerndat_has_nftables_concat() runs libnftables in a child; without
 * NETLINK_NETFILTER libnftables exit()s, and CRIU 3.17 also fails when
 * the probe table cannot be created. The stand-in "creates" the table
 * and refuses the concatenated set, so CRIU records "no nftables concat"
 * (true) and never uses nftables (--network-lock defaults to iptables,
 * which the lab never needs: connections are closed, --tcp-close).
 */
static int nft_dummy;

void *nft_ctx_new(unsigned int flags)
{
	(void)flags;
	return &nft_dummy;
}

void nft_ctx_free(void *ctx)
{
	(void)ctx;
}

int nft_run_cmd_from_buffer(void *ctx, const char *buf)
{
	(void)ctx;
	return strncmp(buf, "add set", 7) == 0 ? -1 : 0;
}

/*
 * Without CONFIG_NETDEVICES, getsockopt(SO_BINDTODEVICE) fails with
 * ENOPROTOOPT and CRIU fails the dump of every socket. No socket can be
 * bound to a device on such a kernel: the answer is "none" (length 0),
 * which is also what CRIU restores.
 */
int getsockopt(int fd, int level, int name, void *val, socklen_t *len)
{
	static int (*real)(int, int, int, void *, socklen_t *);
	int ret;

	if (!real)
		real = (int (*)(int, int, int, void *, socklen_t *))dlsym(RTLD_NEXT, "getsockopt");
	ret = real(fd, level, name, val, len);
	if (ret < 0 && errno == ENOPROTOOPT && level == SOL_SOCKET && name == SO_BINDTODEVICE) {
		*len = 0;
		return 0;
	}
	return ret;
}
