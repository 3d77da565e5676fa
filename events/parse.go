package events

import (
	"encoding/json"
	"fmt"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// maxDepth is how deeply arrays and objects may nest, as in encoding/json.
const maxDepth = 10000

// parser decodes one JSON document in a single pass into the values
// encoding/json gives with UseNumber: map[string]any, []any, string,
// json.Number, bool and nil. It also records where each top-level member's
// value lies in the input, and whether the decoded values differ from the
// input in a way that matters for storing it (invalid UTF-8 or a lone
// surrogate became U+FFFD, a duplicate key dropped a value), so that
// unchanged members can be stored as they came.
type parser struct {
	data     []byte
	pos      int
	depth    int
	repaired bool
	// spans holds the input of each member of the top-level object.
	spans map[string][]byte
}

// ParseJSON decodes data, which must hold exactly one JSON value, into the
// values encoding/json gives with UseNumber (numbers are json.Number), at
// a fraction of its cost.
func ParseJSON(data []byte) (any, error) {
	v, _, err := parseJSON(data)
	return v, err
}

// parseJSON decodes data, which must hold exactly one JSON value.
func parseJSON(data []byte) (any, *parser, error) {
	p := &parser{data: data}
	p.skipSpace()
	v, err := p.value()
	if err != nil {
		return nil, nil, err
	}
	p.skipSpace()
	if p.pos < len(p.data) {
		return nil, nil, errTrailing
	}
	return v, p, nil
}

var errTrailing = fmt.Errorf("trailing data after the JSON value")

func (p *parser) errorf(format string, args ...any) error {
	return fmt.Errorf("offset %d: %s", p.pos, fmt.Sprintf(format, args...))
}

func (p *parser) skipSpace() {
	for p.pos < len(p.data) {
		switch p.data[p.pos] {
		case ' ', '\t', '\n', '\r':
			p.pos++
		default:
			return
		}
	}
}

func (p *parser) value() (any, error) {
	if p.pos >= len(p.data) {
		return nil, p.errorf("unexpected end of JSON input")
	}
	switch c := p.data[p.pos]; {
	case c == '{':
		return p.object()
	case c == '[':
		return p.array()
	case c == '"':
		s, err := p.string()
		if err != nil {
			return nil, err
		}
		return s, nil
	case c == '-' || c >= '0' && c <= '9':
		return p.number()
	case c == 't':
		return p.literal("true", true)
	case c == 'f':
		return p.literal("false", false)
	case c == 'n':
		return p.literal("null", nil)
	default:
		return nil, p.errorf("invalid character %q looking for beginning of value", c)
	}
}

func (p *parser) literal(word string, v any) (any, error) {
	if len(p.data)-p.pos < len(word) || string(p.data[p.pos:p.pos+len(word)]) != word {
		return nil, p.errorf("invalid literal, want %s", word)
	}
	p.pos += len(word)
	return v, nil
}

func (p *parser) enter() error {
	p.depth++
	if p.depth > maxDepth {
		return p.errorf("exceeded max depth")
	}
	return nil
}

func (p *parser) object() (any, error) {
	if err := p.enter(); err != nil {
		return nil, err
	}
	top := p.depth == 1
	p.pos++                      // {
	m := make(map[string]any, 8) // one group: most objects are small
	if p.closed('}') {
		return m, nil
	}
	for {
		if p.pos >= len(p.data) || p.data[p.pos] != '"' {
			return nil, p.errorf("want a string for an object key")
		}
		key, err := p.key()
		if err != nil {
			return nil, err
		}
		p.skipSpace()
		if p.pos >= len(p.data) || p.data[p.pos] != ':' {
			return nil, p.errorf("want ':' after an object key")
		}
		p.pos++
		p.skipSpace()
		start := p.pos
		v, err := p.value()
		if err != nil {
			return nil, err
		}
		if _, dup := m[key]; dup {
			// The input holds a value that decoding drops, which
			// PostgreSQL would still read: it cannot be stored as it came.
			p.repaired = true
		}
		m[key] = v
		if top {
			if p.spans == nil {
				p.spans = make(map[string][]byte)
			}
			p.spans[key] = p.data[start:p.pos]
		}
		if more, err := p.more('}'); !more {
			return m, err
		}
	}
}

func (p *parser) array() (any, error) {
	if err := p.enter(); err != nil {
		return nil, err
	}
	p.pos++ // [
	a := []any{}
	if p.closed(']') {
		return a, nil
	}
	for {
		v, err := p.value()
		if err != nil {
			return nil, err
		}
		a = append(a, v)
		if more, err := p.more(']'); !more {
			return a, err
		}
	}
}

// closed skips an empty container's space and its closing byte, if that
// is what follows.
func (p *parser) closed(closing byte) bool {
	p.skipSpace()
	if p.pos < len(p.data) && p.data[p.pos] == closing {
		p.pos++
		p.depth--
		return true
	}
	return false
}

// more reads what follows a member or element: a comma (more follows) or
// the container's closing byte.
func (p *parser) more(closing byte) (bool, error) {
	p.skipSpace()
	if p.pos >= len(p.data) {
		return false, p.errorf("unexpected end of JSON input")
	}
	switch p.data[p.pos] {
	case ',':
		p.pos++
		p.skipSpace()
		return true, nil
	case closing:
		p.pos++
		p.depth--
		return false, nil
	}
	return false, p.errorf("want ',' or %q", closing)
}

func (p *parser) number() (any, error) {
	start := p.pos
	d := p.data
	i := p.pos
	if d[i] == '-' {
		i++
	}
	switch {
	case i < len(d) && d[i] == '0':
		i++
	case i < len(d) && d[i] >= '1' && d[i] <= '9':
		for i < len(d) && d[i] >= '0' && d[i] <= '9' {
			i++
		}
	default:
		p.pos = i
		return nil, p.errorf("invalid number")
	}
	if i < len(d) && d[i] == '.' {
		i++
		if i >= len(d) || d[i] < '0' || d[i] > '9' {
			p.pos = i
			return nil, p.errorf("invalid number")
		}
		for i < len(d) && d[i] >= '0' && d[i] <= '9' {
			i++
		}
	}
	if i < len(d) && (d[i] == 'e' || d[i] == 'E') {
		i++
		if i < len(d) && (d[i] == '+' || d[i] == '-') {
			i++
		}
		if i >= len(d) || d[i] < '0' || d[i] > '9' {
			p.pos = i
			return nil, p.errorf("invalid number")
		}
		for i < len(d) && d[i] >= '0' && d[i] <= '9' {
			i++
		}
	}
	p.pos = i
	return json.Number(d[start:i]), nil
}

// commonKeys are object keys of authentik's events, decoded without
// allocating a string for each.
var commonKeys = func() map[string]string {
	m := make(map[string]string)
	for _, k := range []string{"pk", "action", "app", "user", "context", "client_ip", "created", "brand", "expires",
		"username", "email", "name", "is_anonymous", "model", "model_name", "diff", "add", "remove", "clear",
		"http_request", "path", "method", "args", "user_agent", "request_id", "auth_method", "auth_method_args",
		"known_device", "geo", "continent", "country", "lat", "long", "city", "asn", "as_org", "network",
		"message", "domain", "branding_title", "flow", "stage", "policy_uuid", "binding", "rule", "request"} {
		m[k] = k
	}
	return m
}()

// key reads an object key, without allocating when it is a common one.
func (p *parser) key() (string, error) {
	d := p.data
	start := p.pos + 1
	for i := start; i < len(d); i++ {
		if c := d[i]; c == '"' {
			if k, ok := commonKeys[string(d[start:i])]; ok {
				p.pos = i + 1
				return k, nil
			}
			break
		} else if c == '\\' || c < 0x20 || c >= utf8.RuneSelf {
			break
		}
	}
	return p.string()
}

// string reads a quoted string. Like encoding/json, it turns invalid UTF-8
// and lone surrogates into U+FFFD and rejects control characters.
func (p *parser) string() (string, error) {
	p.pos++ // "
	start := p.pos
	d := p.data
	i := start
	for i < len(d) {
		c := d[i]
		if c == '"' {
			p.pos = i + 1
			return string(d[start:i]), nil
		}
		if c == '\\' || c < 0x20 || c >= utf8.RuneSelf {
			break
		}
		i++
	}
	var b strings.Builder
	b.Write(d[start:i])
	for i < len(d) {
		c := d[i]
		switch {
		case c == '"':
			p.pos = i + 1
			return b.String(), nil
		case c < 0x20:
			p.pos = i
			return "", p.errorf("invalid control character in string")
		case c == '\\':
			if i+1 >= len(d) {
				p.pos = i
				return "", p.errorf("unexpected end of JSON input")
			}
			switch e := d[i+1]; e {
			case '"', '\\', '/':
				b.WriteByte(e)
			case 'b':
				b.WriteByte('\b')
			case 'f':
				b.WriteByte('\f')
			case 'n':
				b.WriteByte('\n')
			case 'r':
				b.WriteByte('\r')
			case 't':
				b.WriteByte('\t')
			case 'u':
				r, ok := hex4(d[i+2:])
				if !ok {
					p.pos = i
					return "", p.errorf("invalid \\u escape in string")
				}
				i += 6
				if utf16.IsSurrogate(r) {
					if r2, ok := lowSurrogate(d[i:]); ok {
						if dec := utf16.DecodeRune(r, r2); dec != utf8.RuneError {
							b.WriteRune(dec)
							i += 6
							continue
						}
					}
					r = utf8.RuneError
					p.repaired = true
				}
				b.WriteRune(r)
				continue
			default:
				p.pos = i
				return "", p.errorf("invalid escape in string")
			}
			i += 2
		case c < utf8.RuneSelf:
			b.WriteByte(c)
			i++
		default:
			r, size := utf8.DecodeRune(d[i:])
			if r == utf8.RuneError && size == 1 {
				p.repaired = true
			}
			b.WriteRune(r)
			i += size
		}
	}
	p.pos = i
	return "", p.errorf("unexpected end of JSON input")
}

// lowSurrogate reads a `\uXXXX` escape at the start of d.
func lowSurrogate(d []byte) (rune, bool) {
	if len(d) < 6 || d[0] != '\\' || d[1] != 'u' {
		return 0, false
	}
	return hex4(d[2:])
}

func hex4(d []byte) (rune, bool) {
	if len(d) < 4 {
		return 0, false
	}
	var r rune
	for _, c := range d[:4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			c = c - 'A' + 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

// member returns the input of the top-level member key when ok and the
// member is an object.
func (p *parser) member(key string, ok bool) []byte {
	span := p.spans[key]
	if !ok || len(span) == 0 || span[0] != '{' {
		return nil
	}
	return span
}
