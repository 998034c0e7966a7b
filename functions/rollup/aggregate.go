package rollup

import (
	"math"
	"slices"
	"time"

	"apigee-timescale/shared/copybinary"
)

// This file is the refresh's aggregation stage: raw rows in, rollup groups
// out, in the function's memory. PostgreSQL's part of a refresh is then one
// index range scan per slice of an hour and the inserts of the groups
// (recompute.go); the sort of every raw row by nine keys that a GROUP BY
// needs, and the per-group array_agg sorts of the latency bins, are gone.
// Groups are found by hashing: each distinct set of dimensions seen in an
// hour gets a small integer once, and the minute and hour groups of every
// rollup table are indexed by it.

// binBase is latency_hist_bin's ratio between bin edges (migration 00010):
// computed at run time in float64, as PostgreSQL computes
// 1.01::float8 / 0.99::float8, so the two functions divide by the same
// ln(binBase); TestLatencyBinMatchesSQL checks every bin edge.
var binBase = math.Log(float64(1.01) / float64(0.99))

// latencyBin is apigee.latency_hist_bin for a non-negative integer latency.
func latencyBin(v int32) int32 {
	if v <= 0 {
		return math.MinInt32
	}
	return int32(math.Ceil(math.Log(float64(v)) / binBase))
}

// hist is a latency histogram. It starts sparse (sorted distinct bins
// with their counts: most minute groups hold a few calls) and turns dense
// (a count per bin from lo) once it holds more than sparseMax bins, so
// adding to a busy hour's group is an index, not a search and an insert.
// Latency 0 has bin math.MinInt32, far from the others: it is counted
// apart.
type hist struct {
	zero   int64
	sparse []binCount
	lo     int32
	dense  []int64
}

type binCount struct {
	bin int32
	n   int64
}

const sparseMax = 48

// add counts n calls in bin.
func (h *hist) add(bin int32, n int64) {
	switch {
	case bin == math.MinInt32:
		h.zero += n
	case h.dense != nil:
		h.addDense(bin, n)
	default:
		i, found := slices.BinarySearchFunc(h.sparse, bin, func(e binCount, b int32) int { return int(e.bin) - int(b) })
		if found {
			h.sparse[i].n += n
			return
		}
		if len(h.sparse) == sparseMax {
			h.toDense()
			h.addDense(bin, n)
			return
		}
		if h.sparse == nil {
			h.sparse = make([]binCount, 0, 4)
		}
		h.sparse = slices.Insert(h.sparse, i, binCount{bin, n})
	}
}

func (h *hist) toDense() {
	h.lo = h.sparse[0].bin
	h.dense = make([]int64, h.sparse[len(h.sparse)-1].bin-h.lo+1)
	for _, e := range h.sparse {
		h.dense[e.bin-h.lo] = e.n
	}
	h.sparse = nil
}

func (h *hist) addDense(bin int32, n int64) {
	if bin < h.lo {
		grown := make([]int64, int(h.lo-bin)+len(h.dense))
		copy(grown[h.lo-bin:], h.dense)
		h.dense, h.lo = grown, bin
	}
	for int(bin-h.lo) >= len(h.dense) {
		h.dense = append(h.dense, 0)
	}
	h.dense[bin-h.lo] += n
}

// each calls f for every bin with calls, in bin order, and returns how
// many bins it visited.
func (h *hist) each(f func(bin int32, n int64)) int {
	n := 0
	if h.zero > 0 {
		f(math.MinInt32, h.zero)
		n++
	}
	for _, e := range h.sparse {
		f(e.bin, e.n)
		n++
	}
	for i, c := range h.dense {
		if c > 0 {
			f(h.lo+int32(i), c)
			n++
		}
	}
	return n
}

// latency is one latency column's aggregates over a group's calls that
// carried a value.
type latency struct {
	count, sum int64
	min, max   int32
	hist       hist
}

func (l *latency) add(v, bin int32) {
	if l.count == 0 || v < l.min {
		l.min = v
	}
	if l.count == 0 || v > l.max {
		l.max = v
	}
	l.count++
	l.sum += int64(v)
	l.hist.add(bin, 1)
}

// merge adds o's calls to l.
func (l *latency) merge(o *latency) {
	if o.count == 0 {
		return
	}
	if l.count == 0 || o.min < l.min {
		l.min = o.min
	}
	if l.count == 0 || o.max > l.max {
		l.max = o.max
	}
	l.count += o.count
	l.sum += o.sum
	o.hist.each(func(bin int32, n int64) { l.hist.add(bin, n) })
}

// group is one rollup row's aggregates.
type group struct {
	calls, errors, clientErrors int64
	s2xx, s3xx, s5xx            int64
	requestBytes, responseBytes int64
	total, target               latency
}

// rawCall is the part of a raw row the aggregates read.
type rawCall struct {
	status                  int16
	isError                 bool
	requestSize             int64
	responseSize            int64
	total, target           int32
	totalBin, targetBin     int32 // latencyBin of each, once per row
	hasTotal, hasTarget     bool
	hasRequest, hasResponse bool
}

// merge adds o's calls to g.
func (g *group) merge(o *group) {
	g.calls += o.calls
	g.errors += o.errors
	g.clientErrors += o.clientErrors
	g.s2xx += o.s2xx
	g.s3xx += o.s3xx
	g.s5xx += o.s5xx
	g.requestBytes += o.requestBytes
	g.responseBytes += o.responseBytes
	g.total.merge(&o.total)
	g.target.merge(&o.target)
}

func (g *group) add(c *rawCall) {
	g.calls++
	if c.isError || c.status >= 500 {
		g.errors++
	}
	switch {
	case c.status >= 200 && c.status <= 299:
		g.s2xx++
	case c.status >= 300 && c.status <= 399:
		g.s3xx++
	case c.status >= 400 && c.status <= 499:
		g.clientErrors++
	case c.status >= 500 && c.status <= 599:
		g.s5xx++
	}
	if c.hasRequest {
		g.requestBytes += c.requestSize
	}
	if c.hasResponse {
		g.responseBytes += c.responseSize
	}
	if c.hasTotal {
		g.total.add(c.total, c.totalBin)
	}
	if c.hasTarget {
		g.target.add(c.target, c.targetBin)
	}
}

// nullName is the interned id of SQL NULL; names start at 1.
const nullName = 0

// interner gives each distinct dimension value a small id, so group keys
// are fixed-size and a row's strings are hashed once each.
type interner struct {
	ids   map[string]uint32
	names []string
}

func newInterner() *interner {
	return &interner{ids: map[string]uint32{}, names: []string{""}}
}

// id returns b's id; nil (NULL) is nullName. The lookup does not allocate.
func (in *interner) id(b []byte) uint32 {
	if b == nil {
		return nullName
	}
	if id, ok := in.ids[string(b)]; ok {
		return id
	}
	id := uint32(len(in.names))
	s := string(b)
	in.ids[s] = id
	in.names = append(in.names, s)
	return id
}

// put writes id's value to a COPY row: NULL for nullName.
func (in *interner) put(c *copybinary.Writer, id uint32) {
	if id == nullName {
		c.Null()
		return
	}
	c.Text(in.names[id])
}

// wideDims are the eight dimensions of api_calls_1m/1h, as interned ids
// (status as itself).
type wideDims struct {
	tenant, organization, environment, apiproxy uint32
	apiProduct, developerApp, requestVerb       uint32
	status                                      int16
}

// proxyOf is the per-proxy rollups' dimensions (proxy_calls_1m/1h).
func (d wideDims) proxyOf() wideDims {
	return wideDims{tenant: d.tenant, organization: d.organization, environment: d.environment, apiproxy: d.apiproxy}
}

// appOf is the per-app rollups' dimensions (app_calls_1m/1h).
func (d wideDims) appOf() wideDims {
	return wideDims{tenant: d.tenant, organization: d.organization, environment: d.environment, developerApp: d.developerApp}
}

// level is one rollup table's groups for one hour: the hour's and the
// minutes' of the slice being read.
type level struct {
	keys []wideDims // by group index
	idx  map[wideDims]int32
	hour []group
	// The slice's minute groups, in the order they were first seen; slot
	// holds, per group index, each minute of the slice's group index + 1.
	slot       [][sliceMinutes]int32
	minuteKeys []minuteKey
	minutes    []group
}

// sliceMinutes is scanSlice in minutes; slices start at multiples of it.
const sliceMinutes = int(scanSlice / time.Minute)

type minuteKey struct {
	minute int32 // minutes since the hour
	dim    int32
}

func newLevel() *level {
	return &level{idx: map[wideDims]int32{}}
}

// index returns d's group index in the hour, adding it.
func (l *level) index(d wideDims) int32 {
	if i, ok := l.idx[d]; ok {
		return i
	}
	i := int32(len(l.keys))
	l.idx[d] = i
	l.keys = append(l.keys, d)
	l.hour = append(l.hour, group{})
	l.slot = append(l.slot, [sliceMinutes]int32{})
	return i
}

// add counts c in the minute group of group index i; takeMinutes adds the
// minute groups to the hour's (a minute group's few bins are merged once,
// instead of every call being counted twice).
func (l *level) add(i int32, minute int32, c *rawCall) {
	s := &l.slot[i][int(minute)%sliceMinutes]
	if *s == 0 {
		l.minuteKeys = append(l.minuteKeys, minuteKey{minute, i})
		l.minutes = append(l.minutes, group{})
		*s = int32(len(l.minutes))
	}
	l.minutes[*s-1].add(c)
}

// takeMinutes adds each minute group of the slice to its hour group and
// calls f for those of claimed minutes, by minute, until f fails; then it
// forgets them.
func (l *level) takeMinutes(claimed *[60]bool, f func(k minuteKey, g *group) error) error {
	order := make([]int32, len(l.minuteKeys))
	for i := range order {
		order[i] = int32(i)
	}
	slices.SortFunc(order, func(x, y int32) int {
		a, b := l.minuteKeys[x], l.minuteKeys[y]
		if a.minute != b.minute {
			return int(a.minute - b.minute)
		}
		return int(a.dim - b.dim)
	})
	var err error
	for _, i := range order {
		k, g := l.minuteKeys[i], &l.minutes[i]
		l.hour[k.dim].merge(g)
		if !claimed[k.minute] {
			continue
		}
		if err = f(k, g); err != nil {
			break
		}
	}
	for _, k := range l.minuteKeys {
		l.slot[k.dim][int(k.minute)%sliceMinutes] = 0
	}
	l.minuteKeys, l.minutes = l.minuteKeys[:0], l.minutes[:0]
	return err
}

// hourAgg aggregates one hour's raw rows into every rollup (rollups, in
// stage.go: levels[0] is the wide one, the others project its
// dimensions). Rows arrive in slices of the hour (recompute.go): the
// minute groups of a slice are taken (takeMinutes) before the next slice,
// so memory holds one slice's minute groups and the hour's groups.
type hourAgg struct {
	names   *interner
	claimed [60]bool
	levels  []*level
	// fromWide[i] maps a wide group index to its group index in levels[i].
	fromWide [][]int32
	// byRow maps a row's dimension columns, as rowKey encodes them, to
	// its wide group index: one hash per row instead of one per column.
	byRow map[string]int32
}

func newHourAgg(names *interner, claimedMinutes []int) *hourAgg {
	a := &hourAgg{names: names, byRow: map[string]int32{}, fromWide: make([][]int32, len(rollups))}
	for range rollups {
		a.levels = append(a.levels, newLevel())
	}
	for _, m := range claimedMinutes {
		a.claimed[m] = true
	}
	return a
}

// groupOf returns the wide group index of the row whose dimension columns
// encode to key, calling dims to decode them the first time.
func (a *hourAgg) groupOf(key []byte, dims func() wideDims) int32 {
	if w, ok := a.byRow[string(key)]; ok {
		return w
	}
	d := dims()
	w := a.levels[0].index(d)
	for i := 1; i < len(rollups); i++ {
		if int(w) == len(a.fromWide[i]) { // a new wide group
			a.fromWide[i] = append(a.fromWide[i], a.levels[i].index(rollups[i].project(d)))
		}
	}
	a.byRow[string(key)] = w
	return w
}

// add counts one raw call of wide group w, minute minutes after the hour.
func (a *hourAgg) add(w int32, minute int32, c *rawCall) {
	a.levels[0].add(w, minute, c)
	for i := 1; i < len(rollups); i++ {
		a.levels[i].add(a.fromWide[i][w], minute, c)
	}
}
