{{/*
Names and labels. The component is the parent chart's name (coordinator or node), so that a
node's NetworkPolicy selects exactly the pods its Deployment makes.
*/}}
{{- define "ehds.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ehds.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "ehds.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ehds.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: {{ .Chart.Name }}
{{- end -}}

{{- define "ehds.labels" -}}
{{ include "ehds.selectorLabels" . }}
app.kubernetes.io/part-of: ehds
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The image: a digest wins over a tag; the tag defaults to appVersion (+ "-spark"). */}}
{{- define "ehds.image" -}}
{{- $image := .ctx.Values.image -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- $tag := $image.tag | default (printf "%s%s" .ctx.Chart.AppVersion (ternary "-spark" "" (default false .spark))) -}}
{{- printf "%s:%s" $image.repository $tag -}}
{{- end -}}
{{- end -}}
