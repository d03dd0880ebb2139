package testenv

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// module is the import path of this module: its packages are the project
// group of every import block.
const module = "github.com/tunsocks/tunsocks"

// TestImportGroups checks the house rule for every .go file of the module:
// imports come in at most three groups separated by blank lines, in this
// order: the standard library, third-party modules, this module's packages;
// each group holds only its own kind. gofmt sorts inside a group but cannot
// see a project import in the standard library's group.
func TestImportGroups(t *testing.T) {
	root := moduleRoot(t)
	var files int
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if n := d.Name(); path != root && (strings.HasPrefix(n, ".") || strings.HasPrefix(n, "_") || n == "testdata" || n == "vendor") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") {
			return nil
		}
		files++
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		for _, p := range importProblems(rel, src) {
			t.Error(p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 50 {
		t.Fatalf("checked only %d files under %s: wrong root?", files, root)
	}
}

// importKind is the group an import path belongs to, in their order.
type importKind int

const (
	stdlibImport importKind = iota
	thirdPartyImport
	projectImport
)

func (k importKind) String() string {
	return [...]string{"standard library", "third-party", "project"}[k]
}

func kindOf(path string) importKind {
	switch {
	case path == module || strings.HasPrefix(path, module+"/"):
		return projectImport
	case !strings.Contains(strings.SplitN(path, "/", 2)[0], "."):
		return stdlibImport
	}
	return thirdPartyImport
}

// importProblems returns one line for each misgrouped import of the Go
// source src (named name in the messages).
func importProblems(name string, src []byte) []string {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, name, src, parser.ImportsOnly|parser.ParseComments)
	if err != nil {
		return []string{err.Error()}
	}
	lines := strings.Split(string(src), "\n")
	blankBetween := func(a, b int) bool { // lines a < b, 1-based
		for l := a + 1; l < b; l++ {
			if strings.TrimSpace(lines[l-1]) == "" {
				return true
			}
		}
		return false
	}
	var out []string
	for _, decl := range f.Decls {
		g, ok := decl.(*ast.GenDecl)
		if !ok || g.Tok != token.IMPORT {
			continue
		}
		seen := map[importKind]bool{}
		last := importKind(-1) // kind of the current group, -1 before the first
		prevEnd := 0
		for _, spec := range g.Specs {
			s := spec.(*ast.ImportSpec)
			path, _ := strconv.Unquote(s.Path.Value)
			if path == "C" {
				continue
			}
			k := kindOf(path)
			pos := fset.Position(s.Pos())
			newGroup := prevEnd == 0 || blankBetween(prevEnd, pos.Line)
			prevEnd = fset.Position(s.End()).Line
			switch {
			case !newGroup && k != last:
				out = append(out, fmt.Sprintf("%s:%d: %s import %q is in the %s group; want a blank line and its own group (standard library, third-party, project)", name, pos.Line, k, path, last))
			case newGroup && seen[k]:
				out = append(out, fmt.Sprintf("%s:%d: a second %s group starts with %q; want one group each (standard library, third-party, project)", name, pos.Line, k, path))
			case newGroup && k < last:
				out = append(out, fmt.Sprintf("%s:%d: %s group (%q) after the %s group; want standard library, third-party, project in that order", name, pos.Line, k, path, last))
			}
			if newGroup {
				seen[k] = true
				last = k
			}
		}
	}
	return out
}

func TestImportProblems(t *testing.T) {
	for _, tt := range []struct {
		name, imports string
		want          string // substring of the only problem; "" for none
	}{
		{"ok", "\"fmt\"\n\"os\"\n\n\"golang.org/x/net/idna\"\n\n\"" + module + "/socks\"", ""},
		{"ok without third-party", "\"fmt\"\n\n\"" + module + "/socks\"", ""},
		{"ok project only", "\"" + module + "/socks\"", ""},
		{"project in the stdlib group", "\"fmt\"\n\"" + module + "/socks\"\n\"os\"", "project import \"" + module + "/socks\" is in the standard library group"},
		{"third-party with the project", "\"fmt\"\n\n\"" + module + "/socks\"\n\"go.uber.org/goleak\"", "third-party import \"go.uber.org/goleak\" is in the project group"},
		{"project before third-party", "\"fmt\"\n\n\"" + module + "/socks\"\n\n\"go.uber.org/goleak\"", "third-party group (\"go.uber.org/goleak\") after the project group"},
		{"two stdlib groups", "\"fmt\"\n\n\"os\"", "a second standard library group"},
	} {
		src := "package p\n\nimport (\n" + tt.imports + "\n)\n"
		got := importProblems("x.go", []byte(src))
		if tt.want == "" && len(got) != 0 || tt.want != "" && (len(got) != 1 || !strings.Contains(got[0], tt.want)) {
			t.Errorf("%s: problems %q, want one containing %q", tt.name, got, tt.want)
		}
	}
}

// moduleRoot is the directory holding this module's go.mod.
func moduleRoot(t *testing.T) string {
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.HasPrefix(string(b), "module "+module+"\n") {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatalf("no go.mod of %s above the test's directory", module)
		}
		dir = parent
	}
}
