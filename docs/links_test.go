package docs

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"unicode"
)

// repoRoot is the repository's root, seen from this package's directory.
const repoRoot = ".."

// linkRE matches an inline Markdown link or image, [text](target) or
// ![alt](target), capturing the target (up to a space or the closing
// parenthesis: a title after the target is ignored).
var linkRE = regexp.MustCompile(`!?\[[^\]]*\]\(\s*<?([^)\s>]*)>?[^)]*\)`)

// refDefRE matches a reference definition, [label]: target.
var refDefRE = regexp.MustCompile(`^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(\s|$)`)

// autolinkRE matches an autolink, <scheme:...>.
var autolinkRE = regexp.MustCompile(`<([a-zA-Z][a-zA-Z0-9+.-]*:[^>\s]*)>`)

// schemeRE says a target names a scheme (https:, mailto:, file:): it points
// outside the repository.
var schemeRE = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9+.-]*:`)

// link is one link found in a Markdown file.
type link struct {
	file   string // the Markdown file, relative to the repository root
	line   int
	target string
}

// docFiles are the files whose links are checked: README.md and docs/*.md.
func docFiles(t *testing.T) []string {
	t.Helper()
	files := []string{"README.md"}
	m, err := filepath.Glob(filepath.Join(repoRoot, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	if len(m) == 0 {
		t.Fatal("no docs/*.md found: run the test from its package directory (go test ./docs)")
	}
	for _, f := range m {
		rel, err := filepath.Rel(repoRoot, f)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, filepath.ToSlash(rel))
	}
	return files
}

// stripCode removes inline code spans, whose brackets are not links.
func stripCode(line string) string {
	var b strings.Builder
	in := false
	for _, r := range line {
		if r == '`' {
			in = !in
			continue
		}
		if !in {
			b.WriteRune(r)
		}
	}
	return b.String()
}

// linksOf returns the links of a Markdown file, outside fenced code blocks
// and inline code.
func linksOf(file string, content string) []link {
	var out []link
	fenced := false
	sc := bufio.NewScanner(strings.NewReader(content))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			fenced = !fenced
			continue
		}
		if fenced {
			continue
		}
		line = stripCode(line)
		for _, m := range linkRE.FindAllStringSubmatch(line, -1) {
			out = append(out, link{file: file, line: n, target: m[1]})
		}
		for _, m := range autolinkRE.FindAllStringSubmatch(line, -1) {
			out = append(out, link{file: file, line: n, target: m[1]})
		}
		if m := refDefRE.FindStringSubmatch(line); m != nil {
			out = append(out, link{file: file, line: n, target: m[1]})
		}
	}
	return out
}

// slug is the anchor GitHub gives a heading: lower case, letters, digits,
// '-' and '_' kept (also inside code spans), spaces made '-', everything
// else dropped.
func slug(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(heading) {
		switch {
		case unicode.IsLetter(r) || unicode.IsDigit(r) || r == '-' || r == '_':
			b.WriteRune(r)
		case r == ' ':
			b.WriteByte('-')
		}
	}
	return b.String()
}

// anchorsOf returns the anchors of a Markdown file's headings (a repeated
// heading gets -1, -2, ... as on GitHub).
func anchorsOf(content string) map[string]bool {
	anchors := make(map[string]bool)
	seen := make(map[string]int)
	fenced := false
	for _, line := range strings.Split(content, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			fenced = !fenced
			continue
		}
		if fenced || !strings.HasPrefix(line, "#") {
			continue
		}
		text := strings.TrimSpace(strings.TrimLeft(line, "#"))
		s := slug(text)
		if n := seen[s]; n > 0 {
			anchors[fmt.Sprintf("%s-%d", s, n)] = true
		} else {
			anchors[s] = true
		}
		seen[s]++
	}
	return anchors
}

// check says what is wrong with l, or "".
func check(l link, read func(string) (string, error)) string {
	target := l.target
	switch {
	case target == "":
		return "empty link target"
	case schemeRE.MatchString(target):
		return "points outside the repository (the docs link only to files of the repository)"
	case strings.HasPrefix(target, "/"):
		return "absolute path: link relative to the file"
	}
	path, anchor, _ := strings.Cut(target, "#")
	rel := l.file
	if path != "" {
		rel = filepath.ToSlash(filepath.Join(filepath.Dir(l.file), path))
		if rel == ".." || strings.HasPrefix(rel, "../") {
			return "resolves outside the repository (" + rel + ")"
		}
		if _, err := os.Stat(filepath.Join(repoRoot, rel)); err != nil {
			return "no such file in the repository: " + rel
		}
	}
	if anchor == "" || !strings.HasSuffix(rel, ".md") {
		return ""
	}
	content, err := read(rel)
	if err != nil {
		return err.Error()
	}
	if !anchorsOf(content)[anchor] {
		return fmt.Sprintf("%s has no heading with the anchor #%s", rel, anchor)
	}
	return ""
}

// TestLinksStayInRepository fails for every link of README.md and
// docs/*.md that leaves the repository, names a file the repository does
// not have, or a heading its Markdown file does not have.
func TestLinksStayInRepository(t *testing.T) {
	cache := make(map[string]string)
	read := func(rel string) (string, error) {
		if c, ok := cache[rel]; ok {
			return c, nil
		}
		b, err := os.ReadFile(filepath.Join(repoRoot, rel))
		if err != nil {
			return "", fmt.Errorf("read %s: %w", rel, err)
		}
		cache[rel] = string(b)
		return string(b), nil
	}
	total := 0
	for _, f := range docFiles(t) {
		content, err := read(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range linksOf(f, content) {
			total++
			if why := check(l, read); why != "" {
				t.Errorf("%s:%d: link %q: %s", l.file, l.line, l.target, why)
			}
		}
	}
	if total == 0 {
		t.Fatal("found no links at all: the link parser is broken")
	}
}

// TestCheckRefusesEscapes pins what the checker refuses, on links made up
// for the test.
func TestCheckRefusesEscapes(t *testing.T) {
	read := func(rel string) (string, error) {
		b, err := os.ReadFile(filepath.Join(repoRoot, rel))
		return string(b), err
	}
	cases := []struct {
		file, target string
		ok           bool
	}{
		{"README.md", "docs/design.md", true},
		{"README.md", "docs/kubernetes.md#metrics", true},
		{"docs/design.md", "operations.md", true},
		{"docs/design.md", "../transport/spec.md", true},
		{"docs/design.md", "#goals-and-non-goals", true},
		{"README.md", "../shared/DESIGN.md", false},
		{"docs/design.md", "../../shared/DESIGN.md", false},
		{"README.md", "docs/no-such-file.md", false},
		{"README.md", "docs/kubernetes.md#no-such-heading", false},
		{"README.md", "https://example.com/design", false},
		{"README.md", "/etc/passwd", false},
		{"README.md", "file:///etc/passwd", false},
	}
	for _, c := range cases {
		why := check(link{file: c.file, line: 1, target: c.target}, read)
		if (why == "") != c.ok {
			t.Errorf("%s -> %q: got %q, want ok=%v", c.file, c.target, why, c.ok)
		}
	}
	got := linksOf("x.md", "see [a](b.md) and ![i](c.png \"t\"), `[no](code.md)`\n```\n[no](fenced.md)\n```\n[r]: d.md\n<https://x.example>\n")
	want := []string{"b.md", "c.png", "d.md", "https://x.example"}
	var targets []string
	for _, l := range got {
		targets = append(targets, l.target)
	}
	sort.Strings(targets)
	if strings.Join(targets, " ") != strings.Join(want, " ") {
		t.Errorf("linksOf found %v, want %v", targets, want)
	}
}
