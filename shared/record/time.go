package record

import (
	"math"
	"time"
)

// receivedAt accepts RFC 3339 (any offset) and epoch milliseconds (a number
// or a string of digits) and returns UTC truncated to the millisecond.
func (p *parser) receivedAt(b []byte, v val) (time.Time, *Reject) {
	const name = "received_at"
	if v.absent() {
		return time.Time{}, p.missing(name, v)
	}
	var (
		t     time.Time
		ms    uint64
		epoch bool
		e     numErr
	)
	switch v.kind {
	case kindNumber:
		epoch = true
		ms, e = jsonUint(b[v.start:v.end])
	case kindString:
		s, rej := p.text(b, v, name, 0, true)
		if rej != nil {
			return time.Time{}, rej
		}
		if ms, e = digitsUint(s); e != numNotInteger {
			epoch = true
		} else {
			var ok bool
			if t, ok = parseRFC3339(s); !ok {
				return time.Time{}, invalid(name, "received_at %s is neither an RFC 3339 date-time (like 2024-05-01T12:00:00.123Z) nor epoch milliseconds", p.token(b, v))
			}
		}
	default:
		return time.Time{}, invalid(name, "received_at must be an RFC 3339 string or epoch milliseconds, got %s", v.kind)
	}
	if epoch {
		switch {
		case e == numNotInteger:
			return time.Time{}, invalid(name, "received_at %s is not a whole number of epoch milliseconds", p.token(b, v))
		case e == numNegative:
			return time.Time{}, invalid(name, "received_at %s is before %s", p.token(b, v), p.lim.MinReceivedAt.Format(time.RFC3339))
		case e == numTooLarge || ms > math.MaxInt64:
			return time.Time{}, invalid(name, "received_at %s is out of range", p.token(b, v))
		}
		t = time.UnixMilli(int64(ms)).UTC()
	}
	if t.Before(p.lim.MinReceivedAt) {
		hint := ""
		if epoch && ms > 0 && ms < math.MaxInt64/1000 && !time.UnixMilli(int64(ms)*1000).Before(p.lim.MinReceivedAt) {
			hint = " (epoch seconds where milliseconds are expected?)"
		}
		return time.Time{}, invalid(name, "received_at %s is before %s%s", p.token(b, v), p.lim.MinReceivedAt.Format(time.RFC3339), hint)
	}
	if limit := p.now.Add(p.lim.MaxFuture); t.After(limit) {
		hint := ""
		if epoch && ms >= 1e14 {
			hint = " (epoch micro- or nanoseconds where milliseconds are expected?)"
		}
		return time.Time{}, invalid(name, "received_at %s is more than %v in the future%s", p.token(b, v), p.lim.MaxFuture, hint)
	}
	return t, nil
}

func num2(s []byte, i int) (int, bool) {
	a, b := s[i], s[i+1]
	if a < '0' || a > '9' || b < '0' || b > '9' {
		return 0, false
	}
	return int(a-'0')*10 + int(b-'0'), true
}

func daysIn(month, year int) int {
	switch month {
	case 2:
		if year%4 == 0 && (year%100 != 0 || year%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}

// parseRFC3339 parses RFC 3339's date-time production exactly (as JSON
// Schema's "date-time" format does): 'T'/'t', 'Z'/'z', any number of
// fraction digits, and a leap second at 23:59:60 UTC, which becomes
// 23:59:59.999 because time.Time cannot represent it. Fractions are
// truncated to milliseconds.
func parseRFC3339(s []byte) (time.Time, bool) {
	if len(s) < 20 || s[4] != '-' || s[7] != '-' || (s[10] != 'T' && s[10] != 't') || s[13] != ':' || s[16] != ':' {
		return time.Time{}, false
	}
	y1, ok1 := num2(s, 0)
	y2, ok2 := num2(s, 2)
	month, ok3 := num2(s, 5)
	day, ok4 := num2(s, 8)
	hour, ok5 := num2(s, 11)
	minute, ok6 := num2(s, 14)
	sec, ok7 := num2(s, 17)
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6 && ok7) {
		return time.Time{}, false
	}
	year := y1*100 + y2
	if month < 1 || month > 12 || day < 1 || day > daysIn(month, year) || hour > 23 || minute > 59 || sec > 60 {
		return time.Time{}, false
	}
	i, ms := 19, 0
	if s[i] == '.' {
		i++
		j := i
		for j < len(s) && s[j] >= '0' && s[j] <= '9' {
			if j-i < 3 {
				ms = ms*10 + int(s[j]-'0')
			}
			j++
		}
		if j == i {
			return time.Time{}, false
		}
		for k := j - i; k < 3; k++ {
			ms *= 10
		}
		i = j
	}
	offset := 0 // minutes east of UTC
	switch {
	case len(s) == i+1 && (s[i] == 'Z' || s[i] == 'z'):
	case len(s) == i+6 && (s[i] == '+' || s[i] == '-') && s[i+3] == ':':
		oh, okh := num2(s, i+1)
		om, okm := num2(s, i+4)
		if !okh || !okm || oh > 23 || om > 59 {
			return time.Time{}, false
		}
		offset = oh*60 + om
		if s[i] == '-' {
			offset = -offset
		}
	default:
		return time.Time{}, false
	}
	if sec == 60 {
		if utcMin := ((hour*60+minute-offset)%1440 + 1440) % 1440; utcMin != 23*60+59 {
			return time.Time{}, false
		}
		sec, ms = 59, 999
	}
	t := time.Date(year, time.Month(month), day, hour, minute, sec, ms*int(time.Millisecond), time.UTC)
	return t.Add(-time.Duration(offset) * time.Minute), true
}
