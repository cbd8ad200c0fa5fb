package schemas

import (
	"math"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/taskselector/taskselector/internal/strictjson"
)

// Heartbeat fields in struct order: the order in which problems are
// reported, the same as DecodeHeartbeat's.
const (
	hbV = iota
	hbTaskID
	hbEpoch
	hbPID
	hbHost
	hbTarget
	hbType
	hbSeq
	hbRAM
	hbRAMBudget
	hbRAMUsed
	hbRAMFleet
	hbProgress
	hbSentAt
	hbCount
)

var hbPaths = [hbCount]string{
	"v", "task_id", "epoch", "pid", "host", "target", "type", "seq",
	"ram", "ram.budget_mib", "ram.used_mib", "ram.fleet_helpers_mib", "progress", "sent_at",
}

const hbRequired = (1<<hbCount - 1) &^ (1<<hbProgress | 1<<hbRAMFleet)

// hbDecoder holds the state of one DecodeHeartbeatInto call.
type hbDecoder struct {
	strictjson.Scanner
	n        Heartbeat // the heartbeat being decoded
	old      *Heartbeat
	present  uint16 // fields seen (the last occurrence counts)
	bad      uint16 // fields whose last occurrence has a problem
	problems [hbCount]string
	scratch  []byte
}

// DecodeHeartbeatInto decodes and validates a heartbeat into h, applying
// exactly the rules of DecodeHeartbeat, in one pass over b and without
// encoding/json. It is the selector's hot path.
//
// To save allocations it reuses h's previous values: a string field that
// decodes to the same value as the one already in h (the task_id, host,
// target and type of a task's successive heartbeats) keeps the old string,
// and so does a progress equal to the old one. A repeated heartbeat of the
// same task therefore decodes with no allocation, or one when its progress
// changed. h is left unchanged when an error is returned.
func DecodeHeartbeatInto(b []byte, h *Heartbeat) error {
	if len(b) > MaxMessageBytes {
		return tooLarge(nameHeartbeat, len(b), MaxMessageBytes)
	}
	d := hbDecoder{old: h}
	d.Reset(b)
	if err := d.run(); err != nil {
		return decodeError(nameHeartbeat, err)
	}
	if err := d.n.validate(); err != nil {
		return err
	}
	*h = d.n
	return nil
}

// run decodes the heartbeat into d.n. Its errors are *FieldError, or the
// Scanner's *strictjson.SyntaxError.
func (d *hbDecoder) run() error {
	if d.Peek() != '{' {
		// Not an object, or no input at all (Value reports the end of it).
		if _, err := d.Value(0); err != nil {
			return err
		}
		if err := d.End(); err != nil {
			return err
		}
		return fieldErr(nameHeartbeat, "", probNotJSONObj)
	}
	more, err := d.OpenObject()
	next := 0 // position in hbKeyOrder of the key expected next
	for more && err == nil {
		f := -1
		d.SkipSpace()
		// Fast path: the keys come in AppendHeartbeat's order, written
		// without escapes or spaces, so the next one is matched verbatim.
		for k := next; k < next+2 && k < len(hbKeyOrder); k++ {
			if lit := hbKeyOrder[k]; lit != "" && d.Consume(lit) {
				d.SkipSpace()
				f, next = k, k+1
				break
			}
		}
		if f < 0 {
			var key []byte
			if key, err = d.unescapedKey(); err != nil {
				return err
			}
			f = hbField(key)
			if f >= 0 {
				next = f + 1
			}
		}
		if err = d.field(f); err != nil {
			return err
		}
		more, err = d.Next('}')
	}
	if err != nil {
		return err
	}
	if err := d.End(); err != nil {
		return err
	}
	for f := range hbCount {
		bit := uint16(1) << f
		if d.bad&bit != 0 {
			return fieldErr(nameHeartbeat, hbPaths[f], d.problems[f])
		}
		if d.present&bit == 0 && hbRequired&bit != 0 {
			return fieldErr(nameHeartbeat, hbPaths[f], probMissing)
		}
	}
	return nil
}

// unescapedKey reads an object key and the colon after it, and returns the
// key with its escapes undone (into the scratch buffer) when it has any.
func (d *hbDecoder) unescapedKey() ([]byte, error) {
	key, fl, err := d.Key()
	if err != nil || fl&strictjson.Escaped == 0 {
		return key, err
	}
	d.scratch = strictjson.Unescape(d.scratch[:0], key)
	return d.scratch, nil
}

// see marks field f as seen, clearing the problem of an earlier occurrence.
func (d *hbDecoder) see(f int) {
	d.present |= 1 << f
	d.bad &^= 1 << f
}

func (d *hbDecoder) fail(f int, problem string) {
	d.bad |= 1 << f
	d.problems[f] = problem
}

// hbKeyOrder holds the top-level keys, as AppendHeartbeat writes them,
// indexed by field; the two ram fields are nested, so their entries are
// empty and skipped.
var hbKeyOrder = [...]string{
	hbV: `"v":`, hbTaskID: `"task_id":`, hbEpoch: `"epoch":`, hbPID: `"pid":`, hbHost: `"host":`,
	hbTarget: `"target":`, hbType: `"type":`, hbSeq: `"seq":`, hbRAM: `"ram":`,
	hbProgress: `"progress":`, hbSentAt: `"sent_at":`,
}

// hbField returns the field of a top-level key, or -1 for an unknown key.
func hbField(key []byte) int {
	switch string(key) {
	case "v":
		return hbV
	case "task_id":
		return hbTaskID
	case "epoch":
		return hbEpoch
	case "pid":
		return hbPID
	case "host":
		return hbHost
	case "target":
		return hbTarget
	case "type":
		return hbType
	case "seq":
		return hbSeq
	case "ram":
		return hbRAM
	case "progress":
		return hbProgress
	case "sent_at":
		return hbSentAt
	}
	return -1
}

// field decodes the value of top-level field f (-1 for an unknown key).
func (d *hbDecoder) field(f int) error {
	if f == hbRAM {
		return d.ram()
	}
	switch f {
	case hbEpoch, hbSeq, hbPID, hbV:
		if n, ok := d.PlainUint(); ok {
			d.see(f)
			switch f {
			case hbEpoch:
				d.n.Epoch = n
			case hbSeq:
				d.n.Seq = n
			case hbPID:
				d.check(f, intRange(n))
				d.n.PID = int64(n)
			case hbV:
				d.check(f, intRange(n))
				d.n.V = int(n)
			}
			return nil
		}
	}
	raw, fl, err := d.Raw(1)
	if err != nil || f < 0 {
		return err
	}
	d.see(f)
	if string(raw) == "null" {
		if f == hbProgress {
			d.n.Progress = nil
		} else {
			d.fail(f, probNull)
		}
		return nil
	}
	switch f {
	case hbV:
		n, p := strictjson.ParseUint(raw, math.MaxInt64)
		d.n.V = int(n)
		d.check(f, p)
	case hbTaskID:
		d.n.TaskID = d.str(f, raw, fl, d.old.TaskID)
	case hbEpoch:
		var p string
		d.n.Epoch, p = strictjson.ParseUint(raw, math.MaxUint64)
		d.check(f, p)
	case hbPID:
		n, p := strictjson.ParseUint(raw, math.MaxInt64)
		d.n.PID = int64(n)
		d.check(f, p)
	case hbHost:
		d.n.Host = d.str(f, raw, fl, d.old.Host)
	case hbTarget:
		d.n.Target = d.str(f, raw, fl, d.old.Target)
	case hbType:
		d.n.Type = d.str(f, raw, fl, d.old.Type)
	case hbSeq:
		var p string
		d.n.Seq, p = strictjson.ParseUint(raw, math.MaxUint64)
		d.check(f, p)
	case hbProgress:
		v, p := strictjson.ParseFloat(raw)
		if p != "" {
			d.fail(f, p)
			return nil
		}
		switch {
		case d.old.Progress != nil && math.Float64bits(*d.old.Progress) == math.Float64bits(v):
			d.n.Progress = d.old.Progress
		case d.n.Progress != nil && d.n.Progress != d.old.Progress:
			*d.n.Progress = v // allocated by an earlier duplicate key of this message
		default:
			pv := new(float64)
			*pv = v
			d.n.Progress = pv
		}
	case hbSentAt:
		if raw[0] != '"' {
			d.fail(f, probNotString)
			return nil
		}
		var t time.Time
		if err := t.UnmarshalJSON(raw); err != nil {
			d.fail(f, probNotTime)
			return nil
		}
		d.n.SentAt = t.UTC()
	}
	return nil
}

// hasLit consumes lit (a key with its quotes and colon, and any whitespace
// after it) when the input continues with it.
func (d *hbDecoder) hasLit(lit string) bool {
	if !d.Consume(lit) {
		return false
	}
	d.SkipSpace()
	return true
}

// intRange reports a value too large for an int64.
func intRange(n uint64) string {
	if n > math.MaxInt64 {
		return probOutOfRange
	}
	return ""
}

func (d *hbDecoder) check(f int, problem string) {
	if problem != "" {
		d.fail(f, problem)
	}
}

// str decodes a string field, returning old when the value equals it.
func (d *hbDecoder) str(f int, raw []byte, fl strictjson.Flags, old string) string {
	if raw[0] != '"' {
		d.fail(f, probNotString)
		return ""
	}
	s := raw[1 : len(raw)-1]
	if fl&strictjson.NonASCII != 0 && !utf8.Valid(s) {
		d.fail(f, probBadUTF8)
		return ""
	}
	if fl&strictjson.Escaped != 0 {
		d.scratch = strictjson.Unescape(d.scratch[:0], s)
		s = d.scratch
	}
	if string(s) == old {
		return old
	}
	return string(s)
}

// ram decodes the "ram" object. A repeated "ram" key replaces the earlier one.
func (d *hbDecoder) ram() error {
	d.n.RAM = HeartbeatRAM{}
	d.see(hbRAM)
	d.present &^= 1<<hbRAMBudget | 1<<hbRAMUsed | 1<<hbRAMFleet
	d.bad &^= 1<<hbRAMBudget | 1<<hbRAMUsed | 1<<hbRAMFleet
	if d.Peek() != '{' {
		// Not an object, or no input at all (Raw reports the end of it).
		raw, _, err := d.Raw(1)
		if err != nil {
			return err
		}
		if string(raw) == "null" {
			d.fail(hbRAM, probNull)
		} else {
			d.fail(hbRAM, probNotObject)
		}
		return nil
	}
	more, err := d.OpenObject()
	for more && err == nil {
		f := -1
		d.SkipSpace()
		switch {
		case d.hasLit(`"budget_mib":`):
			f = hbRAMBudget
		case d.hasLit(`"used_mib":`):
			f = hbRAMUsed
		case d.hasLit(`"fleet_helpers_mib":`):
			f = hbRAMFleet
		default:
			var key []byte
			if key, err = d.unescapedKey(); err != nil {
				return err
			}
			switch string(key) {
			case "budget_mib":
				f = hbRAMBudget
			case "used_mib":
				f = hbRAMUsed
			case "fleet_helpers_mib":
				f = hbRAMFleet
			}
		}
		var raw []byte
		if raw, _, err = d.Raw(2); err != nil {
			return err
		}
		if f >= 0 {
			d.see(f)
			switch {
			case string(raw) == "null" && f == hbRAMFleet:
				// An optional field: null is the same as absent.
				d.n.RAM.FleetHelpersMiB = 0
			case string(raw) == "null":
				d.fail(f, probNull)
			default:
				n, p := strictjson.ParseUint(raw, math.MaxInt64)
				d.check(f, p)
				switch f {
				case hbRAMBudget:
					d.n.RAM.BudgetMiB = int64(n)
				case hbRAMUsed:
					d.n.RAM.UsedMiB = int64(n)
				default:
					d.n.RAM.FleetHelpersMiB = int64(n)
				}
			}
		}
		more, err = d.Next('}')
	}
	return err
}

// AppendHeartbeat appends the JSON encoding of h to dst and returns the
// extended slice; with enough capacity in dst it does not allocate. It writes
// "v": Version when h.V is zero, the time in UTC as RFC 3339 with
// nanoseconds, and omits a nil progress. It does not validate h: call
// h.Validate first when h may be invalid (a non-finite progress, which JSON
// cannot represent, is omitted; invalid UTF-8 in a name is written as
// U+FFFD).
func AppendHeartbeat(dst []byte, h *Heartbeat) []byte {
	v := h.V
	if v == 0 {
		v = Version
	}
	dst = append(dst, `{"v":`...)
	dst = strconv.AppendInt(dst, int64(v), 10)
	dst = append(dst, `,"task_id":`...)
	dst = appendJSONString(dst, h.TaskID)
	dst = append(dst, `,"epoch":`...)
	dst = strconv.AppendUint(dst, h.Epoch, 10)
	dst = append(dst, `,"pid":`...)
	dst = strconv.AppendInt(dst, h.PID, 10)
	dst = append(dst, `,"host":`...)
	dst = appendJSONString(dst, h.Host)
	dst = append(dst, `,"target":`...)
	dst = appendJSONString(dst, h.Target)
	dst = append(dst, `,"type":`...)
	dst = appendJSONString(dst, h.Type)
	dst = append(dst, `,"seq":`...)
	dst = strconv.AppendUint(dst, h.Seq, 10)
	dst = append(dst, `,"ram":{"budget_mib":`...)
	dst = strconv.AppendInt(dst, h.RAM.BudgetMiB, 10)
	dst = append(dst, `,"used_mib":`...)
	dst = strconv.AppendInt(dst, h.RAM.UsedMiB, 10)
	if h.RAM.FleetHelpersMiB != 0 {
		dst = append(dst, `,"fleet_helpers_mib":`...)
		dst = strconv.AppendInt(dst, h.RAM.FleetHelpersMiB, 10)
	}
	dst = append(dst, '}')
	if p := h.Progress; p != nil && !math.IsNaN(*p) && !math.IsInf(*p, 0) {
		dst = append(dst, `,"progress":`...)
		dst = appendJSONFloat(dst, *p)
	}
	dst = append(dst, `,"sent_at":"`...)
	dst = h.SentAt.UTC().AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, `"}`...)
	return dst
}

// appendJSONFloat writes a finite float the way encoding/json does: plain
// decimal notation for ordinary magnitudes, exponent notation otherwise.
func appendJSONFloat(dst []byte, f float64) []byte {
	format := byte('f')
	if a := math.Abs(f); a != 0 && (a < 1e-6 || a >= 1e21) {
		format = 'e'
	}
	return strconv.AppendFloat(dst, f, format, -1, 64)
}

const hexDigits = "0123456789abcdef"

// appendJSONString writes s as a JSON string: quotes, backslashes and
// control characters are escaped, as are U+2028 and U+2029; invalid UTF-8
// becomes U+FFFD.
func appendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i++
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
