{{/* The chart's name: the app.kubernetes.io/name label. */}}
{{- define "voldelta.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The prefix of object names: the release name if it contains the chart's name. */}}
{{- define "voldelta.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A component's name (and its ServiceAccount's): dict "ctx" . "component" "agent". */}}
{{- define "voldelta.componentName" -}}
{{- printf "%s-%s" (include "voldelta.fullname" .ctx) .component -}}
{{- end -}}

{{/* The labels a component's selectors use: the kustomize bases' (selectors are immutable). */}}
{{- define "voldelta.selectorLabels" -}}
app.kubernetes.io/name: {{ include "voldelta.name" .ctx }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end -}}

{{/* The labels of a component's objects: its selector labels and Helm's. */}}
{{- define "voldelta.labels" -}}
{{ include "voldelta.selectorLabels" . }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end -}}

{{/* The labels of a component's pods: its selector labels and the release. */}}
{{- define "voldelta.podLabels" -}}
{{ include "voldelta.selectorLabels" . }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- end -}}

{{/* The pods' Prometheus annotations and the component's own. */}}
{{- define "voldelta.podAnnotations" -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .ctx.Values.metrics.port | quote }}
{{- with .annotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "voldelta.image" -}}
{{- printf "%s:%s" .Values.image.repository (toString .Values.image.tag) -}}
{{- end -}}

{{/* The flags every component takes: metrics, probes, log format. */}}
{{- define "voldelta.commonArgs" -}}
- --metrics-addr=:{{ .Values.metrics.port }}
- --health-addr=:{{ .Values.metrics.healthPort }}
- --log-format={{ .Values.logFormat }}
{{- end -}}

{{/* The metrics and health ports and probes of a container. */}}
{{- define "voldelta.probes" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: health
  periodSeconds: 20
readinessProbe:
  httpGet:
    path: /readyz
    port: health
  periodSeconds: 10
{{- end -}}

{{- define "voldelta.metricsPorts" -}}
- name: metrics
  containerPort: {{ .Values.metrics.port }}
- name: health
  containerPort: {{ .Values.metrics.healthPort }}
{{- end -}}

{{/* Whether the metrics Services are rendered. */}}
{{- define "voldelta.metricsServices" -}}
{{- if or .Values.metrics.service.enabled .Values.metrics.serviceMonitor.enabled }}true{{ end -}}
{{- end -}}

{{/* The pod-level scheduling fields of a component's values. */}}
{{- define "voldelta.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The NODE_NAME of the pod's node. */}}
{{- define "voldelta.nodeNameEnv" -}}
env:
- name: NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
{{- end -}}
