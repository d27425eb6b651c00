package monitoring

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/promql/promqltest"
	"github.com/prometheus/prometheus/rules"
	"sigs.k8s.io/yaml"
)

// This file runs Prometheus' own rule parser, PromQL parser and rule
// evaluation in process (the packages promtool's "check rules" and "test
// rules" are made of), so the tests need no promtool binary.

var promParser = parser.NewParser(parser.Options{})

// checkRuleFile parses a rule file as Prometheus loads one: YAML, durations,
// expressions, label and annotation templates.
func checkRuleFile(b []byte) []error {
	_, errs := rulefmt.Parse(b, false, model.UTF8Validation, promParser, slog.New(slog.DiscardHandler))
	return errs
}

// checkExpr parses one PromQL expression.
func checkExpr(expr string) error {
	_, err := promParser.ParseExpr(expr)
	return err
}

// alertTests is the file format of promtool's alert unit tests (the part
// used here: series and alert_rule_test).
type alertTests struct {
	RuleFiles          []string         `json:"rule_files"`
	EvaluationInterval string           `json:"evaluation_interval"`
	Tests              []alertTestGroup `json:"tests"`
}

type alertTestGroup struct {
	Name        string `json:"name"`
	Interval    string `json:"interval"`
	InputSeries []struct {
		Series string `json:"series"`
		Values string `json:"values"`
	} `json:"input_series"`
	AlertRuleTests []struct {
		EvalTime  string `json:"eval_time"`
		Alertname string `json:"alertname"`
		ExpAlerts []struct {
			ExpLabels      map[string]string `json:"exp_labels"`
			ExpAnnotations map[string]string `json:"exp_annotations"`
		} `json:"exp_alerts"`
	} `json:"alert_rule_test"`
}

func parseDuration(t *testing.T, what, s string) time.Duration {
	t.Helper()
	d, err := model.ParseDuration(s)
	if err != nil {
		t.Fatalf("%s %q: %v", what, s, err)
	}
	return time.Duration(d)
}

// runAlertTests evaluates the rules of ruleFile over each test group's
// series, as `promtool test rules` does, and fails t for every alert that
// fires other than expected (labels and annotations) at an eval_time.
func runAlertTests(t *testing.T, ruleFile string, tests alertTests) {
	t.Helper()
	every := parseDuration(t, "evaluation_interval", tests.EvaluationInterval)
	for i, tg := range tests.Tests {
		name := tg.Name
		if name == "" {
			name = fmt.Sprintf("test group %d", i+1)
		}
		t.Run(name, func(t *testing.T) { runAlertTestGroup(t, ruleFile, every, tg) })
	}
}

func runAlertTestGroup(t *testing.T, ruleFile string, every time.Duration, tg alertTestGroup) {
	var load strings.Builder
	fmt.Fprintf(&load, "load %s\n", model.Duration(parseDuration(t, "interval", tg.Interval)))
	for _, s := range tg.InputSeries {
		fmt.Fprintf(&load, "  %s %s\n", s.Series, s.Values)
	}
	suite, err := promqltest.NewLazyLoader(load.String(), promqltest.LazyLoaderOpts{})
	if err != nil {
		t.Fatalf("input_series: %v", err)
	}
	defer suite.Close()
	m := rules.NewManager(&rules.ManagerOptions{
		QueryFunc:    rules.EngineQueryFunc(suite.QueryEngine(), suite.Storage()),
		AppendableV2: suite.Storage(),
		Context:      context.Background(),
		NotifyFunc:   func(context.Context, string, ...*rules.Alert) {},
		Logger:       slog.New(slog.DiscardHandler),
		Parser:       promParser,
	})
	groups, errs := m.LoadGroups(every, labels.EmptyLabels(), "", nil, false, ruleFile)
	if len(errs) > 0 {
		t.Fatalf("load %s: %v", ruleFile, errs)
	}
	for _, g := range groups {
		for _, r := range g.Rules() {
			if ar, ok := r.(*rules.AlertingRule); ok {
				ar.SetRestored(true)
			}
		}
	}
	// The eval times, in order, and what each expects.
	byTime := map[time.Duration][]int{}
	var times []time.Duration
	for k, at := range tg.AlertRuleTests {
		d := parseDuration(t, "eval_time", at.EvalTime)
		if _, ok := byTime[d]; !ok {
			times = append(times, d)
		}
		byTime[d] = append(byTime[d], k)
	}
	slices.Sort(times)
	start := time.Unix(0, 0).UTC()
	next := 0
	for ts := start; next < len(times); ts = ts.Add(every) {
		suite.WithSamplesTill(ts, func(err error) {
			if err != nil {
				t.Fatalf("samples till %s: %v", ts.Sub(start), err)
			}
			for _, g := range groups {
				g.Eval(suite.Context(), ts)
				for _, r := range g.Rules() {
					if err := r.LastError(); err != nil {
						t.Fatalf("rule %s at %s: %v", r.Name(), ts.Sub(start), err)
					}
				}
			}
		})
		// An eval_time in [ts, ts+every) is checked against the Eval at ts.
		for next < len(times) && times[next] < ts.Add(every).Sub(start) {
			for _, k := range byTime[times[next]] {
				at := tg.AlertRuleTests[k]
				var want []string
				for _, a := range at.ExpAlerts {
					l := map[string]string{"alertname": at.Alertname}
					for k, v := range a.ExpLabels {
						l[k] = v
					}
					want = append(want, labels.FromMap(l).String()+" "+labels.FromMap(a.ExpAnnotations).String())
				}
				got := firing(groups, at.Alertname)
				slices.Sort(want)
				if !slices.Equal(got, want) {
					t.Errorf("alert %s at %s:\n  want %q\n  got  %q", at.Alertname, at.EvalTime, want, got)
				}
			}
			next++
		}
	}
}

// firing lists the firing alerts named name, as "labels annotations".
func firing(groups map[string]*rules.Group, name string) []string {
	var out []string
	for _, g := range groups {
		for _, r := range g.Rules() {
			ar, ok := r.(*rules.AlertingRule)
			if !ok || ar.Name() != name {
				continue
			}
			for _, a := range ar.ActiveAlerts() {
				if a.State == rules.StateFiring {
					out = append(out, a.Labels.String()+" "+a.Annotations.String())
				}
			}
		}
	}
	slices.Sort(out)
	return out
}

// readAlertTests reads testdata/alerts-test.yaml.
func readAlertTests(t *testing.T) (alertTests, []byte) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "alerts-test.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var at alertTests
	if err := yaml.UnmarshalStrict(b, &at); err != nil {
		t.Fatalf("testdata/alerts-test.yaml: %v", err)
	}
	if len(at.Tests) == 0 {
		t.Fatal("testdata/alerts-test.yaml has no tests")
	}
	return at, b
}
