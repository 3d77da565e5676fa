package jsrt

import (
	"errors"
	"regexp"
	"slices"
	"strings"

	"github.com/dop251/goja/ast"
	"github.com/dop251/goja/parser"
	"github.com/dop251/goja/token"

	"github.com/heraldhq/herald/rules"
)

// ActionGuard implements [rules.ActionGuard]: it reads a policy's opening
// statements and, when they return a falsy value for every event action but
// a few before anything else can happen, returns those actions. Policies
// usually start that way:
//
//	const event = request.context.event;
//	if (!event || event.action !== "login") return false;
//
//	return request.context.event.action === "model_created" && ...;
//
// Only declarations whose values are plain reads of the request may come
// before the guard, so that skipping the policy for other actions skips no
// side effect and no exception. It returns nil when it cannot tell, and for
// policies that do not compile (they must still report their error). The
// policy is compiled once, for the guard and for its evaluations.
func (p *Pool) ActionGuard(pol *rules.Policy) []string {
	if c := p.program(pol.Name, pol.Expression); c.err != nil {
		return nil
	}
	return guardActions(pol.Expression)
}

// guardActions is the analysis of [Pool.ActionGuard], for an expression
// that compiles.
func guardActions(expression string) (actions []string) {
	defer func() {
		if recover() != nil {
			actions = nil // an input the analysis did not foresee
		}
	}()
	// The analysis names the request by its global name: a policy that
	// declares or rebinds it, or passes it anywhere bare, is not analysed,
	// nor one with escapes that could spell it.
	if requestNotRead.MatchString(expression) || strings.Contains(expression, `\u`) {
		return nil
	}
	fn, err := wrappedFunction(expression)
	if err != nil || fn.Body == nil {
		return nil
	}
	g := guardScope{aliases: map[string]pathKind{}, events: map[string]bool{}}
	for _, st := range fn.Body.List {
		switch st := st.(type) {
		case *ast.EmptyStatement:
			continue
		case *ast.LexicalDeclaration:
			if !g.declare(st.List) {
				return nil
			}
			continue
		case *ast.VariableStatement:
			if !g.declare(st.List) {
				return nil
			}
			continue
		case *ast.IfStatement:
			if st.Alternate != nil || !returnsFalsy(st.Consequent) {
				return nil
			}
			return sorted(g.truthyUnless(st.Test))
		case *ast.ReturnStatement:
			if st.Argument == nil {
				return nil
			}
			return sorted(g.falsyUnless(st.Argument))
		}
		return nil
	}
	return nil
}

// wrappedFunction parses an expression as it is compiled, the body of a
// function, and returns that function; it fails when the expression closes
// the function and adds code after it.
func wrappedFunction(expression string) (*ast.FunctionLiteral, error) {
	prog, err := parser.ParseFile(nil, "", functionPrefix+expression+"\n})", 0)
	if err != nil {
		return nil, err
	}
	if len(prog.Body) == 1 {
		if st, ok := prog.Body[0].(*ast.ExpressionStatement); ok {
			if fn, ok := st.Expression.(*ast.FunctionLiteral); ok {
				return fn, nil
			}
		}
	}
	return nil, errors.New("SyntaxError: the expression closes its function")
}

// requestNotRead finds a use of the name request other than a property
// read, such as a declaration that would shadow the global.
var requestNotRead = regexp.MustCompile(`\brequest\b(?:[^.\w]|$)`)

// pathKind is what is known of a value read from the request.
type pathKind int

const (
	unknownValue pathKind = iota // not a plain read of the request
	anyValue                     // a read that may be undefined
	object                       // a read that is always an object
	actionValue                  // the event's action
)

// guardScope tracks the names declared before the guard.
type guardScope struct {
	aliases map[string]pathKind
	events  map[string]bool // names bound to request.context.event
}

// declare records declarations whose values are plain reads; it reports
// false for anything else.
func (g *guardScope) declare(list []*ast.Binding) bool {
	for _, b := range list {
		id, ok := b.Target.(*ast.Identifier)
		if !ok || b.Initializer == nil {
			return false
		}
		kind := g.kind(b.Initializer)
		if kind == unknownValue {
			return false
		}
		g.aliases[id.Name.String()] = kind
		g.events[id.Name.String()] = g.isEvent(b.Initializer)
	}
	return true
}

// kind classifies a side-effect-free, non-throwing read: request and its
// context, event, event.context and user are always objects; a property
// of an object is any value; "x || {}" is an object.
func (g *guardScope) kind(e ast.Expression) pathKind {
	switch e := e.(type) {
	case *ast.Identifier:
		if e.Name == "request" {
			return object
		}
		return g.aliases[e.Name.String()]
	case *ast.DotExpression:
		if g.kind(e.Left) != object {
			return unknownValue
		}
		if g.isEvent(e.Left) && e.Identifier.Name == "action" {
			return actionValue
		}
		if alwaysObject(g, e) {
			return object
		}
		return anyValue
	case *ast.BinaryExpression:
		if lit, ok := e.Right.(*ast.ObjectLiteral); ok && e.Operator == token.LOGICAL_OR && len(lit.Value) == 0 && g.kind(e.Left) != unknownValue {
			return object
		}
	}
	return unknownValue
}

// alwaysObject reports the reads that always give an object.
func alwaysObject(g *guardScope, e *ast.DotExpression) bool {
	name := e.Identifier.Name
	switch {
	case isIdent(e.Left, "request"):
		return name == "context" || name == "user"
	case g.isRequestContext(e.Left):
		return name == "event"
	case g.isEvent(e.Left):
		return name == "context" || name == "user"
	}
	return false
}

func isIdent(e ast.Expression, name string) bool {
	id, ok := e.(*ast.Identifier)
	return ok && id.Name.String() == name
}

func (g *guardScope) isRequestContext(e ast.Expression) bool {
	d, ok := e.(*ast.DotExpression)
	return ok && d.Identifier.Name == "context" && isIdent(d.Left, "request")
}

// isEvent reports whether e is request.context.event or a name declared
// as exactly that.
func (g *guardScope) isEvent(e ast.Expression) bool {
	switch e := e.(type) {
	case *ast.DotExpression:
		return e.Identifier.Name == "event" && g.isRequestContext(e.Left)
	case *ast.Identifier:
		return g.events[e.Name.String()]
	}
	return false
}

// safe reports whether evaluating e has no side effect and cannot throw.
func (g *guardScope) safe(e ast.Expression) bool {
	switch e := e.(type) {
	case *ast.StringLiteral, *ast.NumberLiteral, *ast.BooleanLiteral, *ast.NullLiteral:
		return true
	case *ast.UnaryExpression:
		return e.Operator == token.NOT && !e.Postfix && g.safe(e.Operand)
	case *ast.BinaryExpression:
		switch e.Operator {
		case token.LOGICAL_AND, token.LOGICAL_OR, token.STRICT_EQUAL, token.STRICT_NOT_EQUAL:
			return g.safe(e.Left) && g.safe(e.Right)
		}
		return false
	}
	return g.kind(e) != unknownValue
}

// actionCompare returns the action that e compares the event's action with
// ("event.action === 'x'" or the other way round).
func (g *guardScope) actionCompare(e *ast.BinaryExpression) (string, bool) {
	lit, other := e.Right, e.Left
	if _, ok := e.Left.(*ast.StringLiteral); ok {
		lit, other = e.Left, e.Right
	}
	s, ok := lit.(*ast.StringLiteral)
	if !ok || g.kind(other) != actionValue {
		return "", false
	}
	return s.Value.String(), true
}

// truthyUnless returns the actions outside which e is certainly truthy,
// evaluated without side effects or exceptions up to that point; nil when
// it cannot tell.
func (g *guardScope) truthyUnless(e ast.Expression) []string {
	b, ok := e.(*ast.BinaryExpression)
	if !ok {
		return nil
	}
	switch b.Operator {
	case token.STRICT_NOT_EQUAL:
		if action, ok := g.actionCompare(b); ok {
			return []string{action}
		}
	case token.LOGICAL_OR:
		if s := g.truthyUnless(b.Left); s != nil {
			return s
		}
		if g.safe(b.Left) {
			return g.truthyUnless(b.Right)
		}
	case token.LOGICAL_AND:
		l, r := g.truthyUnless(b.Left), g.truthyUnless(b.Right)
		if l != nil && r != nil {
			return append(l, r...)
		}
	}
	return nil
}

// falsyUnless returns the actions outside which e is certainly falsy,
// evaluated without side effects or exceptions up to that point; nil when
// it cannot tell.
func (g *guardScope) falsyUnless(e ast.Expression) []string {
	b, ok := e.(*ast.BinaryExpression)
	if !ok {
		return nil
	}
	switch b.Operator {
	case token.STRICT_EQUAL:
		if action, ok := g.actionCompare(b); ok {
			return []string{action}
		}
	case token.LOGICAL_AND:
		if s := g.falsyUnless(b.Left); s != nil {
			return s
		}
		if g.safe(b.Left) {
			return g.falsyUnless(b.Right)
		}
	case token.LOGICAL_OR:
		l, r := g.falsyUnless(b.Left), g.falsyUnless(b.Right)
		if l != nil && r != nil {
			return append(l, r...)
		}
	}
	return nil
}

// returnsFalsy reports whether st is "return false", "return null" or
// "return", alone or in a block.
func returnsFalsy(st ast.Statement) bool {
	if blk, ok := st.(*ast.BlockStatement); ok {
		if len(blk.List) != 1 {
			return false
		}
		st = blk.List[0]
	}
	ret, ok := st.(*ast.ReturnStatement)
	if !ok || ret.Argument == nil {
		return ok
	}
	switch a := ret.Argument.(type) {
	case *ast.BooleanLiteral:
		return !a.Value
	case *ast.NullLiteral:
		return true
	}
	return false
}

func sorted(actions []string) []string {
	if actions == nil {
		return nil
	}
	slices.Sort(actions)
	return slices.Compact(actions)
}
