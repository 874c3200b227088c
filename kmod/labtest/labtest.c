// SPDX-License-Identifier: GPL-2.0
/*
 * labtest: deliberate kernel failures for ldtlab's report parser.
 *
 * Writing a word to /sys/kernel/debug/labtest/trigger produces one kind of
 * kernel report, so that golden console logs can be captured from a real
 * 6.12 guest. Loading the module does nothing else, so it is safe to load
 * at boot.
 *
 * Each trigger lives in its own noinline function: report titles are
 * derived from function names, and these keep them stable.
 */
#include <linux/bug.h>
#include <linux/debugfs.h>
#include <linux/delay.h>
#include <linux/fs.h>
#include <linux/gfp.h>
#include <linux/jiffies.h>
#include <linux/kfence.h>
#include <linux/kthread.h>
#include <linux/list.h>
#include <linux/mm.h>
#include <linux/mmdebug.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/refcount.h>
#include <linux/sched.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/string.h>
#include <linux/uaccess.h>

#define LABTEST_HUNG_SECS	60
#define LABTEST_SPIN_SECS	30

static struct dentry *labtest_dir;

/* Serialises starting and stopping the helper threads. */
static DEFINE_MUTEX(labtest_lock);
static struct task_struct *labtest_hung_task;
static struct task_struct *labtest_spin_task;

static noinline int labtest_warn(void)
{
	WARN(1, "labtest: deliberate WARN_ON via debugfs trigger\n");
	return 0;
}

static noinline int labtest_bug(void)
{
	/* Oopses and kills the writing task; the kernel keeps running. */
	BUG();
	return 0;
}

static noinline int labtest_list_corrupt(void)
{
	/*
	 * On-stack list: if the check only WARNs (no BUG_ON_DATA_CORRUPTION)
	 * the broken list dies with this frame and nothing else sees it.
	 */
	LIST_HEAD(head);
	struct list_head a, b;

	list_add(&a, &head);
	/* next->prev must be &head; make it lie. */
	WRITE_ONCE(a.prev, &b);
	/* __list_add_valid_or_report(): "list_add corruption. next->prev ..." */
	list_add(&b, &head);
	return 0;
}

static noinline int labtest_vmbug(void)
{
	struct page *page;

	/* VM_BUG_ON_PAGE() compiles to nothing without CONFIG_DEBUG_VM. */
	if (!IS_ENABLED(CONFIG_DEBUG_VM))
		return -EOPNOTSUPP;
	page = alloc_page(GFP_KERNEL);
	if (!page)
		return -ENOMEM;
	/* A fresh page has refcount 1, so this always fires (and leaks it). */
	VM_BUG_ON_PAGE(page_ref_count(page) == 1, page);
	__free_page(page);
	return 0;
}

/*
 * Sanitizer and detector triggers, for the "sanitize" kernel config. Each
 * produces exactly one report and leaves the kernel usable, except the
 * oopses (divide, gpf, null), which kill the writer like "bug". Lockdep
 * reports once per boot: capture "lockdep" in a fresh guest.
 */

/* Keeps the compiler from proving the bugs below away. */
static volatile int labtest_zero;

static noinline int labtest_kasan_oob(void)
{
	char *p = kmalloc(30, GFP_KERNEL);
	int i = 32 + labtest_zero;

	if (!p)
		return -ENOMEM;
	OPTIMIZER_HIDE_VAR(p);
	/* Past the 30 requested bytes: KASAN slab-out-of-bounds Read. */
	pr_info("labtest: read %d\n", READ_ONCE(p[i]));
	kfree(p);
	return 0;
}

static noinline int labtest_kasan_uaf(void)
{
	char *p = kmalloc(64, GFP_KERNEL);

	if (!p)
		return -ENOMEM;
	kfree(p);
	OPTIMIZER_HIDE_VAR(p);
	/* KASAN slab-use-after-free Read. */
	pr_info("labtest: read %d\n", READ_ONCE(p[8]));
	return 0;
}

static noinline int labtest_kfence(void)
{
	unsigned long end = jiffies + 30 * HZ;
	char *p;

	if (!IS_ENABLED(CONFIG_KFENCE))
		return -EOPNOTSUPP;
	/* KFENCE samples one allocation per interval: wait for one. */
	for (;;) {
		p = kmalloc(32, GFP_KERNEL);
		if (!p)
			return -ENOMEM;
		if (is_kfence_address(p))
			break;
		kfree(p);
		if (time_after(jiffies, end))
			return -ETIMEDOUT;
		msleep(1);
	}
	kfree(p);
	OPTIMIZER_HIDE_VAR(p);
	/* KFENCE use-after-free read (KASAN leaves KFENCE objects to it). */
	pr_info("labtest: read %d\n", READ_ONCE(p[0]));
	return 0;
}

static noinline int labtest_ubsan_shift(void)
{
	unsigned long v = 1;
	int shift = 70 + labtest_zero;

	/* UBSAN shift-out-of-bounds. */
	v <<= shift;
	pr_info("labtest: shifted %lu\n", v);
	return 0;
}

static struct {
	int a[4];
	int after; /* keeps a[4] inside the object: no KASAN report */
} labtest_arr;

static noinline int labtest_ubsan_bounds(void)
{
	int i = 4 + labtest_zero;

	/* UBSAN array-index-out-of-bounds. */
	WRITE_ONCE(labtest_arr.a[i], 1);
	return 0;
}

static DEFINE_MUTEX(labtest_lock_a);
static DEFINE_MUTEX(labtest_lock_b);

static noinline int labtest_lockdep(void)
{
	/* A then B, then B then A: a possible ABBA deadlock, never a real one. */
	mutex_lock(&labtest_lock_a);
	mutex_lock(&labtest_lock_b);
	mutex_unlock(&labtest_lock_b);
	mutex_unlock(&labtest_lock_a);

	mutex_lock(&labtest_lock_b);
	mutex_lock(&labtest_lock_a);
	mutex_unlock(&labtest_lock_a);
	mutex_unlock(&labtest_lock_b);
	return 0;
}

static noinline int labtest_atomic_sleep(void)
{
	/* DEBUG_ATOMIC_SLEEP: "sleeping function called from invalid context". */
	preempt_disable();
	might_sleep();
	preempt_enable();
	return 0;
}

static noinline int labtest_refcount(void)
{
	refcount_t r = REFCOUNT_INIT(1);

	/* The second one, from 0: "refcount_t: underflow; use-after-free." */
	if (refcount_dec_and_test(&r) && refcount_dec_and_test(&r))
		pr_info("labtest: refcount hit zero twice\n");
	return 0;
}

static noinline int labtest_leak(void)
{
	char *p = kmalloc(64, GFP_KERNEL);

	if (!p)
		return -ENOMEM;
	strscpy(p, "labtest leak", 64);
	/*
	 * Dropped on purpose. kmemleak reports it after it is 5 s old:
	 * echo scan > /sys/kernel/debug/kmemleak
	 */
	OPTIMIZER_HIDE_VAR(p);
	return 0;
}

static noinline int labtest_divide(void)
{
	/* #DE: "Oops: divide error". */
	return 1 / labtest_zero;
}

static noinline int labtest_gpf(void)
{
	unsigned long v;

	/*
	 * A non-canonical address: #GP. Plain asm, so that KASAN's own
	 * check of the address does not fault first.
	 */
	asm volatile("movq (%1), %0" : "=r"(v) : "r"(0xdead000000000000UL));
	return v ? 0 : 1;
}

static noinline int labtest_null(void)
{
	unsigned long v;

	/* #PF: "BUG: kernel NULL pointer dereference". Asm: see above. */
	asm volatile("movq (%1), %0" : "=r"(v) : "r"(0x10UL));
	return v ? 0 : 1;
}

static noinline int labtest_hung_fn(void *unused)
{
	/*
	 * TASK_UNINTERRUPTIBLE is what the hung-task detector looks for;
	 * kthread_stop() at unload still wakes us early.
	 */
	schedule_timeout_uninterruptible(LABTEST_HUNG_SECS * HZ);
	/* Stay until kthread_stop(): the stopper holds a reference to us. */
	while (!kthread_should_stop()) {
		set_current_state(TASK_INTERRUPTIBLE);
		if (!kthread_should_stop())
			schedule();
		__set_current_state(TASK_RUNNING);
	}
	return 0;
}

static noinline int labtest_spin_fn(void *unused)
{
	unsigned long end = jiffies + LABTEST_SPIN_SECS * HZ;

	/* No preemption, no sleeping: the soft-lockup watchdog fires at 2*watchdog_thresh. */
	preempt_disable();
	while (time_before(jiffies, end) && !kthread_should_stop())
		cpu_relax();
	preempt_enable();
	while (!kthread_should_stop()) {
		set_current_state(TASK_INTERRUPTIBLE);
		if (!kthread_should_stop())
			schedule();
		__set_current_state(TASK_RUNNING);
	}
	return 0;
}

/* Starts fn in a kthread unless one from an earlier trigger still exists. */
static int labtest_start(struct task_struct **slot, int (*fn)(void *),
			 const char *name)
{
	struct task_struct *t;
	int ret = 0;

	mutex_lock(&labtest_lock);
	if (*slot) {
		ret = -EBUSY;
		goto out;
	}
	t = kthread_create(fn, NULL, "%s", name);
	if (IS_ERR(t)) {
		ret = PTR_ERR(t);
		goto out;
	}
	/* Keep the task_struct alive for kthread_stop() at unload. */
	get_task_struct(t);
	*slot = t;
	pr_info("labtest: %s started\n", name);
	wake_up_process(t);
out:
	mutex_unlock(&labtest_lock);
	return ret;
}

static void labtest_stop(struct task_struct **slot)
{
	if (!*slot)
		return;
	kthread_stop(*slot);
	put_task_struct(*slot);
	*slot = NULL;
}

static ssize_t labtest_write(struct file *file, const char __user *ubuf,
			     size_t count, loff_t *ppos)
{
	char buf[32];
	char *word;
	size_t n = min(count, sizeof(buf) - 1);
	int ret;

	if (copy_from_user(buf, ubuf, n))
		return -EFAULT;
	buf[n] = '\0';
	word = strim(buf);

	if (!strcmp(word, "warn"))
		ret = labtest_warn();
	else if (!strcmp(word, "bug"))
		ret = labtest_bug();
	else if (!strcmp(word, "list"))
		ret = labtest_list_corrupt();
	else if (!strcmp(word, "hung"))
		ret = labtest_start(&labtest_hung_task, labtest_hung_fn, "labtest-hung");
	else if (!strcmp(word, "softlockup"))
		ret = labtest_start(&labtest_spin_task, labtest_spin_fn, "labtest-spin");
	else if (!strcmp(word, "vmbug"))
		ret = labtest_vmbug();
	else if (!strcmp(word, "kasan-oob"))
		ret = labtest_kasan_oob();
	else if (!strcmp(word, "kasan-uaf"))
		ret = labtest_kasan_uaf();
	else if (!strcmp(word, "kfence"))
		ret = labtest_kfence();
	else if (!strcmp(word, "ubsan-shift"))
		ret = labtest_ubsan_shift();
	else if (!strcmp(word, "ubsan-bounds"))
		ret = labtest_ubsan_bounds();
	else if (!strcmp(word, "lockdep"))
		ret = labtest_lockdep();
	else if (!strcmp(word, "atomic-sleep"))
		ret = labtest_atomic_sleep();
	else if (!strcmp(word, "refcount"))
		ret = labtest_refcount();
	else if (!strcmp(word, "leak"))
		ret = labtest_leak();
	else if (!strcmp(word, "divide"))
		ret = labtest_divide();
	else if (!strcmp(word, "gpf"))
		ret = labtest_gpf();
	else if (!strcmp(word, "null"))
		ret = labtest_null();
	else if (!strcmp(word, "panic"))
		panic("labtest: deliberate panic via debugfs trigger");
	else
		ret = -EINVAL;

	return ret ? ret : count;
}

static const struct file_operations labtest_fops = {
	.owner = THIS_MODULE,
	.write = labtest_write,
	.llseek = noop_llseek,
};

static int __init labtest_init(void)
{
	labtest_dir = debugfs_create_dir("labtest", NULL);
	/* Root only, write only. debugfs errors are not fatal: stay loadable. */
	debugfs_create_file("trigger", 0200, labtest_dir, NULL, &labtest_fops);
	pr_info("labtest: ready, write to /sys/kernel/debug/labtest/trigger\n");
	return 0;
}

static void __exit labtest_exit(void)
{
	/* Remove the file first so no new thread can be started. */
	debugfs_remove(labtest_dir);
	mutex_lock(&labtest_lock);
	labtest_stop(&labtest_hung_task);
	labtest_stop(&labtest_spin_task);
	mutex_unlock(&labtest_lock);
}

module_init(labtest_init);
module_exit(labtest_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("ldtlab fault injection: WARN, BUG, list corruption, hung task, soft lockup, VM_BUG_ON, panic, sanitizer and detector reports");
