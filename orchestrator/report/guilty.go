package report

import (
	"regexp"
	"strings"
)

// The guilty frame is the function a title names: the first frame of the
// report's stack that is not reporting machinery, a generic helper (list,
// string, copy, allocator, lock primitives ...) or the entry code. The
// rules follow syzkaller's (pkg/report/linux.go), so that a title here
// is the title syzkaller gives the same report and can be searched for
// upstream; they are written anew, not copied.

// step is one move through a report's lines while looking for frames:
// either "advance to the next line matching re" (its first submatch, if
// any, is a frame), or, when re is nil, "read the frames of a stack",
// up to the line that starts another stack or the next step's line.
type step struct{ re *regexp.Regexp }

// guilty says where a kind's guilty frame is found.
type guilty struct {
	path []step
	alt  []step         // tried when path gives no frame
	skip *regexp.Regexp // frames never guilty for this kind, besides skipAll
	// fallback: where the lab looks when syzkaller's rules find nothing
	// (they would title the report "... in corrupted").
	fallback *guilty
	// pick chooses among the frames found (none: the first); watchdog and
	// hung-task reports look deeper into the stack.
	pick func(frames []string) string
}

var (
	stack     = step{}
	rip       = step{re: ripRe}
	callTrace = step{re: callTraceRe}
	lockAt    = step{re: lockAtRe}

	// "RIP: 0010:func+0x1/0x2", "IP: [<ffffffff81234567>] func+0x1/0x2";
	// a raw "RIP: 0010:0x0" matches too, naming no frame.
	ripRe       = re(`(?:IP|pc |PC is at):? (?:[0-9]+:)?(?:(?:\[<?(?:0x)?[0-9a-f]+>?\] +){0,2}(?:([A-Za-z0-9_]+)[.+]|0x[0-9a-f]+)|(?:\[<?(?:0x)?[0-9a-f]+>?\] +)?\[< *\(null\)>\] +\(null\)|[0-9]+: +\(null\))`)
	callTraceRe = re(`Call [Tt]race`)
	lockAtRe    = re(`at: (?:\[<?(?:0x)?[0-9a-f]+>?\] +)?([A-Za-z0-9_]+)[.+]`)
	// A stack frame: "func+0x1/0x2", optionally behind one or two
	// "[<address>]"; a frame the unwinder is unsure of ("? func") or an
	// inlined one ("func file.c:12 [inline]") is not one.
	stackFrameRe = re(`^\s*(?:\[<?(?:0x)?[0-9a-f]+>?\] ){0,2}([A-Za-z0-9_]+)[.+]`)
	// Lines that start a stack.
	stackStartRe = re(`Call [Tt]race|Allocated:|Allocated by task \d+:|Freed:|Freed by task \d+:|[^k] backtrace(?: \(crc [0-9a-f]*\))?:|Backtrace:|Uninit was stored to memory at`)
	// Fault injection prints its stack into the middle of reports.
	faultInjectRe = re(`^\s*(?:\[<?(?:0x)?[0-9a-f]+>?\] )?should_fail(?:slab)?(?:\.[a-z0-9.]+)?\+0x`)
)

func gRIPTrace(skip ...string) *guilty {
	return &guilty{path: []step{rip, callTrace, stack}, skip: skipRe(skip)}
}

func gTrace(skip ...string) *guilty {
	return &guilty{path: []step{callTrace, stack}, skip: skipRe(skip)}
}

// gWarning: where the WARN trapped (RIP) and what follows it, else the
// call trace (kernels that print no registers).
//
// Without either (a report cut short), the lab takes the function the
// header names.
func gWarning(skip ...string) *guilty {
	return &guilty{path: []step{{re: re(ripRe.String() + `|--- interrupt: [0-9]+ at ([A-Za-z0-9_]+)[.+]`)}, stack},
		alt: []step{callTrace, stack}, skip: skipRe(skip),
		fallback: &guilty{path: []step{{re: warnSiteRe}}, skip: skipRe(skip)}}
}

// warnSiteRe: the function a WARNING header names.
var warnSiteRe = re(`^WARNING: .*?\bat (?:\S+:\d+ )?([A-Za-z0-9_]+)[.+]`)

// gStall: a CPU caught looping; the frame that names the loop is found
// by stallFrame.
func gStall() *guilty {
	return &guilty{path: []step{rip, callTrace, stack}, pick: stallFrame}
}

// gAfterHeader: the function the header names, then the stack printed
// right after it (KFENCE prints no "Call Trace:" line).
func gAfterHeader(header string) *guilty {
	return &guilty{path: []step{{re: re(header)}, stack}}
}

// gCapture: the first line matching capture names the frame.
func gCapture(capture string) *guilty {
	return &guilty{path: []step{{re: re(capture)}}, skip: neverSkip}
}

// gCaptureAfter: the first line matching capture after the line matching
// after names the frame.
func gCaptureAfter(after string, capture *regexp.Regexp) *guilty {
	return &guilty{path: []step{{re: re(after)}, {re: capture}}, skip: neverSkip}
}

// neverSkip: frames named by a lock description are taken as they are.
var neverSkip = re(`^$`)

func skipRe(list []string) *regexp.Regexp {
	if len(list) == 0 {
		return nil
	}
	return re(strings.Join(list, "|"))
}

// skipAll are the frames no title names (matched anywhere in the name):
// sanitizers and reporting, panic and traps, allocators and page cache
// lookups, locks, atomics and bit operations, wakeups and waits, string,
// memory and user-copy helpers, lists and trees, printk and friends,
// workqueue and timer plumbing, device and kobject teardown, MMIO
// accessors, arm64 fault entry, and a few wrappers that are never the
// bug (iput, dput, put_device ...).
var skipAll = re(strings.Join([]string{
	// sanitizers, reporting, traps
	`__sanitizer`, `__asan`, `kasan`, `hwasan`, `__msan`, `kmsan`, `kcsan_setup_watchpoint`,
	`check_memory_region`, `check_heap_object`, `check_object`, `read_word_at_a_time`, `(?:read|write)_once_.*nocheck`,
	`print_address_description`, `panic`, `invalid_op`, `report_bug`, `fixup_bug`, `print_report`, `print_usage_bug`,
	`do_error`, `_trap$|do_trap`, `show_stack`, `dump_stack`, `walk_stack`, `dump_backtrace`,
	`warn_slowpath`, `warn_alloc`, `warn_bogus`, `__warn`, `print_tainted`, `^get_taint$`, `__fortify_report`,
	`program_check_exception`, `program_check_common`, `assertfail`,
	// allocators, page cache
	`alloc_page`, `k?v?(?:m|z|c)alloc`, `krealloc`, `kmem_cache`, `allocate_slab`, `__alloc_frozen_pages_noprof`,
	`folio_(?:alloc|unlock)`, `filemap_alloc_folio`, `__filemap_get_folio`, `find_or_create_page`, `do_read_cache_folio`,
	`read_cache_page`, `pagecache_get_page`, `grab_cache_page_write_begin`, `slab_`, `^kv?free$`, `kfree_skb`,
	`xas_(?:start|load|find)`, `find_lock_entries`, `truncate_inode_pages_range`, `__phys_addr`, `mark_buffer_dirty`,
	`^(?:un)?lock_page`,
	// debug objects, lockdep, locks
	`debug_object`, `timer_is_static_object`, `work_is_static_object`, `__might_fault`, `might_fault`, `might_sleep`,
	`__might_resched`, `print_unlock`, `imbalance_bug`, `lockdep`, `bh_enable`, `bh_disable`, `perf_trace`,
	`lock_acquire`, `lock_release`, `lock_class`, `mark_lock`, `(?:reacquire|mark)_held_locks`, `(?:trace|lockdep)_(?:hard|soft)irq`,
	`raw_spin_rq`, `spin_lock`, `spin_trylock`, `spin_unlock`, `read_lock`, `read_trylock`, `write_lock`, `write_trylock`,
	`read_unlock`, `write_unlock`, `^down$`, `down_read`, `down_write`, `down_trylock`, `up_read`, `up_write`,
	`^mutex_`, `^__mutex_`, `^rt_mutex_`, `owner_on_cpu`, `osq_lock`, `osq_unlock`, `seqprop_assert`,
	// atomics, refcounts, wakeups
	`atomic(?:64)?_(?:dec|inc|read|set|or|xor|and|add|sub|fetch|xchg|cmpxchg|try)`, `(?:set|clear|change|test)_bit`,
	`__wake_up`, `^refcount_`, `^kref_`, `ref_tracker`, `^complete$`, `wait_for_completion`, `finish_wait`,
	// memory, string, user copies
	`memcpy`, `memcmp`, `memset`, `memchr`, `memmove`, `memdup`,
	`strcmp`, `strncmp`, `strcpy`, `strlcpy`, `strncpy`, `strscpy`, `strlen`, `strstr`, `strnstr`, `strnlen`, `strchr`, `strdup`, `strndup`,
	`copy_to_user`, `copy_from_user`, `copy_to_iter`, `copy_from_iter`, `copy_page_to_iter`, `copy_page_from_iter`,
	`copy_folio_to_iter`, `^copyin$`, `^copyout$`, `put_user`, `get_user`, `extract_(?:user|iter)_to_sg`,
	// lists, trees, hashes, checksums
	`list_add`, `list_del`, `list_replace`, `list_move`, `list_splice`, `^rb_`, `^__rb_`, `^klist_`, `rhashtable_lookup`,
	`^crc\d+`, `crc_itu_t`,
	// printing
	`_indirect_thunk_`, `string`, `pointer`, `snprintf`, `scnprintf`, `kasprintf`, `kvasprintf`, `printk`, `va_format`,
	`dev_info`, `dev_notice`, `dev_warn`, `dev_err`, `dev_alert`, `dev_crit`, `dev_emerg`, `hex_dump_to_buffer`, `print_hex_dump`,
	// workqueues, timers
	`del_timer`, `flush_work`, `__cancel_work_timer`, `cancel_work_sync`, `try_to_grab_pending`, `flush_workqueue`,
	`drain_workqueue`, `destroy_workqueue`, `queue_work`, `insert_work`, `__queue_delayed_work`, `queue_delayed_work_on`,
	`kthread_stop`, `lock_timer_base`, `__timer_delete_sync`, `sk_stop_timer_sync`, `__mod_timer`, `cleanup_srcu_struct`,
	// devices, kobjects, teardown
	`kobject_`, `add_uevent_var`, `get_device_parent`, `device_add`, `device_del`, `device_unregister`, `device_destroy`,
	`device_release`, `devres_release_all`, `hwrng_unregister`, `i2c_del_adapter`, `__unregister_client`,
	`device_for_each_child`, `rollback_registered`, `unregister_netdev`, `sysfs_remove`, `device_remove_file`,
	`tty_unregister_device`, `dummy_urb_enqueue`, `usb_kill_urb`, `usb_kill_anchored_urbs`, `usb_control_msg`,
	`usb_hcd_submit_urb`, `usb_submit_urb`, `^put_device$`, `ida_free`, `drop_nlink`,
	`^iput$`, `^iput_final$`, `^ihold$`, `fast_dput`, `dput`,
	// MMIO and port accessors
	`readb$`, `readw$`, `readl$`, `readq$`, `writeb$`, `writew$`, `writel$`, `writeq$`, `logic_in`, `logic_out`,
	// stack walking
	`stack_trace_consume_entry`, `arch_stack_walk`, `stack_trace_save`,
	// arm64 fault entry
	`do_(?:kernel|translation)_fault`, `do_mem_abort`, `el1_abort`, `el1h_64_sync(?:_handler)?`,
}, "|"))

// syscallPrefixes are cut from frame names ("__x64_sys_ioctl" is
// "sys_ioctl", "__do_sys_mount" is "mount"): the shortest result wins.
var syscallPrefixes = []string{"SYSC_", "SyS_", "sys_", "__x64_", "__ia32_", "__arm64_", "____sys_", "___sys_",
	"__sys_", "__se_", "__se_sys_", "__do_sys_", "compat_SYSC_", "compat_SyS_", "ksys_"}

// demangle reduces a C++ name ("_Z8fakeNameiii", "_ZN2ns4funcEv") to its
// qualified function name without parameters; other names stay as they are.
func demangle(f string) string {
	if !strings.HasPrefix(f, "_Z") {
		return f
	}
	rest := f[2:]
	nested := strings.HasPrefix(rest, "N")
	if nested {
		rest = rest[1:]
	}
	var parts []string
	for rest != "" && rest[0] >= '0' && rest[0] <= '9' {
		n, i := 0, 0
		for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
			n = n*10 + int(rest[i]-'0')
			i++
		}
		if n == 0 || i+n > len(rest) {
			return f
		}
		parts = append(parts, rest[i:i+n])
		rest = rest[i+n:]
		if !nested {
			break
		}
	}
	if len(parts) == 0 || nested && !strings.HasPrefix(rest, "E") {
		return f
	}
	return strings.Join(parts, "::")
}

func stripSyscall(f string) string {
	best := f
	for _, p := range syscallPrefixes {
		if t := strings.TrimPrefix(f, p); len(t) < len(best) {
			best = t
		}
	}
	return best
}

// frame finds the guilty frame in lines (the report from its header on,
// without frames the unwinder is unsure of); "" when there is none.
func (g *guilty) frame(lines []string) string {
	f := g.walk(g.path, lines)
	if f == "" && g.alt != nil {
		f = g.walk(g.alt, lines)
	}
	if f == "" && g.fallback != nil {
		f = g.fallback.frame(lines)
	}
	return f
}

func (g *guilty) walk(steps []step, lines []string) string {
	var frames []string
	add := func(m []string) {
		for _, f := range m[1:] {
			if f == "" {
				continue
			}
			f = demangle(f)
			if (g.skip == neverSkip) || (!skipAll.MatchString(f) && (g.skip == nil || !g.skip.MatchString(f))) {
				frames = append(frames, stripSyscall(f))
			}
		}
	}
	i := 0
	for si := 0; si < len(steps); si++ {
		st := steps[si]
		if st.re != nil {
			for ; i < len(lines); i++ {
				if m := st.re.FindStringSubmatch(lines[i]); m != nil {
					add(m)
					i++
					break
				}
			}
			continue
		}
		var next *regexp.Regexp
		if si+1 < len(steps) {
			next = steps[si+1].re
		}
	stack:
		for ; i < len(lines); i++ {
			l := lines[i]
			switch {
			case stackStartRe.MatchString(l):
				i++
				break stack
			case next != nil && next.MatchString(l):
				add(next.FindStringSubmatch(l))
				si++
				i++
				break stack
			}
			if m := stackFrameRe.FindStringSubmatch(l); m != nil {
				add(m)
			}
		}
	}
	if len(frames) == 0 {
		return ""
	}
	if g.pick != nil {
		return g.pick(frames)
	}
	return frames[0]
}

// stallAnchors are the frames through which work reaches the code that
// loops: syscall and interrupt entries, workqueue, timer and softirq
// dispatch, kthreads, and the VFS, socket and mmap calls that still say
// which file or protocol it was. A stall is named by the frame just
// above the first anchor: the loop's own code varies from report to
// report, its caller does not.
var stallAnchors = re(strings.Join([]string{
	`process_one_work`, `do_syscall_`, `do_fast_syscall_`, `sysenter_dispatch`, `tracesys_phase2`, `el0_svc_handler`,
	`invoke_syscall`, `ret_fast_syscall`, `netif_receive_skb`, `do_softirq`, `call_timer_fn`, `_run_timers`,
	`run_timer_softirq`, `hrtimer_run`, `run_ksoftirqd`, `smpboot_thread_fn`, `^kthread$`, `start_secondary`,
	`cpu_startup_entry`, `ret_from_fork`,
	`vfs_write`, `vfs_read`, `vfs_iter_read`, `vfs_iter_write`, `do_iter_read`, `do_iter_write`, `call_read_iter`,
	`call_write_iter`, `new_sync_read`, `new_sync_write`, `vfs_ioctl`, `ksys_ioctl`, `compat_ioctl`, `compat_sys_ioctl`,
	`blkdev_driver_ioctl`, `blkdev_ioctl`, `do_iter_readv_writev`, `^call_mmap`, `mmap_region`, `do_mmap`,
	`do_dentry_open`, `vfs_open`,
	`^sock_sendmsg`, `^sock_recvmsg`, `^sock_release`, `^__sock_release`, `^setsockopt$`, `kernel_setsockopt`,
	`sock_common_setsockopt`, `^listen$`, `kernel_listen`, `sk_common_release`, `^sock_mmap`, `^accept$`,
	`kernel_accept`, `^sock_do_ioctl`, `^sock_ioctl`, `^compat_sock_ioctl`, `^nfnetlink_rcv_msg`, `^rtnetlink_rcv_msg`,
	`^netlink_dump`, `^(?:sys_)?(?:socketpair|connect|ioctl)`,
	`__do_fault`, `do_page_fault`, `^page_fault$`,
	`__fput`, `task_work_run`, `exit_to_usermode`, `smp_call_function`, `tasklet_action`, `tasklet_hi_action`,
}, "|"))

func stallFrame(frames []string) string {
	prev := frames[0]
	for _, f := range frames {
		if stallAnchors.MatchString(f) {
			if strings.Contains(f, "smp_call_function") {
				return "smp_call_function"
			}
			return prev
		}
		prev = f
	}
	return ""
}

// hungFrame names a hung task. Hangs show up at random victims of the
// real culprit: tasks stuck behind RCU or the RTNL lock are grouped under
// those; otherwise the first frame that is not sleeping or locking.
var hungSleepRe = re(`sched|_lock|_slowlock|down|rwsem|completion|kthread|wait|synchronize|context_switch|__switch_to|cancel_delayed_work|rcu_barrier`)

func hungFrame(frames []string) string {
	for _, f := range frames {
		switch {
		case strings.Contains(f, "rtnl_lock"):
			return f
		case strings.Contains(f, "synchronize_rcu"), strings.Contains(f, "synchronize_srcu"),
			strings.Contains(f, "synchronize_net"), strings.Contains(f, "synchronize_sched"):
			return "synchronize_rcu"
		}
	}
	for _, f := range frames {
		if !hungSleepRe.MatchString(f) {
			return f
		}
	}
	return ""
}
