package jsrt

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/dlclark/regexp2/v2"
)

// pyRegexp is a compiled Python-style regular expression. regexp2 supports
// what Python's re does and RE2 does not (backreferences, lookaround), and
// matches \w, \d, \s and \b on Unicode as Python 3 does; [fromPython]
// spells the rest of Python's syntax its way.
type pyRegexp = regexp2.Regexp

// regexMatchTimeout bounds one match: host functions cannot be interrupted,
// so a catastrophic pattern must stop on its own. A match also stops at the
// evaluation's deadline, when that comes first (see [boundRegex]).
const regexMatchTimeout = time.Second

// errRegexTimeout is what a helper's match that ran out of time fails with
// (regexp2's own error quotes the whole input).
var errRegexTimeout = errors.New("match timed out")

// jsRegexpMatchTimeout bounds one match of JavaScript's own RegExp where
// goja hands it to regexp2 (lookaround, backreferences): the interrupt that
// ends a policy at its timeout cannot stop Go code, so without it a
// catastrophic pattern runs on. goja compiles a regular expression literal
// with the policy, into a program that all runtimes share, so the bound
// cannot be an evaluation's deadline. A match cut short counts as no match
// (goja drops regexp2's error); when the policy's deadline has passed
// meanwhile, as for any match that takes this long under a shorter timeout,
// the policy times out right after it.
const jsRegexpMatchTimeout = time.Second

func init() {
	// regexp2 gives every expression it compiles this timeout, unless the
	// caller sets its own (as compileRegex does); it is read at compile
	// time, so it is set once, before any policy is compiled.
	regexp2.DefaultMatchTimeout = jsRegexpMatchTimeout
}

var regexCache struct {
	sync.Mutex
	m map[string]*pyRegexp
}

func compileRegex(pattern string) (*pyRegexp, error) {
	regexCache.Lock()
	defer regexCache.Unlock()
	if re, ok := regexCache.m[pattern]; ok {
		return re, nil
	}
	re, err := regexp2.Compile(fromPython(pattern), regexp2.None, regexp2.OptionMaintainCaptureOrder())
	if err != nil {
		return nil, err
	}
	re.MatchTimeout = regexMatchTimeout
	if regexCache.m == nil || len(regexCache.m) >= 256 {
		regexCache.m = make(map[string]*pyRegexp)
	}
	regexCache.m[pattern] = re
	return re, nil
}

// fromPython rewrites what Python's re spells differently from regexp2:
// (?P<name>…) as (?<name>…), (?P=name) as \k<name>, \Z (the end of the
// input) as \z, and {,n} as {0,n} ({,} as {0,}). Inside a character class
// or a (?#…) comment nothing is rewritten. (Groups are numbered in pattern
// order, named or not, as in Python, by the compile option.)
func fromPython(pattern string) string {
	var b strings.Builder
	b.Grow(len(pattern))
	inClass := false
	for i := 0; i < len(pattern); i++ {
		c := pattern[i]
		switch {
		case c == '\\' && i+1 < len(pattern):
			if !inClass && pattern[i+1] == 'Z' {
				b.WriteString(`\z`)
			} else {
				b.WriteString(pattern[i : i+2])
			}
			i++
			continue
		case inClass:
			inClass = c != ']'
		case c == '[':
			inClass = true
			b.WriteByte(c)
			// A ']' first in a class is one of its characters.
			if strings.HasPrefix(pattern[i+1:], "^") {
				b.WriteByte('^')
				i++
			}
			if strings.HasPrefix(pattern[i+1:], "]") {
				b.WriteByte(']')
				i++
			}
			continue
		case strings.HasPrefix(pattern[i:], "(?#"):
			// A comment, copied as it is.
			end := strings.IndexByte(pattern[i:], ')')
			if end < 0 {
				end = len(pattern) - i - 1
			}
			b.WriteString(pattern[i : i+end+1])
			i += end
			continue
		case c == '{' && quantifierFromZero(pattern[i+1:]):
			// {,n}: Python's zero to n, which regexp2 reads literally.
			b.WriteString("{0")
			continue
		case strings.HasPrefix(pattern[i:], "(?P<"):
			b.WriteString("(?<")
			i += len("(?P<") - 1
			continue
		case strings.HasPrefix(pattern[i:], "(?P="):
			if end := strings.IndexByte(pattern[i:], ')'); end > 0 {
				b.WriteString(`\k<` + pattern[i+len("(?P="):i+end] + ">")
				i += end
				continue
			}
		}
		b.WriteByte(c)
	}
	return b.String()
}

// quantifierFromZero reports whether rest (what follows a '{') is ",n}"
// or ",}".
func quantifierFromZero(rest string) bool {
	if !strings.HasPrefix(rest, ",") {
		return false
	}
	end := strings.IndexByte(rest, '}')
	if end < 1 {
		return false
	}
	for _, d := range rest[1:end] {
		if d < '0' || d > '9' {
			return false
		}
	}
	return true
}

// templatePart is a piece of a replacement template: literal text, or a
// group by number (name empty) or by name.
type templatePart struct {
	text  string
	group int
	name  string
	isRef bool
}

// parseTemplate parses repl as Python's re does a replacement template:
// \1 … \99 and \g<1>, \g<name> refer to groups; \0 and three octal digits
// are octal escapes; \n, \t, \r, \f, \v, \a, \b and \\ are escapes; another
// escaped ASCII letter, and a trailing backslash, are errors; any other
// escaped character stays as it is, backslash and all.
func parseTemplate(repl string) ([]templatePart, error) {
	var parts []templatePart
	var lit strings.Builder
	ref := func(p templatePart) {
		if lit.Len() > 0 {
			parts = append(parts, templatePart{text: lit.String()})
			lit.Reset()
		}
		p.isRef = true
		parts = append(parts, p)
	}
	isOctal := func(i int) bool { return i < len(repl) && repl[i] >= '0' && repl[i] <= '7' }
	isDigit := func(i int) bool { return i < len(repl) && repl[i] >= '0' && repl[i] <= '9' }
	for i := 0; i < len(repl); i++ {
		c := repl[i]
		if c != '\\' {
			lit.WriteByte(c)
			continue
		}
		if i+1 == len(repl) {
			return nil, errors.New("bad escape (end of pattern)")
		}
		i++
		switch n := repl[i]; {
		case n == '0':
			j := i + 1
			for j < len(repl) && j < i+3 && isOctal(j) {
				j++
			}
			v, _ := strconv.ParseUint(repl[i:j], 8, 32)
			lit.WriteRune(rune(v & 0xff))
			i = j - 1
		case n >= '1' && n <= '9':
			if isDigit(i+1) && isOctal(i) && isOctal(i+1) && isOctal(i+2) {
				v, _ := strconv.ParseUint(repl[i:i+3], 8, 32)
				if v > 0o377 {
					return nil, fmt.Errorf("octal escape value \\%s outside of range 0-0o377", repl[i:i+3])
				}
				lit.WriteRune(rune(v))
				i += 2
				continue
			}
			j := i + 1
			if isDigit(j) {
				j++
			}
			num, _ := strconv.Atoi(repl[i:j])
			ref(templatePart{group: num})
			i = j - 1
		case n == 'g':
			end := strings.IndexByte(repl[i:], '>')
			if i+1 >= len(repl) || repl[i+1] != '<' || end < 0 {
				return nil, errors.New("missing group name in \\g<...>")
			}
			name := repl[i+2 : i+end]
			if num, err := strconv.Atoi(name); err == nil {
				ref(templatePart{group: num})
			} else {
				ref(templatePart{name: name})
			}
			i += end
		default:
			if esc, ok := pyEscapes[n]; ok {
				lit.WriteString(esc)
			} else if n < 0x80 && unicode.IsLetter(rune(n)) {
				return nil, fmt.Errorf("bad escape \\%c", n)
			} else {
				lit.WriteByte('\\')
				lit.WriteByte(n)
			}
		}
	}
	if lit.Len() > 0 {
		parts = append(parts, templatePart{text: lit.String()})
	}
	return parts, nil
}

// boundedRegex is a cached expression as one helper call uses it, with
// its matches bounded by the call's deadline as well as by
// regexMatchTimeout. The cached expression is shared by all runtimes, so a
// shorter timeout goes on a copy that the call owns.
type boundedRegex struct {
	shared *pyRegexp
	// own is the copy of shared, made once a match needs less time than
	// regexMatchTimeout.
	own      *pyRegexp
	deadline time.Time
}

// boundRegex returns re for a call that must end by deadline (the zero
// time: no deadline but regexMatchTimeout's per match).
func boundRegex(re *pyRegexp, deadline time.Time) boundedRegex {
	return boundedRegex{shared: re, deadline: deadline}
}

// next returns the expression to run the next match with: the cached one
// while the deadline is regexMatchTimeout or more away, else the call's
// copy with the time left as its timeout. It fails once the deadline has
// passed.
func (b *boundedRegex) next() (*pyRegexp, error) {
	if b.deadline.IsZero() {
		return b.shared, nil
	}
	left := time.Until(b.deadline)
	switch {
	case left <= 0:
		return nil, errRegexTimeout
	case left >= regexMatchTimeout:
		return b.shared, nil
	}
	if b.own == nil {
		own := *b.shared // shares its runner pool and caches, which are safe for concurrent use
		b.own = &own
	}
	b.own.MatchTimeout = left
	return b.own, nil
}

// matchError is err, regexp2's error of a match, with a timeout reported
// as errRegexTimeout.
func matchError(err error) error {
	if err != nil && strings.HasPrefix(err.Error(), "match timeout") {
		return errRegexTimeout
	}
	return err
}

// MatchString reports whether s has a match.
func (b *boundedRegex) MatchString(s string) (bool, error) {
	re, err := b.next()
	if err != nil {
		return false, err
	}
	ok, err := re.MatchString(s)
	return ok, matchError(err)
}

// pythonSub replaces every match of b in s with repl, expanded as Python's
// re.sub does (see [parseTemplate]). An unmatched group expands to "". Each
// match is bounded (see [boundedRegex.next]), so that many slow matches
// cannot run past the deadline either.
func pythonSub(b *boundedRegex, s, repl string) (string, error) {
	re := b.shared
	parts, err := parseTemplate(repl)
	if err != nil {
		return "", err
	}
	// As Python, references are checked before any match.
	groups := slices.Max(re.GetGroupNumbers())
	for _, p := range parts {
		switch {
		case !p.isRef:
		case p.name != "" && re.GroupNumberFromName(p.name) < 0:
			return "", fmt.Errorf("unknown group name %q", p.name)
		case p.name == "" && p.group > groups:
			return "", fmt.Errorf("invalid group reference %d", p.group)
		}
	}
	// regexp2's ReplaceFunc, left to right, with the deadline checked
	// before each match.
	text := []rune(s)
	re, err = b.next()
	if err != nil {
		return "", err
	}
	m, err := re.FindRunesMatch(text)
	if err != nil {
		return "", matchError(err)
	}
	if m == nil {
		return s, nil
	}
	var out strings.Builder
	prev := 0
	for m != nil {
		out.WriteString(string(text[prev:m.RuneIndex]))
		prev = m.RuneIndex + m.RuneLength
		for _, p := range parts {
			if !p.isRef {
				out.WriteString(p.text)
				continue
			}
			var g *regexp2.Group
			if p.name != "" {
				g = m.GroupByName(p.name)
			} else {
				g = m.GroupByNumber(p.group)
			}
			if g == nil {
				if p.name != "" {
					return "", fmt.Errorf("unknown group name %q", p.name)
				}
				return "", fmt.Errorf("invalid group reference %d", p.group)
			}
			out.WriteString(g.String())
		}
		if re, err = b.next(); err != nil {
			return "", err
		}
		if m, err = re.FindNextMatch(m); err != nil {
			return "", matchError(err)
		}
	}
	out.WriteString(string(text[prev:]))
	return out.String(), nil
}

var pyEscapes = map[byte]string{
	'\\': `\`, 'n': "\n", 't': "\t", 'r': "\r", 'f': "\f", 'v': "\v", 'a': "\a", 'b': "\b",
}
