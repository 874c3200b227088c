// Package bench is the in-guest half of `labctl bench paper`: the four
// measurements of the LDT paper's evaluation (write-only runs, the 75/25
// throughput timeline, Redis under an incremental checkpointer, the cost
// of one collection), run for every tracker interleaved and repeated. Each
// figure prints one JSON object of the types below; the host side
// (orchestrator/paper) reads the same types, so the wire format has one
// definition.
package bench

// Trackers measured, baseline first. "none" runs the workload untracked.
var Trackers = []string{"none", "ldt", "softdirty", "pagemap-scan", "naive"}

// WriteSample is one write-only run: a populated region, tracking armed,
// every page written, then one collect-and-clear.
type WriteSample struct {
	Tracker    string `json:"tracker"`
	SizeMiB    int    `json:"size_mib"`
	THP        bool   `json:"thp"`
	WriteBytes int    `json:"write_bytes"` // per page: 4096 or 1
	// Store is how 4096 B are written: "copy" (Go's copy, the runtime's
	// memmove with wide vector stores) or "loop" (a plain loop of 8-byte
	// stores, as a C loop compiled without vectorisation); "" for 1 B.
	Store     string `json:"store,omitempty"`
	Rep       int    `json:"rep"`
	Seq       int    `json:"seq"` // position in its repetition's random order
	WriteNS   int64  `json:"write_ns"`
	CollectNS int64  `json:"collect_ns"`
	Written   int    `json:"written_pages"`
	Collected int    `json:"collected_pages"`
	Regions   int    `json:"regions"`      // regions the collection returned
	Syscalls  int64  `json:"syscalls"`     // system calls the collection issued
	HugeKB    int    `json:"anon_huge_kb"` // AnonHugePages of the region after the run
	// What the kernel did while the pages were written and while they
	// were collected.
	WriteCounts   Counts `json:"write_counts"`
	CollectCounts Counts `json:"collect_counts"`
}

// WriteOnly is figure 1.
type WriteOnly struct {
	SizesMiB []int         `json:"sizes_mib"`
	Reps     int           `json:"reps"`
	THP      string        `json:"thp_setting"`
	Samples  []WriteSample `json:"samples"`
}

// Collection is one collect-and-clear during a timeline run.
type Collection struct {
	Point    int    `json:"point"` // the 100 ms point it ended
	NS       int64  `json:"ns"`
	Pages    int    `json:"pages"`
	Regions  int    `json:"regions"`
	Syscalls int64  `json:"syscalls"`
	Counts   Counts `json:"counts"`
}

// TimelineSample is one timeline run of one tracker at one checkpoint
// interval: operations finished in each point (Timeline.PointMS long, as
// really measured) from the moment tracking started.
type TimelineSample struct {
	Tracker      string       `json:"tracker"`
	CheckpointMS int          `json:"checkpoint_ms"` // collect+clear every so often; 0 for none
	Rep          int          `json:"rep"`
	Seq          int          `json:"seq"`
	Ops          []int64      `json:"ops"`
	PointNS      []int64      `json:"point_ns"`
	Counts       []Counts     `json:"counts"` // per point, collections included
	Collections  []Collection `json:"collections"`
}

// Timeline is figure 2.
type Timeline struct {
	SizeMiB       int              `json:"size_mib"`
	PointMS       int              `json:"point_ms"`
	Points        int              `json:"points"`
	CheckpointsMS []int            `json:"checkpoints_ms"`
	WritePct      int              `json:"write_pct"`
	OpBytes       int              `json:"op_bytes"`
	Reps          int              `json:"reps"`
	Samples       []TimelineSample `json:"samples"`
}

// RedisSample is one measurement window of redis-server under
// redis-benchmark load, with or without a checkpointer.
type RedisSample struct {
	Tracker    string  `json:"tracker"`
	IntervalMS int     `json:"interval_ms"` // checkpoint interval; 0 for none
	Rep        int     `json:"rep"`
	Seq        int     `json:"seq"`
	Seconds    float64 `json:"seconds"`
	Commands   int64   `json:"commands"`
	OpsPerSec  float64 `json:"ops_per_sec"`
	Rounds     int     `json:"rounds"`
	Pages      []int   `json:"pages_per_round"`
	AttachMS   int64   `json:"attach_ms"` // first (full) copy, outside the window
	// Counts over the window: faults of redis-server, TLB work of the
	// whole guest (checkpointer and load included).
	Counts Counts `json:"counts"`
}

// Redis is figure 3.
type Redis struct {
	Keys        int               `json:"keys"`
	ValueBytes  int               `json:"value_bytes"`
	Load        string            `json:"load"`
	WindowS     float64           `json:"window_s"`
	IntervalsMS []int             `json:"intervals_ms"`
	Reps        int               `json:"reps"`
	RSSKiB      int               `json:"redis_rss_kib"`
	Unsupported map[string]string `json:"unsupported,omitempty"`
	Samples     []RedisSample     `json:"samples"`
}

// GUPSample is one registration of a just-collected region as an io_uring
// fixed buffer (see RunGUP).
type GUPSample struct {
	Tracker string `json:"tracker"`
	Rep     int    `json:"rep"`
	Seq     int    `json:"seq"`
	NS      int64  `json:"ns"` // IORING_REGISTER_BUFFERS of the whole region
	Pages   int    `json:"pages"`
	Counts  Counts `json:"counts"` // of the registration alone
}

// GUP is the GUP figure.
type GUP struct {
	SizeMiB int         `json:"size_mib"`
	Pages   int         `json:"pages"`
	Reps    int         `json:"reps"`
	Samples []GUPSample `json:"samples"`
}

// CollectSample is one collect-and-clear of a region with a fraction of
// its pages written.
type CollectSample struct {
	Tracker   string  `json:"tracker"`
	DirtyPct  float64 `json:"dirty_pct"`
	Rep       int     `json:"rep"`
	Seq       int     `json:"seq"`
	NS        int64   `json:"ns"`
	Dirtied   int     `json:"dirtied_pages"`
	Collected int     `json:"collected_pages"`
	Regions   int     `json:"regions"`
	Syscalls  int64   `json:"syscalls"`
	// SyscallNS is the part of NS spent inside those system calls: the
	// kernel's share, the rest is user space handling what they
	// returned. 0 in runs from before it was recorded, -1 when the
	// tracker does not time its calls.
	SyscallNS int64 `json:"syscall_ns,omitempty"`
	// PTEsVisited and PTEsChanged are the page table entries the kernel
	// decided on and rewrote (LDT's ioctl counts them since 0026; a PMD
	// leaf is one): absent in runs from before, -1 for a tracker or kernel
	// that does not count them. A collection of a populated region always
	// visits some, so PTEsVisited > 0 says both were counted.
	PTEsVisited int64  `json:"ptes_visited,omitempty"`
	PTEsChanged int64  `json:"ptes_changed,omitempty"`
	Counts      Counts `json:"counts"`
}

// Collect is figure 4.
type Collect struct {
	SizeMiB int       `json:"size_mib"`
	Pages   int       `json:"pages"`
	Reps    int       `json:"reps"`
	Pcts    []float64 `json:"dirty_pcts"`
	// ReadBandwidth is the guest's measured sequential read bandwidth,
	// bytes/s; the floor is the page table (PTEs and PMDs) of the region
	// read once at that speed.
	ReadBandwidth float64         `json:"read_bandwidth_bps"`
	TableBytes    int64           `json:"page_table_bytes"`
	FloorNS       float64         `json:"floor_ns"`
	Samples       []CollectSample `json:"samples"`
}
