package monitoring

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// writeRuleFile writes groups as a Prometheus rule file in dir and returns
// its path and contents.
func writeRuleFile(t *testing.T, dir string, groups RuleGroups) (string, []byte) {
	t.Helper()
	b, err := yaml.Marshal(groups)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "rules.yaml")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path, b
}

// TestRulesParse: the PrometheusRule's spec is a rule file that
// Prometheus' own parser accepts (expressions, durations, templates of
// the annotations), every alert has the annotations docs/monitoring.md
// documents and a runbook that is a section of it.
func TestRulesParse(t *testing.T) {
	g, err := Rules()
	if err != nil {
		t.Fatal(err)
	}
	_, b := writeRuleFile(t, t.TempDir(), g)
	if errs := checkRuleFile(b); len(errs) > 0 {
		t.Fatalf("the rules do not parse: %v", errs)
	}
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "monitoring.md"))
	if err != nil {
		t.Fatal(err)
	}
	var alerts []string
	for _, gr := range g.Groups {
		for _, r := range gr.Rules {
			if r.Alert == "" {
				t.Errorf("group %s: a rule that is not an alert: %+v", gr.Name, r)
				continue
			}
			alerts = append(alerts, r.Alert)
			for _, a := range []string{"summary", "description", "runbook_url"} {
				if r.Annotations[a] == "" {
					t.Errorf("%s: no %s", r.Alert, a)
				}
			}
			if r.Labels["severity"] == "" {
				t.Errorf("%s: no severity label", r.Alert)
			}
			file, anchor, _ := strings.Cut(r.Annotations["runbook_url"], "#")
			if file != "docs/monitoring.md" || !strings.Contains(string(doc), "\n### "+anchorHeading(anchor)) {
				t.Errorf("%s: runbook %q is not a ### section of docs/monitoring.md", r.Alert, r.Annotations["runbook_url"])
			}
		}
	}
	for _, want := range []string{"VoldeltaRoundFailing", "VoldeltaRPOHigh", "VoldeltaTargetDegraded", "VoldeltaCertificateExpiring", "VoldeltaAgentDown"} {
		if !slices.Contains(alerts, want) {
			t.Errorf("no alert %s", want)
		}
	}
}

// anchorHeading is the heading GitHub's anchor a names, for alerts' names:
// the anchor is the heading in lower case.
func anchorHeading(a string) string {
	for _, h := range []string{"VoldeltaRoundFailing", "VoldeltaRPOHigh", "VoldeltaTargetDegraded", "VoldeltaCertificateExpiring", "VoldeltaAgentDown"} {
		if strings.ToLower(h) == a {
			return h
		}
	}
	return "\x00" + a // no such section
}

// TestAlertsUnitTests runs the alert unit tests of
// testdata/alerts-test.yaml (promtool's format) on the PrometheusRule's
// rules with Prometheus' own rule evaluation.
func TestAlertsUnitTests(t *testing.T) {
	g, err := Rules()
	if err != nil {
		t.Fatal(err)
	}
	path, _ := writeRuleFile(t, t.TempDir(), g)
	tests, raw := readAlertTests(t)
	runAlertTests(t, path, tests)
	// Every alert is exercised.
	for _, gr := range g.Groups {
		for _, r := range gr.Rules {
			if !strings.Contains(string(raw), "alertname: "+r.Alert+"\n") {
				t.Errorf("testdata/alerts-test.yaml does not test %s", r.Alert)
			}
		}
	}
}

// TestDashboardQueriesParse: every expression of the dashboard (panels and
// variables) parses with Prometheus' own parser, Grafana's interval
// variables replaced by a duration.
func TestDashboardQueriesParse(t *testing.T) {
	q, err := DashboardQueries(dashboardJSON)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range q {
		e := PromQL(x.Expr)
		if strings.Contains(e, "$__") {
			t.Errorf("%s: a Grafana variable PromQL does not replace: %s", x.Where, x.Expr)
		}
		if err := checkExpr(e); err != nil {
			t.Errorf("%s: %s: %v", x.Where, e, err)
		}
	}
}

// TestDashboard: the dashboard's data source and namespace, VolumeSync and
// volume are variables, every panel queries through the data source
// variable, and the panels the docs list are there.
func TestDashboard(t *testing.T) {
	var d struct {
		SchemaVersion int `json:"schemaVersion"`
		UID           string
		Templating    struct {
			List []struct{ Name, Type string } `json:"list"`
		} `json:"templating"`
		Panels []struct {
			Type, Title string
			Datasource  *struct{ UID string }   `json:"datasource"`
			Targets     []struct{ Expr string } `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(dashboardJSON, &d); err != nil {
		t.Fatal(err)
	}
	if d.SchemaVersion < 36 || d.UID == "" {
		t.Errorf("schemaVersion %d, uid %q", d.SchemaVersion, d.UID)
	}
	var vars []string
	for _, v := range d.Templating.List {
		vars = append(vars, v.Name)
	}
	for _, v := range []string{"datasource", "namespace", "volumesync", "volume"} {
		if !slices.Contains(vars, v) {
			t.Errorf("no variable %s (have %v)", v, vars)
		}
	}
	var titles []string
	for _, p := range d.Panels {
		if p.Type == "row" {
			continue
		}
		titles = append(titles, p.Title)
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" || len(p.Targets) == 0 {
			t.Errorf("panel %q: data source %+v, %d queries", p.Title, p.Datasource, len(p.Targets))
		}
	}
	for _, want := range []string{"Rounds per volume", "RPO: age of the replica's data", "Bytes: read by the scan vs sent vs on the wire",
		"Round time: snapshot wait vs scan and send", "Failures", "Degraded", "Pull progress (store targets)", "Certificates: time to expiry"} {
		if !slices.Contains(titles, want) {
			t.Errorf("no panel %q", want)
		}
	}
}

func TestMetricNames(t *testing.T) {
	for _, c := range []struct {
		expr string
		want []string
	}{
		{`up`, []string{"up"}},
		{`sum by (namespace, volumesync, result) (increase(voldelta_agent_rounds_total{namespace=~"$namespace", volumesync=~"$volumesync"}[$__rate_interval]))`,
			[]string{"voldelta_agent_rounds_total"}},
		{`voldelta_agent_replica_lag_seconds > on (namespace, volumesync) group_left () (2 * max by (namespace, volumesync) (voldelta_agent_sync_interval_seconds) + 1800)`,
			[]string{"voldelta_agent_replica_lag_seconds", "voldelta_agent_sync_interval_seconds"}},
		{`histogram_quantile(0.9, sum(rate(a_bucket{le!="+Inf", x="by (y)"}[5m] offset 1h)) by (le))`, []string{"a_bucket"}},
		{`time() - min without (pod) (b) < 14 * 86400 and on() c unless ignoring(x) d or bool e`, []string{"b", "c", "d", "e"}},
		{"f # a comment naming g\n+ h", []string{"f", "h"}},
		{`label_replace(i, "dst", "$1", "src", "(.*)")`, []string{"i"}},
		{`sum by(job)(j) / count(k) by (job)`, []string{"j", "k"}},
	} {
		got, err := MetricNames(c.expr)
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("MetricNames(%q) = %v, %v; want %v", c.expr, got, err, c.want)
		}
	}
	for _, bad := range []string{`{__name__="x"}`, `sum(x{a="b"`, `x{a="b}`} {
		if got, err := MetricNames(bad); err == nil {
			t.Errorf("MetricNames(%q) = %v, want an error", bad, got)
		}
	}
}

// TestMissingFindsATypo: a panel added with a misspelt metric is reported,
// with where it is used, by the check the Kubernetes integration tests run
// on the agent's and the receiver's scrapes.
func TestMissingFindsATypo(t *testing.T) {
	q, err := Queries()
	if err != nil {
		t.Fatal(err)
	}
	exported := map[string]bool{}
	for _, x := range q {
		names, err := MetricNames(x.Expr)
		if err != nil {
			t.Fatalf("%s: %v", x.Where, err)
		}
		for _, n := range names {
			exported[n] = true
		}
	}
	var d map[string]any
	if err := json.Unmarshal(dashboardJSON, &d); err != nil {
		t.Fatal(err)
	}
	d["panels"] = append(d["panels"].([]any), map[string]any{"title": "New panel",
		"targets": []any{map[string]any{"expr": `sum(rate(voldelta_agent_sent_byte_total{namespace=~"$namespace"}[$__rate_interval]))`}}})
	b, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	q2, err := DashboardQueries(b)
	if err != nil {
		t.Fatal(err)
	}
	missing, err := Missing(q2, exported, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"voldelta_agent_sent_byte_total (dashboard: New panel)"}; !slices.Equal(missing, want) {
		t.Errorf("Missing = %v, want %v", missing, want)
	}
}
