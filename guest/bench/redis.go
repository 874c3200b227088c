package bench

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const redisAddr = "127.0.0.1:6379"

// redisLoad is the load: redis-benchmark's SET and GET tests, 4 KiB
// values over the preloaded keys, two pipelined clients each, running
// for the whole figure.
func redisLoad(keys int) [][]string {
	var out [][]string
	for _, t := range []string{"set", "get"} {
		out = append(out, []string{"-p", "6379", "-q", "-t", t, "-n", "2000000000", "-r", strconv.Itoa(keys), "-d", "4096", "-c", "2", "-P", "4"})
	}
	return out
}

// commandsProcessed asks redis for total_commands_processed. It blocks
// while redis is stopped by the checkpointer, so a reading is always taken
// with redis running.
func commandsProcessed() (int64, error) {
	c, err := net.DialTimeout("tcp", redisAddr, 30*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := c.Write([]byte("INFO stats\r\n")); err != nil {
		return 0, err
	}
	r := bufio.NewReader(c)
	hdr, err := r.ReadString('\n')
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(hdr, "$")))
	if err != nil || !strings.HasPrefix(hdr, "$") {
		return 0, fmt.Errorf("unexpected INFO reply %q", hdr)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return 0, err
	}
	for _, l := range bytes.Split(body, []byte("\r\n")) {
		if v, ok := bytes.CutPrefix(l, []byte("total_commands_processed:")); ok {
			return strconv.ParseInt(string(v), 10, 64)
		}
	}
	return 0, errors.New("INFO stats lacks total_commands_processed")
}

func rssKiB(pid int) int {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return n
		}
	}
	return 0
}

// RunRedis is figure 3: redis-server under redis-benchmark load, its
// throughput (commands processed per second, counted by the server) over
// a fixed window with no tracking and with an incremental checkpointer
// (guest/checkpoint, in a child process: self -checkpointer ...)
// collecting every interval. The checkpointer's first round copies all of
// redis once; the window starts after it.
func RunRedis(p Plan, self string, progress io.Writer) (_ *Redis, err error) {
	res := &Redis{Keys: p.RedisKeys, ValueBytes: 4096, WindowS: p.RedisWindow.Seconds(), Reps: p.RedisReps,
		Unsupported: map[string]string{}}
	for _, iv := range p.RedisIntervals {
		res.IntervalsMS = append(res.IntervalsMS, int(iv/time.Millisecond))
	}
	for _, a := range redisLoad(p.RedisKeys) {
		res.Load += "redis-benchmark " + strings.Join(a, " ") + "; "
	}
	srv := exec.Command("redis-server", "--port", "6379", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no")
	if err := srv.Start(); err != nil {
		return nil, fmt.Errorf("starting redis-server: %w", err)
	}
	pid := srv.Process.Pid
	var loaders []*exec.Cmd
	defer func() {
		syscall.Kill(pid, syscall.SIGCONT)
		for _, l := range loaders {
			l.Process.Kill()
			l.Wait()
		}
		srv.Process.Kill()
		srv.Wait()
	}()
	up := false
	for i := 0; i < 200 && !up; i++ {
		_, cerr := commandsProcessed()
		up = cerr == nil
		if !up {
			time.Sleep(100 * time.Millisecond)
		}
	}
	if !up {
		return nil, errors.New("redis-server did not answer within 20 s")
	}
	pre := exec.Command("redis-benchmark", "-p", "6379", "-q", "-t", "set", "-n", strconv.Itoa(p.RedisKeys), "-r", strconv.Itoa(p.RedisKeys), "-d", "4096", "-P", "16")
	if out, err := pre.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("preloading redis: %v: %s", err, out)
	}
	for _, a := range redisLoad(p.RedisKeys) {
		l := exec.Command("redis-benchmark", a...)
		if err := l.Start(); err != nil {
			return nil, fmt.Errorf("starting redis-benchmark: %w", err)
		}
		loaders = append(loaders, l)
	}
	time.Sleep(p.RedisWindow / 4) // let the load settle
	res.RSSKiB = rssKiB(pid)
	logf(progress, "redis: pid %d, %d keys of 4 KiB, RSS %d MiB, load running", pid, p.RedisKeys, res.RSSKiB>>10)

	type cell struct {
		tracker string
		iv      time.Duration
	}
	var cells []cell
	for _, tr := range p.Trackers {
		switch tr {
		case "none":
			cells = append(cells, cell{tr, 0})
		case "pagemap-scan":
			res.Unsupported[tr] = "PAGEMAP_SCAN's write-protection is a userfaultfd registered by the tracked process itself; an external checkpointer cannot arm it in redis-server"
		default:
			for _, iv := range p.RedisIntervals {
				cells = append(cells, cell{tr, iv})
			}
		}
	}
	for rep := p.FirstRep; rep < p.FirstRep+p.RedisReps; rep++ {
		for seq, i := range p.order("redis", rep, len(cells)) {
			c := cells[i]
			s, err := redisWindow(self, pid, c.tracker, c.iv, p.RedisWindow)
			if err != nil {
				return nil, fmt.Errorf("redis %s every %s: %w", c.tracker, c.iv, err)
			}
			s.Rep, s.Seq = rep, seq
			res.Samples = append(res.Samples, s)
			logf(progress, "redis rep %d %-10s every %-4s %8.0f ops/s, %d rounds", rep, c.tracker, c.iv, s.OpsPerSec, s.Rounds)
			// Let what the checkpointer left (write-protected PTEs of
			// soft-dirty) wash out before the next window.
			time.Sleep(p.RedisWindow / 8)
		}
	}
	return res, nil
}

func redisWindow(self string, pid int, tr string, iv, window time.Duration) (RedisSample, error) {
	s := RedisSample{Tracker: tr, IntervalMS: int(iv / time.Millisecond)}
	if tr == "none" {
		c0, err := commandsProcessed()
		if err != nil {
			return s, err
		}
		k0 := counters(pid)
		t0 := time.Now()
		time.Sleep(window)
		s.Counts = counters(pid).since(k0)
		c1, err := commandsProcessed()
		if err != nil {
			return s, err
		}
		s.Seconds, s.Commands = time.Since(t0).Seconds(), c1-c0
		s.OpsPerSec = float64(s.Commands) / s.Seconds
		return s, nil
	}
	cmd := exec.Command(self, "-checkpointer", "-tracker", tr, "-pid", strconv.Itoa(pid), "-interval", iv.String())
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return s, err
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return s, err
	}
	attached := make(chan struct{})
	lines := make(chan []string, 1)
	exited := make(chan struct{})
	go func() {
		var all []string
		sc := bufio.NewScanner(stderr)
		once := false
		for sc.Scan() {
			l := sc.Text()
			all = append(all, l)
			if !once && strings.Contains(l, "] attached:") {
				once = true
				close(attached)
			}
		}
		close(exited)
		lines <- all
	}()
	kill := func() []string {
		cmd.Process.Kill()
		out := <-lines
		cmd.Wait()
		syscall.Kill(pid, syscall.SIGCONT)
		return out
	}
	select {
	case <-attached:
	case <-exited:
		out := kill()
		return s, fmt.Errorf("checkpointer exited before attaching: %s", strings.Join(out, " | "))
	case <-time.After(2 * time.Minute):
		out := kill()
		return s, fmt.Errorf("checkpointer did not attach within 2 minutes: %s", strings.Join(out, "\n"))
	}
	s.AttachMS = time.Since(start).Milliseconds()
	c0, err := commandsProcessed()
	if err != nil {
		kill()
		return s, err
	}
	k0 := counters(pid)
	t0 := time.Now()
	time.Sleep(window)
	out := kill()
	s.Counts = counters(pid).since(k0)
	c1, err := commandsProcessed()
	if err != nil {
		return s, err
	}
	s.Seconds, s.Commands = time.Since(t0).Seconds(), c1-c0
	s.OpsPerSec = float64(s.Commands) / s.Seconds
	for _, l := range out {
		// "[checkpoint/ldt pid N] round I: P pages reported, image M pages"
		_, rest, ok := strings.Cut(l, "] round ")
		if !ok {
			continue
		}
		var i, n int
		if _, err := fmt.Sscanf(rest, "%d: %d pages reported", &i, &n); err == nil {
			s.Pages = append(s.Pages, n)
		}
	}
	s.Rounds = len(s.Pages)
	if strings.Contains(strings.Join(out, "\n"), "ldt-bench: checkpointer:") {
		return s, fmt.Errorf("checkpointer failed: %s", strings.Join(out, "\n"))
	}
	return s, nil
}
