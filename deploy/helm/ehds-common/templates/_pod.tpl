{{/*
Pieces of the pod spec both charts use. Probes hit the plain health port: /healthz while the
process runs, /readyz once its configuration, policy and state are loaded. Neither asks the
coordinator anything, so a network outage never restarts a node.
*/}}
{{- define "ehds.probes" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: health
  periodSeconds: 5
  failureThreshold: 60
livenessProbe:
  httpGet:
    path: /healthz
    port: health
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 6
readinessProbe:
  httpGet:
    path: /readyz
    port: health
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 3
{{- end -}}

{{- define "ehds.podAnnotations" -}}
{{- $annotations := dict -}}
{{- if .ctx.Values.metrics.podAnnotations -}}
{{- $annotations = dict "prometheus.io/scrape" "true" "prometheus.io/port" (toString .port) "prometheus.io/path" "/metrics" -}}
{{- end -}}
{{- $annotations = merge $annotations .ctx.Values.podAnnotations -}}
{{- if $annotations -}}{{- toYaml $annotations -}}{{- end -}}
{{- end -}}

{{- define "ehds.podPlacement" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "ehds.tlsSecretName" -}}
{{- .Values.tls.secretName | default (printf "%s-tls" (include "ehds.fullname" .)) -}}
{{- end -}}

{{/* Volumes every ehds pod mounts; "state" is added by each chart. */}}
{{- define "ehds.commonVolumes" -}}
- name: config
  configMap:
    name: {{ include "ehds.fullname" . }}
- name: tls
  secret:
    secretName: {{ include "ehds.tlsSecretName" . }}
    defaultMode: 0440
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
      - key: ca.crt
        path: ca.crt
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSize }}
{{- end -}}

{{- define "ehds.commonMounts" -}}
- name: config
  mountPath: /etc/ehds/config
  readOnly: true
- name: tls
  mountPath: /etc/ehds/tls
  readOnly: true
- name: tmp
  mountPath: /tmp
- name: state
  mountPath: /var/lib/ehds
{{- end -}}

{{/* The TLS file paths every configuration gets (the tls Secret's mount). */}}
{{- define "ehds.tlsConfig" -}}
{{- dict "certificate" "/etc/ehds/tls/tls.crt" "key" "/etc/ehds/tls/tls.key" "ca" "/etc/ehds/tls/ca.crt" | toYaml -}}
{{- end -}}

{{/* Fail rendering when a file the configuration names is not under values.files. */}}
{{- define "ehds.requireFile" -}}
{{- if not (hasKey .ctx.Values.files .file) -}}
{{- fail (printf "%s names %q: add it under values.files (file name -> content)" .key .file) -}}
{{- end -}}
{{- end -}}

{{- define "ehds.pvc" -}}
{{- if not .Values.persistence.existingClaim }}
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: {{ include "ehds.fullname" . }}-state
  labels:
    {{- include "ehds.labels" . | nindent 4 }}
  annotations:
    helm.sh/resource-policy: keep
spec:
  accessModes:
    {{- toYaml .Values.persistence.accessModes | nindent 4 }}
  {{- if .Values.persistence.storageClass }}
  storageClassName: {{ .Values.persistence.storageClass | quote }}
  {{- end }}
  resources:
    requests:
      storage: {{ .Values.persistence.size }}
{{- end }}
{{- end -}}

{{- define "ehds.pvcName" -}}
{{- .Values.persistence.existingClaim | default (printf "%s-state" (include "ehds.fullname" .)) -}}
{{- end -}}

{{/* The `ehds` arguments of a container: the log level, then the command. */}}
{{- define "ehds.args" -}}
{{- $args := list -}}
{{- if eq .ctx.Values.logLevel "info" -}}{{- $args = append $args "-v" -}}{{- end -}}
{{- concat $args .command | toJson -}}
{{- end -}}
