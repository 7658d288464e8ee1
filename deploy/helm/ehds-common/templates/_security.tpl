{{/*
Security contexts are not values: every ehds container runs as the image's non-root user with
no privilege escalation, no capabilities and a read-only root file system. What it writes goes
to /var/lib/ehds (state) and /tmp (emptyDir).
*/}}
{{- define "ehds.uid" -}}10001{{- end -}}

{{- define "ehds.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ include "ehds.uid" . }}
runAsGroup: {{ include "ehds.uid" . }}
fsGroup: {{ include "ehds.uid" . }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "ehds.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ include "ehds.uid" . }}
runAsGroup: {{ include "ehds.uid" . }}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}
