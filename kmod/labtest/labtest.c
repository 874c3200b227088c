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
#include <linux/rcupdate.h>
#include <linux/string.h>
#include <linux/timekeeping.h>
#include <linux/timer.h>
#include <linux/uaccess.h>

#define LABTEST_HUNG_SECS	60
#define LABTEST_SPIN_SECS	30
/* Under the soft-lockup threshold (20 s), over rcu_cpu_stall_timeout set to 3 s. */
#define LABTEST_RCU_SPIN_SECS	15
/* Over the buddy detector's hard-lockup window (~12-24 s), under the RCU stall timeout (60 s). */
#define LABTEST_IRQ_SPIN_SECS	40

static struct dentry *labtest_dir;

/* Serialises starting and stopping the helper threads. */
static DEFINE_MUTEX(labtest_lock);
static struct task_struct *labtest_hung_task;
static struct task_struct *labtest_spin_task;
static struct task_struct *labtest_rcu_task;
static struct task_struct *labtest_irq_task;

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
 * turns itself off after its first report: one fresh guest per word.
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

	/*
	 * UBSAN array-index-out-of-bounds. A plain store: WRITE_ONCE() only
	 * takes &a[4], a legal one-past-the-end address, and never fired.
	 */
	labtest_arr.a[i] = 1;
	pr_info("labtest: stored past a[3], after=%d\n", READ_ONCE(labtest_arr.after));
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

/* Taken with softirqs enabled here and inside a timer (softirq) below. */
static DEFINE_SPINLOCK(labtest_bh_lock);
static struct timer_list labtest_timer;

static void labtest_timer_fn(struct timer_list *unused)
{
	spin_lock(&labtest_bh_lock);
	spin_unlock(&labtest_bh_lock);
}

static noinline int labtest_inconsistent(void)
{
	/*
	 * lockdep "inconsistent lock state" ({SOFTIRQ-ON-W} -> {IN-SOFTIRQ-W}),
	 * reported in the timer. Never a real deadlock: the timer fires
	 * after the unlock.
	 */
	spin_lock(&labtest_bh_lock);
	spin_unlock(&labtest_bh_lock);
	mod_timer(&labtest_timer, jiffies + 1);
	msleep(200);
	return 0;
}

static int __rcu *labtest_rcu_ptr;

static noinline int labtest_rcu_deref(void)
{
	int *p;

	/* rcu_dereference() outside rcu_read_lock(): "suspicious RCU usage". */
	p = rcu_dereference(labtest_rcu_ptr);
	pr_info("labtest: rcu pointer %p\n", p);
	return 0;
}

static DEFINE_RAW_SPINLOCK(labtest_raw_lock);
static DEFINE_SPINLOCK(labtest_inner_lock);

static noinline int labtest_wait_context(void)
{
	/*
	 * A spinlock_t (sleeping on PREEMPT_RT) inside a raw spinlock:
	 * PROVE_RAW_LOCK_NESTING's "Invalid wait context".
	 */
	raw_spin_lock(&labtest_raw_lock);
	spin_lock(&labtest_inner_lock);
	spin_unlock(&labtest_inner_lock);
	raw_spin_unlock(&labtest_raw_lock);
	return 0;
}

static DEFINE_MUTEX(labtest_lock_c);

static noinline int labtest_unlock_balance(void)
{
	/* Releasing a mutex nobody holds: "bad unlock balance detected!". */
	mutex_unlock(&labtest_lock_c);
	return 0;
}

static noinline int labtest_kasan_double_free(void)
{
	char *p = kmalloc(64, GFP_KERNEL);

	if (!p)
		return -ENOMEM;
	kfree(p);
	OPTIMIZER_HIDE_VAR(p);
	/* "KASAN: double-free in labtest_kasan_double_free". */
	kfree(p);
	return 0;
}

static char labtest_global[10];

static noinline int labtest_kasan_global(void)
{
	char *p = labtest_global;
	int i = 10 + labtest_zero;

	/* Through a pointer, so UBSAN's bounds check does not report first. */
	OPTIMIZER_HIDE_VAR(p);
	/* KASAN global-out-of-bounds Read. */
	pr_info("labtest: read %d\n", READ_ONCE(p[i]));
	return 0;
}

static noinline int labtest_kasan_stack(void)
{
	char a[8];
	char *p = a;
	int i = 8 + labtest_zero;

	memset(a, 0, sizeof(a));
	OPTIMIZER_HIDE_VAR(p);
	/* KASAN stack-out-of-bounds Read. */
	pr_info("labtest: read %d\n", READ_ONCE(p[i]));
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
	int n = 7 + labtest_zero, d = labtest_zero;

	/*
	 * #DE: "Oops: divide error". Neither operand is a constant, so the
	 * compiler must emit idiv (it turned 1 / x into a compare).
	 */
	return n / d;
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

/* Waits for kthread_stop(): the stopper holds a reference to us. */
static void labtest_park(void)
{
	while (!kthread_should_stop()) {
		set_current_state(TASK_INTERRUPTIBLE);
		if (!kthread_should_stop())
			schedule();
		__set_current_state(TASK_RUNNING);
	}
}

static noinline int labtest_rcu_spin_fn(void *unused)
{
	u64 end = ktime_get_mono_fast_ns() + LABTEST_RCU_SPIN_SECS * NSEC_PER_SEC;

	/*
	 * No quiescent state on this CPU: an RCU CPU stall once
	 * rcupdate.rcu_cpu_stall_timeout (set it to 3 first) has passed.
	 */
	preempt_disable();
	while (ktime_get_mono_fast_ns() < end)
		cpu_relax();
	preempt_enable();
	labtest_park();
	return 0;
}

static noinline int labtest_irq_spin_fn(void *unused)
{
	u64 end = ktime_get_mono_fast_ns() + LABTEST_IRQ_SPIN_SECS * NSEC_PER_SEC;
	unsigned long flags;

	/*
	 * Interrupts off: this CPU's watchdog hrtimer stops, and its buddy
	 * CPU reports "Watchdog detected hard LOCKUP". jiffies may stop with
	 * us, so time comes from the clocksource.
	 */
	local_irq_save(flags);
	while (ktime_get_mono_fast_ns() < end)
		cpu_relax();
	local_irq_restore(flags);
	labtest_park();
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
	else if (!strcmp(word, "inconsistent"))
		ret = labtest_inconsistent();
	else if (!strcmp(word, "rcu-deref"))
		ret = labtest_rcu_deref();
	else if (!strcmp(word, "wait-context"))
		ret = labtest_wait_context();
	else if (!strcmp(word, "unlock-balance"))
		ret = labtest_unlock_balance();
	else if (!strcmp(word, "kasan-double-free"))
		ret = labtest_kasan_double_free();
	else if (!strcmp(word, "kasan-global"))
		ret = labtest_kasan_global();
	else if (!strcmp(word, "kasan-stack"))
		ret = labtest_kasan_stack();
	else if (!strcmp(word, "rcustall"))
		ret = labtest_start(&labtest_rcu_task, labtest_rcu_spin_fn, "labtest-rcu");
	else if (!strcmp(word, "hardlockup"))
		ret = labtest_start(&labtest_irq_task, labtest_irq_spin_fn, "labtest-irq");
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
	timer_setup(&labtest_timer, labtest_timer_fn, 0);
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
	labtest_stop(&labtest_rcu_task);
	labtest_stop(&labtest_irq_task);
	mutex_unlock(&labtest_lock);
	timer_delete_sync(&labtest_timer);
}

module_init(labtest_init);
module_exit(labtest_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("ldtlab fault injection: WARN, BUG, list corruption, hung task, soft lockup, VM_BUG_ON, panic, sanitizer and detector reports");
