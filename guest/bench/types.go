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
	Rep        int    `json:"rep"`
	WriteNS    int64  `json:"write_ns"`
	CollectNS  int64  `json:"collect_ns"`
	Written    int    `json:"written_pages"`
	Collected  int    `json:"collected_pages"`
	HugeKB     int    `json:"anon_huge_kb"` // AnonHugePages of the region after the run
}

// WriteOnly is figure 1.
type WriteOnly struct {
	SizesMiB []int         `json:"sizes_mib"`
	Reps     int           `json:"reps"`
	THP      string        `json:"thp_setting"`
	Samples  []WriteSample `json:"samples"`
}

// TimelineSample is one timeline run of one tracker: operations finished
// and pages collected in each interval.
type TimelineSample struct {
	Tracker   string  `json:"tracker"`
	Rep       int     `json:"rep"`
	Ops       []int64 `json:"ops"`
	TickNS    []int64 `json:"tick_ns"`
	Collected []int   `json:"collected_pages"`
	CollectNS []int64 `json:"collect_ns"`
}

// Timeline is figure 2.
type Timeline struct {
	SizeMiB   int              `json:"size_mib"`
	TickMS    int              `json:"tick_ms"`
	Intervals int              `json:"intervals"`
	WritePct  int              `json:"write_pct"`
	OpBytes   int              `json:"op_bytes"`
	Reps      int              `json:"reps"`
	Samples   []TimelineSample `json:"samples"`
}

// RedisSample is one measurement window of redis-server under
// redis-benchmark load, with or without a checkpointer.
type RedisSample struct {
	Tracker    string  `json:"tracker"`
	IntervalMS int     `json:"interval_ms"` // checkpoint interval; 0 for none
	Rep        int     `json:"rep"`
	Seconds    float64 `json:"seconds"`
	Commands   int64   `json:"commands"`
	OpsPerSec  float64 `json:"ops_per_sec"`
	Rounds     int     `json:"rounds"`
	Pages      []int   `json:"pages_per_round"`
	AttachMS   int64   `json:"attach_ms"` // first (full) copy, outside the window
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

// CollectSample is one collect-and-clear of a region with a fraction of
// its pages written.
type CollectSample struct {
	Tracker   string  `json:"tracker"`
	DirtyPct  float64 `json:"dirty_pct"`
	Rep       int     `json:"rep"`
	NS        int64   `json:"ns"`
	Dirtied   int     `json:"dirtied_pages"`
	Collected int     `json:"collected_pages"`
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
