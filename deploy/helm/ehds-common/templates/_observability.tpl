{{/* The Service the metrics are scraped through (ClusterIP, the plain health port only). */}}
{{- define "ehds.metricsService" -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "ehds.fullname" .ctx }}-metrics
  labels:
    {{- include "ehds.labels" .ctx | nindent 4 }}
    ehds.eu/endpoint: metrics
spec:
  type: ClusterIP
  selector:
    {{- include "ehds.selectorLabels" .ctx | nindent 4 }}
  ports:
    - name: health
      port: {{ .port }}
      targetPort: health
      protocol: TCP
{{- end -}}

{{/* Optional Prometheus Operator ServiceMonitor (a CRD: rendered only when enabled). */}}
{{- define "ehds.serviceMonitor" -}}
{{- if .Values.metrics.serviceMonitor.enabled }}
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: {{ include "ehds.fullname" . }}
  labels:
    {{- include "ehds.labels" . | nindent 4 }}
    {{- with .Values.metrics.serviceMonitor.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      {{- include "ehds.selectorLabels" . | nindent 6 }}
      ehds.eu/endpoint: metrics
  endpoints:
    - port: health
      path: /metrics
      interval: {{ .Values.metrics.serviceMonitor.interval }}
{{- end }}
{{- end -}}

{{/* Optional Grafana dashboard ConfigMap (picked up by Grafana's dashboard sidecar by label). */}}
{{- define "ehds.dashboards" -}}
{{- if .Values.grafanaDashboard.enabled }}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "ehds.fullname" . }}-dashboards
  labels:
    {{- include "ehds.labels" . | nindent 4 }}
    {{- with .Values.grafanaDashboard.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
data:
{{ (.Files.Glob "dashboards/*.json").AsConfig | indent 2 }}
{{- end }}
{{- end -}}

{{/* Optional cert-manager Certificate for this participant (subject as `ehds pki issue`). */}}
{{- define "ehds.certificate" -}}
{{- $cm := .ctx.Values.tls.certManager -}}
{{- if $cm.enabled }}
{{- if not $cm.issuerRef }}{{ fail "tls.certManager.issuerRef is required when tls.certManager.enabled" }}{{ end }}
{{- if not $cm.federation }}{{ fail "tls.certManager.federation is required: the federation CA's name (subject O)" }}{{ end }}
apiVersion: cert-manager.io/v1
kind: Certificate
metadata:
  name: {{ include "ehds.fullname" .ctx }}
  labels:
    {{- include "ehds.labels" .ctx | nindent 4 }}
spec:
  secretName: {{ include "ehds.tlsSecretName" .ctx }}
  commonName: {{ $cm.name | default .ctx.Release.Name }}
  subject:
    organizations:
      - {{ $cm.federation | quote }}
    organizationalUnits:
      - {{ .role }}
  {{- with $cm.dnsNames }}
  dnsNames:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  duration: {{ $cm.duration }}
  renewBefore: {{ $cm.renewBefore }}
  privateKey:
    algorithm: ECDSA
    size: 256
    rotationPolicy: Always
  usages:
    - digital signature
    - {{ ternary "server auth" "client auth" (eq .role "coordinator") }}
  issuerRef:
    {{- toYaml $cm.issuerRef | nindent 4 }}
{{- end }}
{{- end -}}
