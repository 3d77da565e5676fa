// Package jsrt runs Herald's expression policies in goja. It implements
// [rules.Evaluator]: each policy is compiled once per version, evaluated on
// one of a fixed set of warm runtimes, interrupted when it runs past its
// binding's timeout, and limited in call-stack depth. It also provides every
// helper of the policy API (ak_message, ak_logger, regex_match, …).
//
// An expression is the body of a function: `return` decides, and a falsy
// value or no return fails, as in authentik.
package jsrt
