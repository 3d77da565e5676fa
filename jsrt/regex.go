package jsrt

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dlclark/regexp2/v2"
)

// pyRegexp is a compiled Python-style regular expression. regexp2 supports
// what Python's re does and RE2 does not (backreferences, lookaround), and
// matches \w, \d, \s and \b on Unicode as Python 3 does; [fromPython]
// spells the rest of Python's syntax its way.
type pyRegexp = regexp2.Regexp

// regexMatchTimeout bounds one match: host functions cannot be interrupted,
// so a catastrophic pattern must stop on its own.
const regexMatchTimeout = time.Second

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
// (?P<name>…) as (?<name>…), (?P=name) as \k<name>, and \Z (the end of the
// input) as \z. Inside a character class or a (?#…) comment nothing is
// rewritten. (Groups are numbered in pattern order, named or not, as in
// Python, by the compile option.)
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

// pythonSub replaces every match of re in s with repl, expanding repl as
// Python's re.sub does: \1 … \99, \g<1>, \g<name>, \\ and the escapes \n,
// \t, \r, \f, \v, \a, \b. An unmatched group expands to "".
func pythonSub(re *pyRegexp, s, repl string) (string, error) {
	var expandErr error
	out, err := re.ReplaceFunc(s, func(m regexp2.Match) string {
		var b strings.Builder
		for i := 0; i < len(repl); i++ {
			c := repl[i]
			if c != '\\' || i+1 == len(repl) {
				b.WriteByte(c)
				continue
			}
			i++
			switch n := repl[i]; {
			case n >= '0' && n <= '9':
				j := i + 1
				if j < len(repl) && repl[j] >= '0' && repl[j] <= '9' {
					j++
				}
				num, _ := strconv.Atoi(repl[i:j])
				g := m.GroupByNumber(num)
				if g == nil {
					expandErr = fmt.Errorf("invalid group reference %d", num)
					return ""
				}
				b.WriteString(g.String())
				i = j - 1
			case n == 'g':
				end := strings.IndexByte(repl[i:], '>')
				if i+1 >= len(repl) || repl[i+1] != '<' || end < 0 {
					expandErr = fmt.Errorf("missing group name in \\g<...>")
					return ""
				}
				name := repl[i+2 : i+end]
				var g *regexp2.Group
				if num, err := strconv.Atoi(name); err == nil {
					g = m.GroupByNumber(num)
				} else {
					g = m.GroupByName(name)
				}
				if g == nil {
					expandErr = fmt.Errorf("unknown group name %q", name)
					return ""
				}
				b.WriteString(g.String())
				i += end
			default:
				if esc, ok := pyEscapes[n]; ok {
					b.WriteString(esc)
				} else {
					b.WriteByte('\\')
					b.WriteByte(n)
				}
			}
		}
		return b.String()
	}, -1, -1)
	if expandErr != nil {
		return "", expandErr
	}
	return out, err
}

var pyEscapes = map[byte]string{
	'\\': `\`, 'n': "\n", 't': "\t", 'r': "\r", 'f': "\f", 'v': "\v", 'a': "\a", 'b': "\b",
}
