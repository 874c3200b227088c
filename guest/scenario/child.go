package scenario

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"syscall"
)

// ChildSpec runs a scenario in a child process of its own — the memory
// cgroup scenario must not put the checker itself under memory.max.
type ChildSpec struct {
	// Setup prepares what the child runs in and returns an open fd of the
	// cgroup directory to start it in (CLONE_INTO_CGROUP) and a cleanup
	// that runs after the child exited, on every path.
	Setup func(e *Env) (cgroupFD int, cleanup func() error, err error)
}

// ChildArg as os.Args[1] makes a program run one cell as such a child:
// programs embedding the catalogue call MaybeChild first thing in main.
const ChildArg = "-scenario-child"

const childCfgEnv = "LDTLAB_SCENARIO_CHILD"

var inChild bool

type childCfg struct {
	Scenario string
	Config   Config
}

// MaybeChild runs the cell a parent asked for and exits when this process
// is such a child (or a scenario's helper process, PinHelperArg);
// otherwise it returns.
func MaybeChild() {
	if len(os.Args) >= 2 && os.Args[1] == PinHelperArg {
		os.Exit(pinHelperMain(os.Args[2:]))
	}
	if len(os.Args) < 2 || os.Args[1] != ChildArg {
		return
	}
	inChild = true
	var c childCfg
	if err := json.Unmarshal([]byte(os.Getenv(childCfgEnv)), &c); err != nil {
		fmt.Fprintln(os.Stderr, "scenario child: bad config:", err)
		os.Exit(2)
	}
	s, ok := Lookup(c.Scenario)
	if !ok {
		fmt.Fprintln(os.Stderr, "scenario child: unknown scenario", c.Scenario)
		os.Exit(2)
	}
	c.Config.Progress = os.Stderr
	res := RunCell(s, c.Config)
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		os.Exit(1)
	}
	os.Exit(0)
}

// runInChild re-executes this program as a child for s and takes its
// result.
func runInChild(s *Scenario, cfg Config, res *Result) {
	fail := func(format string, args ...any) {
		res.Outcome, res.AsExpected, res.Reason = Fail, false, fmt.Sprintf(format, args...)
	}
	e := &Env{Config: cfg, res: res}
	cgfd, cleanup, err := s.Child.Setup(e)
	if se, ok := err.(*SkipError); ok {
		res.Outcome, res.AsExpected, res.Reason = Skip, true, se.Reason
		return
	}
	if err != nil {
		fail("child setup: %v", err)
		return
	}
	defer func() {
		if err := cleanup(); err != nil {
			res.Notes = append(res.Notes, "cleanup: "+err.Error())
		}
	}()
	cc := cfg
	cc.Progress = nil
	js, err := json.Marshal(childCfg{Scenario: s.Name, Config: cc})
	if err != nil {
		fail("child config: %v", err)
		return
	}
	cmd := exec.Command("/proc/self/exe", ChildArg)
	cmd.Env = append(os.Environ(), childCfgEnv+"="+string(js))
	var out bytes.Buffer
	cmd.Stdout = &out
	if cfg.Progress != nil {
		cmd.Stderr = cfg.Progress
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if cgfd >= 0 {
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = cgfd
	}
	runErr := cmd.Run()
	notes := res.Notes
	var got Result
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		fail("child (%v) printed no result: %v", runErr, err)
		return
	}
	*res = got
	res.Notes = append(notes, res.Notes...)
}
