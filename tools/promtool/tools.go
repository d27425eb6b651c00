//go:build tools

// Package tools pins promtool, Prometheus' own rule checker and rule unit
// tester, which the tests of deploy/monitoring run on the alerting rules
// (`promtool check rules`, `promtool test rules`).
package tools

import _ "github.com/prometheus/prometheus/cmd/promtool"
