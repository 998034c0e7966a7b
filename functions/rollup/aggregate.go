package rollup

import (
	"math"
	"slices"
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

// hist is a latency histogram. It starts sparse (sorted distinct bins and
// their counts: most minute groups hold a few calls) and turns dense (a
// count per bin from lo) once it holds more than sparseMax bins, so adding
// to a busy hour's group is an index, not a search and an insert. Latency
// 0 has bin math.MinInt32, far from the others: it is counted apart.
type hist struct {
	zero   int64
	bins   []int32
	counts []int64
	lo     int32
	dense  []int64
}

const sparseMax = 16

func (h *hist) add(bin int32) {
	switch {
	case bin == math.MinInt32:
		h.zero++
	case h.dense != nil:
		h.addDense(bin)
	default:
		i, found := slices.BinarySearch(h.bins, bin)
		if found {
			h.counts[i]++
			return
		}
		if len(h.bins) == sparseMax {
			h.toDense()
			h.addDense(bin)
			return
		}
		h.bins = slices.Insert(h.bins, i, bin)
		h.counts = slices.Insert(h.counts, i, 1)
	}
}

func (h *hist) toDense() {
	h.lo = h.bins[0]
	h.dense = make([]int64, h.bins[len(h.bins)-1]-h.lo+1)
	for i, b := range h.bins {
		h.dense[b-h.lo] = h.counts[i]
	}
	h.bins, h.counts = nil, nil
}

func (h *hist) addDense(bin int32) {
	if bin < h.lo {
		grown := make([]int64, int(h.lo-bin)+len(h.dense))
		copy(grown[h.lo-bin:], h.dense)
		h.dense, h.lo = grown, bin
	}
	for int(bin-h.lo) >= len(h.dense) {
		h.dense = append(h.dense, 0)
	}
	h.dense[bin-h.lo]++
}

// each calls f for every bin with calls, in bin order, and returns how
// many bins it visited.
func (h *hist) each(f func(bin int32, n int64)) int {
	n := 0
	if h.zero > 0 {
		f(math.MinInt32, h.zero)
		n++
	}
	for i, b := range h.bins {
		f(b, h.counts[i])
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
	l.hist.add(bin)
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
func (in *interner) put(c *copyBinary, id uint32) {
	if id == nullName {
		c.null()
		return
	}
	c.text(in.names[id])
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

// level is one rollup table's groups for one hour: the hour's and, for
// the claimed minutes of the slice being read, the minutes'.
type level struct {
	keys []wideDims // by group index
	idx  map[wideDims]int32
	hour []group
	// The slice's minute groups, in the order they were first seen.
	minuteIdx  map[minuteKey]int32
	minuteKeys []minuteKey
	minutes    []group
}

type minuteKey struct {
	minute int32 // minutes since the hour
	dim    int32
}

func newLevel() *level {
	return &level{idx: map[wideDims]int32{}, minuteIdx: map[minuteKey]int32{}}
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
	return i
}

func (l *level) add(i int32, minute int32, claimed bool, c *rawCall) {
	l.hour[i].add(c)
	if !claimed {
		return
	}
	k := minuteKey{minute, i}
	j, ok := l.minuteIdx[k]
	if !ok {
		j = int32(len(l.minutes))
		l.minuteIdx[k] = j
		l.minuteKeys = append(l.minuteKeys, k)
		l.minutes = append(l.minutes, group{})
	}
	l.minutes[j].add(c)
}

// takeMinutes calls f for each minute group of the slice, by minute, and
// forgets them.
func (l *level) takeMinutes(f func(k minuteKey, g *group)) {
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
	for _, i := range order {
		f(l.minuteKeys[i], &l.minutes[i])
	}
	clear(l.minuteIdx)
	l.minuteKeys, l.minutes = l.minuteKeys[:0], l.minutes[:0]
}

// hourAgg aggregates one hour's raw rows into the wide and the per-proxy
// rollups. Rows arrive in slices of the hour (recompute.go): the minute
// groups of a slice are taken (takeMinutes) before the next slice, so
// memory holds one slice's minute groups and the hour's groups.
type hourAgg struct {
	names   *interner
	claimed [60]bool
	wide    *level
	proxy   *level
	// proxyIdx maps a wide group index to its per-proxy group index.
	proxyIdx []int32
}

func newHourAgg(names *interner, claimedMinutes []int) *hourAgg {
	a := &hourAgg{names: names, wide: newLevel(), proxy: newLevel()}
	for _, m := range claimedMinutes {
		a.claimed[m] = true
	}
	return a
}

// add counts one raw call of dimensions d, minute minutes after the hour.
func (a *hourAgg) add(d wideDims, minute int32, c *rawCall) {
	w := a.wide.index(d)
	if int(w) == len(a.proxyIdx) {
		a.proxyIdx = append(a.proxyIdx, a.proxy.index(d.proxyOf()))
	}
	claimed := a.claimed[minute]
	a.wide.add(w, minute, claimed, c)
	a.proxy.add(a.proxyIdx[w], minute, claimed, c)
}
