package main

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strings"
	"testing"
)

// maxRunLines bounds a command's RunE body: a command parses its flags
// into an options struct and calls a function that does the work (and
// that tests call directly), as restic's runRestore(ctx, opts, ...) is.
const maxRunLines = 40

// TestCommandsAreThin fails on any cobra command whose RunE (or Run)
// function is longer than maxRunLines lines.
func TestCommandsAreThin(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	checked := 0
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			kv, ok := n.(*ast.KeyValueExpr)
			if !ok {
				return true
			}
			key, ok := kv.Key.(*ast.Ident)
			if !ok || (key.Name != "RunE" && key.Name != "Run") {
				return true
			}
			lit, ok := kv.Value.(*ast.FuncLit)
			if !ok {
				return true
			}
			checked++
			lines := fset.Position(lit.Body.End()).Line - fset.Position(lit.Body.Pos()).Line - 1
			if lines > maxRunLines {
				t.Errorf("%s: %s body is %d lines, at most %d: parse flags into an options struct and call a function", fset.Position(lit.Pos()), key.Name, lines, maxRunLines)
			}
			return true
		})
	}
	if checked < 10 {
		t.Fatalf("found only %d RunE functions: the check does not see the commands", checked)
	}
}
