// Package apigee holds the Apigee side of the pipeline: the shared flow
// bundle under sharedflowbundle/ that publishes one apigee.call.v1 record per
// API call, and a small emulation of the parts of Apigee that build that
// record, so tests and the local traffic simulator produce byte-for-byte what
// the gateway would publish.
//
// The emulation covers only what the bundle uses: message templates with
// variable references, escapeJSON and firstnonnull (see Render), the
// AssignVariable elements of an AssignMessage policy (see AssignMessage), and
// the JavaScript step that computes durations (see DeriveVars).
package apigee

import (
	"fmt"
	"strings"
	"unicode/utf16"
)

// Render expands an Apigee message template the way the runtime does for the
// constructs this bundle uses:
//
//   - {var} is replaced by the variable's value; an unresolved variable
//     renders as the empty string (Apigee does this when the policy sets
//     IgnoreUnresolvedVariables, which every policy in the bundle does);
//   - {escapeJSON(var)} renders the value escaped for a JSON string;
//   - {firstnonnull(a,b,'literal')} renders the first argument that is
//     resolved and non-empty; single-quoted arguments are literals;
//   - a '{' that does not start a variable name or function call (as in
//     {"key": …} or "{ ") is literal text, as is every '}' outside a
//     reference, which is what lets a template be JSON.
//
// Anything else inside braces that looks like a reference (an unknown
// function, nested calls, {var:default}, an unterminated reference) is an
// error rather than a guess, so a template edit that this emulation does not
// understand fails the tests instead of silently diverging from Apigee.
func Render(tmpl string, vars map[string]string) (string, error) {
	var b strings.Builder
	b.Grow(len(tmpl))
	for i := 0; i < len(tmpl); {
		c := tmpl[i]
		if c != '{' || i+1 >= len(tmpl) || !isNameStart(tmpl[i+1]) {
			b.WriteByte(c)
			i++
			continue
		}
		end := strings.IndexByte(tmpl[i+1:], '}')
		if end < 0 {
			return "", fmt.Errorf("render: unterminated reference at offset %d", i)
		}
		expr := tmpl[i+1 : i+1+end]
		out, err := evalRef(expr, vars)
		if err != nil {
			return "", fmt.Errorf("render: {%s} at offset %d: %w", expr, i, err)
		}
		b.WriteString(out)
		i += end + 2
	}
	return b.String(), nil
}

// References returns the variable names a template reads, in order, each
// once: plain references and the non-literal arguments of function calls.
// It refuses what Render refuses.
func References(tmpl string) ([]string, error) {
	var names []string
	seen := map[string]bool{}
	add := func(n string) {
		if !seen[n] {
			seen[n] = true
			names = append(names, n)
		}
	}
	for i := 0; i < len(tmpl); {
		if tmpl[i] != '{' || i+1 >= len(tmpl) || !isNameStart(tmpl[i+1]) {
			i++
			continue
		}
		end := strings.IndexByte(tmpl[i+1:], '}')
		if end < 0 {
			return nil, fmt.Errorf("references: unterminated reference at offset %d", i)
		}
		expr := tmpl[i+1 : i+1+end]
		if _, err := evalRef(expr, nil); err != nil {
			return nil, fmt.Errorf("references: {%s}: %w", expr, err)
		}
		if open := strings.IndexByte(expr, '('); open < 0 {
			add(expr)
		} else {
			args, _ := splitArgs(expr[open+1 : len(expr)-1])
			for _, a := range args {
				if !a.literal {
					add(a.text)
				}
			}
		}
		i += end + 2
	}
	return names, nil
}

// isNameStart reports whether c can begin a variable or function name.
// Apigee treats "{" followed by a quote or whitespace as literal text, which
// is the property JSON templates rely on.
func isNameStart(c byte) bool {
	return c == '_' || ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z')
}

func evalRef(expr string, vars map[string]string) (string, error) {
	open := strings.IndexByte(expr, '(')
	if open < 0 {
		if err := checkName(expr); err != nil {
			return "", err
		}
		return vars[expr], nil
	}
	if !strings.HasSuffix(expr, ")") {
		return "", fmt.Errorf("function call does not end with ')'")
	}
	fn := expr[:open]
	args, err := splitArgs(expr[open+1 : len(expr)-1])
	if err != nil {
		return "", err
	}
	switch fn {
	case "escapeJSON":
		if len(args) != 1 {
			return "", fmt.Errorf("escapeJSON takes 1 argument, got %d", len(args))
		}
		v, err := args[0].value(vars)
		if err != nil {
			return "", err
		}
		return EscapeJSON(v), nil
	case "firstnonnull":
		if len(args) == 0 {
			return "", fmt.Errorf("firstnonnull needs at least 1 argument")
		}
		for _, a := range args {
			v, err := a.value(vars)
			if err != nil {
				return "", err
			}
			if v != "" {
				return v, nil
			}
		}
		return "", nil
	default:
		return "", fmt.Errorf("unsupported function %q", fn)
	}
}

// arg is one function argument: a variable name or a quoted literal.
type arg struct {
	text    string
	literal bool
}

func (a arg) value(vars map[string]string) (string, error) {
	if a.literal {
		return a.text, nil
	}
	if err := checkName(a.text); err != nil {
		return "", err
	}
	return vars[a.text], nil
}

func splitArgs(s string) ([]arg, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var args []arg
	for _, part := range strings.Split(s, ",") {
		p := strings.TrimSpace(part)
		if len(p) >= 2 && p[0] == '\'' && p[len(p)-1] == '\'' {
			args = append(args, arg{text: p[1 : len(p)-1], literal: true})
			continue
		}
		args = append(args, arg{text: p})
	}
	return args, nil
}

// checkName rejects references this emulation cannot evaluate faithfully.
func checkName(name string) error {
	if name == "" || !isNameStart(name[0]) {
		return fmt.Errorf("bad variable name %q", name)
	}
	if i := strings.IndexAny(name, "{}()[]:,'\" \t\r\n"); i >= 0 {
		return fmt.Errorf("unsupported character %q in variable name %q", name[i], name)
	}
	return nil
}

// EscapeJSON escapes s for use inside a JSON string literal. It follows the
// rules of Apache Commons Text's escapeJson, the usual Java implementation:
// quote, backslash and slash get a backslash, the common control characters
// their short escapes, and every other character outside U+0020–U+007F a
// \uXXXX escape (UTF-16, so astral characters become surrogate pairs). The
// exact escape chosen for a character does not matter to a JSON parser; that
// the output is always a valid string body that decodes to s does, and the
// tests check it.
func EscapeJSON(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	for _, r := range s {
		switch r {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '/':
			b.WriteString(`\/`)
		case '\b':
			b.WriteString(`\b`)
		case '\f':
			b.WriteString(`\f`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		default:
			if r >= 0x20 && r <= 0x7f {
				b.WriteRune(r)
				continue
			}
			if r1, r2 := utf16.EncodeRune(r); r1 != '\uFFFD' {
				fmt.Fprintf(&b, `\u%04X\u%04X`, r1, r2)
				continue
			}
			fmt.Fprintf(&b, `\u%04X`, r)
		}
	}
	return b.String()
}
