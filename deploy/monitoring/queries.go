// Package monitoring holds voldelta's Grafana dashboard and Prometheus
// alerts (the files beside this one) and reads their PromQL expressions,
// so that tests can check them: the rules with Prometheus' own parser and
// rule evaluation, every metric
// they name against what the agent and the receiver export.
package monitoring

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"sigs.k8s.io/yaml"
)

//go:embed grafana-dashboard.json
var dashboardJSON []byte

//go:embed prometheusrule.yaml
var prometheusRuleYAML []byte

// Query is one PromQL expression of the dashboard or the rules.
type Query struct {
	Where string // "dashboard: <panel title>", "variable <name>" or "rule <alert>"
	Expr  string
}

// RuleGroups is the spec.groups of a PrometheusRule: a rule file in
// Prometheus' own format.
type RuleGroups struct {
	Groups []RuleGroup `json:"groups"`
}

// RuleGroup is one group of rules.
type RuleGroup struct {
	Name  string `json:"name"`
	Rules []Rule `json:"rules"`
}

// Rule is an alerting or recording rule.
type Rule struct {
	Alert       string            `json:"alert,omitempty"`
	Record      string            `json:"record,omitempty"`
	Expr        string            `json:"expr"`
	For         string            `json:"for,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// Rules returns the groups of deploy/monitoring/prometheusrule.yaml.
func Rules() (RuleGroups, error) { return ParseRules(prometheusRuleYAML) }

// ParseRules reads a monitoring.coreos.com/v1 PrometheusRule's spec.
func ParseRules(b []byte) (RuleGroups, error) {
	var pr struct {
		APIVersion string     `json:"apiVersion"`
		Kind       string     `json:"kind"`
		Metadata   any        `json:"metadata"`
		Spec       RuleGroups `json:"spec"`
	}
	if err := yaml.UnmarshalStrict(b, &pr); err != nil {
		return RuleGroups{}, fmt.Errorf("parse PrometheusRule: %w", err)
	}
	if pr.APIVersion != "monitoring.coreos.com/v1" || pr.Kind != "PrometheusRule" {
		return RuleGroups{}, fmt.Errorf("parse PrometheusRule: apiVersion %q kind %q", pr.APIVersion, pr.Kind)
	}
	if len(pr.Spec.Groups) == 0 {
		return RuleGroups{}, fmt.Errorf("parse PrometheusRule: no groups")
	}
	return pr.Spec, nil
}

// Queries returns every expression of the dashboard and the rules.
func Queries() ([]Query, error) {
	q, err := DashboardQueries(dashboardJSON)
	if err != nil {
		return nil, err
	}
	g, err := Rules()
	if err != nil {
		return nil, err
	}
	for _, gr := range g.Groups {
		for _, r := range gr.Rules {
			q = append(q, Query{Where: "rule " + r.Alert + r.Record, Expr: r.Expr})
		}
	}
	return q, nil
}

type dashPanel struct {
	Title   string `json:"title"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
	Panels []dashPanel `json:"panels"` // of a collapsed row
}

// DashboardQueries returns the expressions of a Grafana dashboard's panels
// and of its query variables (label_values(SELECTOR, label) yields
// SELECTOR).
func DashboardQueries(b []byte) ([]Query, error) {
	var d struct {
		Panels     []dashPanel `json:"panels"`
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Type  string `json:"type"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("parse dashboard: %w", err)
	}
	var out []Query
	var walk func([]dashPanel)
	walk = func(ps []dashPanel) {
		for _, p := range ps {
			for _, t := range p.Targets {
				out = append(out, Query{Where: "dashboard: " + p.Title, Expr: t.Expr})
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		q := ""
		switch x := v.Query.(type) {
		case string:
			q = x
		case map[string]any:
			q, _ = x["query"].(string)
		}
		m := labelValues.FindStringSubmatch(q)
		if m == nil {
			return nil, fmt.Errorf("dashboard variable %s: query %q is not label_values(SELECTOR, LABEL)", v.Name, q)
		}
		out = append(out, Query{Where: "variable " + v.Name, Expr: m[1]})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("parse dashboard: no queries")
	}
	return out, nil
}

var labelValues = regexp.MustCompile(`^\s*label_values\((.+),\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*$`)

// Grafana's interval variables, which are not PromQL: a PromQL parser is
// given the expression with them replaced by a duration.
var grafanaIntervals = regexp.MustCompile(`\$__(rate_interval|interval|range)\b|\$\{__(rate_interval|interval|range)\}`)

// PromQL returns expr with Grafana's interval variables replaced by 5m;
// other variables ($namespace) appear only inside label matchers' strings,
// which stay valid PromQL.
func PromQL(expr string) string { return grafanaIntervals.ReplaceAllString(expr, "5m") }

// Keywords and functions of PromQL: identifiers that are not metric names.
var promqlWords = map[string]bool{
	"and": true, "or": true, "unless": true, "by": true, "without": true, "on": true, "ignoring": true,
	"group_left": true, "group_right": true, "offset": true, "bool": true, "inf": true, "nan": true, "atan2": true,
}

// listKeywords are followed by a parenthesised list of label names.
var listKeywords = map[string]bool{"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true}

// MetricNames returns the metric names expr selects, sorted and unique: the
// identifiers that are not inside a string, a label matcher's braces or a
// range's brackets, not keywords, not label lists (by, on, group_left ...)
// and not functions or aggregations (an identifier followed by "(" or by
// "by"/"without" and then "("). A selector written as {__name__="x"} is
// refused, as is anything the scan cannot follow (unbalanced brackets).
func MetricNames(expr string) ([]string, error) {
	toks, err := lex(expr)
	if err != nil {
		return nil, err
	}
	var names []string
	for i := 0; i < len(toks); i++ {
		t := toks[i]
		if t.kind == tokName && strings.Contains(t.text, "__name__") {
			return nil, fmt.Errorf("%q: selecting by __name__ is not supported here; name the metric", expr)
		}
		if t.kind != tokIdent {
			continue
		}
		next := func(k int) token {
			if i+k < len(toks) {
				return toks[i+k]
			}
			return token{}
		}
		switch {
		case listKeywords[t.text]:
			if next(1).text == "(" { // skip the label list
				j := i + 2
				for j < len(toks) && toks[j].text != ")" {
					j++
				}
				i = j
			}
		case promqlWords[t.text]:
		case next(1).text == "(":
			// a function or an aggregation
		case (next(1).text == "by" || next(1).text == "without") && next(2).text == "(":
			// an aggregation with its grouping before the parentheses
		default:
			if !slices.Contains(names, t.text) {
				names = append(names, t.text)
			}
		}
	}
	slices.Sort(names)
	return names, nil
}

type tokKind int

const (
	tokOther tokKind = iota
	tokIdent         // an identifier outside braces, brackets and strings
	tokName          // the inside of a label matcher's braces
)

type token struct {
	kind tokKind
	text string
}

var identRe = regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*`)
var numberRe = regexp.MustCompile(`^(0x[0-9a-fA-F]+|[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?|\.[0-9]+)([smhdwy]|ms)?`)

// lex splits expr into identifiers, the contents of braces (kept whole)
// and single characters; strings, ranges and numbers are dropped.
func lex(expr string) ([]token, error) {
	var out []token
	s := expr
	for len(s) > 0 {
		c := s[0]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			s = s[1:]
		case c == '#': // a comment, to the end of the line
			if i := strings.IndexByte(s, '\n'); i >= 0 {
				s = s[i:]
			} else {
				s = ""
			}
		case c == '"' || c == '\'' || c == '`':
			n, err := skipString(s)
			if err != nil {
				return nil, fmt.Errorf("%q: %w", expr, err)
			}
			s = s[n:]
		case c == '{':
			n, err := closing(s, '{', '}')
			if err != nil {
				return nil, fmt.Errorf("%q: %w", expr, err)
			}
			out = append(out, token{kind: tokName, text: s[:n]})
			s = s[n:]
		case c == '[':
			n, err := closing(s, '[', ']')
			if err != nil {
				return nil, fmt.Errorf("%q: %w", expr, err)
			}
			s = s[n:]
		case numberRe.MatchString(s) && (c >= '0' && c <= '9' || c == '.'):
			s = s[len(numberRe.FindString(s)):]
		case identRe.MatchString(s):
			id := identRe.FindString(s)
			out = append(out, token{kind: tokIdent, text: id})
			s = s[len(id):]
		default:
			out = append(out, token{text: s[:1]})
			s = s[1:]
		}
	}
	return out, nil
}

// skipString returns the length of the quoted string s starts with.
func skipString(s string) (int, error) {
	q := s[0]
	for i := 1; i < len(s); i++ {
		switch {
		case s[i] == '\\' && q != '`':
			i++
		case s[i] == q:
			return i + 1, nil
		}
	}
	return 0, fmt.Errorf("unterminated string")
}

// closing returns the length of s up to the bracket that closes its first
// character, skipping strings.
func closing(s string, open, close byte) (int, error) {
	depth := 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '"', '\'', '`':
			n, err := skipString(s[i:])
			if err != nil {
				return 0, err
			}
			i += n - 1
		case open:
			depth++
		case close:
			depth--
			if depth == 0 {
				return i + 1, nil
			}
		}
	}
	return 0, fmt.Errorf("unbalanced %c", open)
}

// ScrapeGenerated are the series Prometheus adds to every target's scrape:
// they are not in any /metrics.
var ScrapeGenerated = []string{"up", "scrape_duration_seconds", "scrape_samples_scraped",
	"scrape_samples_post_metric_relabeling", "scrape_series_added"}

// Missing returns the metric names the queries use that exported lacks
// (exported holds every sample name of a scrape: a histogram's _bucket,
// _sum and _count), each with where it is used, skipping the names for
// which skip is true.
func Missing(queries []Query, exported map[string]bool, skip func(string) bool) ([]string, error) {
	var missing []string
	for _, q := range queries {
		names, err := MetricNames(q.Expr)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", q.Where, err)
		}
		for _, n := range names {
			if exported[n] || slices.Contains(ScrapeGenerated, n) || (skip != nil && skip(n)) {
				continue
			}
			missing = append(missing, fmt.Sprintf("%s (%s)", n, q.Where))
		}
	}
	return missing, nil
}
