// Command ldt-stress runs one stress run of guest/stress inside the guest
// and prints its result as JSON: exit 0 when no write was lost, 1 when
// pages were lost, 2 when the run itself failed.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"ldtlab/guest/stress"
)

func main() {
	var o stress.Options
	var ags string
	flag.StringVar(&o.Tracker, "tracker", "ldt", "tracker: ldt, naive, pagemap-scan (softdirty's read-then-clear is not atomic: N/A)")
	flag.IntVar(&o.Pages, "pages", 16384, "working set in 4 KiB pages")
	flag.IntVar(&o.Writers, "writers", 0, "writer threads (0: one per CPU)")
	flag.DurationVar(&o.Duration, "duration", 10*time.Second, "how long writers and agitators run")
	flag.DurationVar(&o.Interval, "interval", 2*time.Millisecond, "pause between collections")
	flag.IntVar(&o.Epochs, "epochs", 0, "comparisons of the set with its shadow, the duration split evenly (0: one a second)")
	flag.Uint64Var(&o.Seed, "seed", uint64(time.Now().UnixNano()), "random seed")
	flag.BoolVar(&o.THP, "thp", false, "let the working set use transparent huge pages")
	flag.StringVar(&o.MTHP, "mthp", "", "enable this anonymous mTHP size for the run (16kB, 32kB, 64kB, ...; see /sys/kernel/mm/transparent_hugepage)")
	flag.StringVar(&ags, "agitators", "", "comma-separated agitators, or none (default: every one available); -list shows them")
	list := flag.Bool("list", false, "list the agitators and exit")
	flag.Parse()
	if *list {
		for _, a := range stress.Agitators() {
			fmt.Println(a)
		}
		return
	}
	if o.Tracker == "softdirty" {
		fmt.Fprintln(os.Stderr, "ldt-stress: softdirty is N/A: its read (pagemap) and clear (clear_refs) are separate steps, so writes between them are lost by design")
		os.Exit(2)
	}
	switch ags {
	case "":
	case "none":
		o.Agitators = []string{}
	default:
		o.Agitators = strings.Split(ags, ",")
	}
	res, err := stress.Run(o)
	if res != nil {
		b, _ := json.Marshal(res)
		fmt.Println(string(b))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ldt-stress:", err)
		os.Exit(2)
	}
	fmt.Fprintf(os.Stderr, "ldt-stress: %s: tracker %s, %d pages, %d writers, %d ms, %d writes, %d collections, %d pages copied, lost %d, agitators %v\n",
		res.Outcome(), res.Tracker, res.Pages, res.Writers, res.DurationMS, res.Writes, res.Collections, res.Copied, res.LostPages, res.Agitators)
	if res.LostPages > 0 {
		os.Exit(1)
	}
}
