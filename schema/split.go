package schema

import (
	"fmt"
	"strings"
)

// Statement is one SQL statement of a script and the line it starts on.
type Statement struct {
	SQL  string
	Line int
}

// SplitStatements splits a SQL script on the semicolons that end statements.
// It understands single-quoted strings (including E” escapes), quoted
// identifiers, dollar-quoted bodies ($$ … $$, $tag$ … $tag$), and line and
// block comments, so function bodies and JavaScript policies in seed files
// stay whole. Statements that hold only whitespace and comments are dropped.
func SplitStatements(script string) ([]Statement, error) {
	var (
		out       []Statement
		line      = 1
		startLine = 1
		codeStart int
		hasCode   bool
	)
	flush := func(end int) {
		if hasCode {
			out = append(out, Statement{SQL: strings.TrimSpace(script[codeStart:end]), Line: startLine})
		}
		hasCode = false
	}
	for i := 0; i < len(script); i++ {
		c := script[i]
		if c == '\n' {
			line++
		}
		switch {
		case c == '-' && strings.HasPrefix(script[i:], "--"):
			j := strings.IndexByte(script[i:], '\n')
			if j < 0 {
				i = len(script)
				continue
			}
			i += j - 1 // the newline is counted on the next turn
		case c == '/' && strings.HasPrefix(script[i:], "/*"):
			j, depth := i+2, 1
			for depth > 0 {
				if j >= len(script)-1 {
					return nil, fmt.Errorf("line %d: unterminated /* comment", line)
				}
				switch {
				case strings.HasPrefix(script[j:], "/*"):
					depth, j = depth+1, j+2
				case strings.HasPrefix(script[j:], "*/"):
					depth, j = depth-1, j+2
				default:
					j++
				}
			}
			line += strings.Count(script[i:j], "\n")
			i = j - 1
		case c == '\'' || c == '"':
			if !hasCode {
				startLine, codeStart, hasCode = line, i, true
			}
			escapes := c == '\'' && i > 0 && (script[i-1] == 'E' || script[i-1] == 'e')
			j := i + 1
			for ; j < len(script); j++ {
				if escapes && script[j] == '\\' {
					j++
					continue
				}
				if script[j] == c {
					if j+1 < len(script) && script[j+1] == c { // doubled quote
						j++
						continue
					}
					break
				}
			}
			if j >= len(script) {
				return nil, fmt.Errorf("line %d: unterminated %c quote", line, c)
			}
			line += strings.Count(script[i:j], "\n")
			i = j
		case c == '$' && dollarTag(script[i:]) != "":
			if !hasCode {
				startLine, codeStart, hasCode = line, i, true
			}
			tag := dollarTag(script[i:])
			j := strings.Index(script[i+len(tag):], tag)
			if j < 0 {
				return nil, fmt.Errorf("line %d: unterminated %s quote", line, tag)
			}
			end := i + len(tag) + j + len(tag)
			line += strings.Count(script[i:end], "\n")
			i = end - 1
		case c == ';':
			flush(i)
		case c == ' ' || c == '\t' || c == '\r' || c == '\n':
		default:
			if !hasCode {
				startLine, codeStart, hasCode = line, i, true
			}
		}
	}
	flush(len(script))
	return out, nil
}

// dollarTag returns the dollar-quote opener at the start of s ("$$" or
// "$tag$"), or "" when s does not start with one. Positional parameters such
// as $1 are not openers.
func dollarTag(s string) string {
	if len(s) < 2 || s[0] != '$' {
		return ""
	}
	for j := 1; j < len(s); j++ {
		c := s[j]
		switch {
		case c == '$':
			return s[:j+1]
		case c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80:
		case c >= '0' && c <= '9' && j > 1:
		default:
			return ""
		}
	}
	return ""
}
