{{/*
coordinator.yaml, rendered from values.config with the keys the chart owns set from its
mounts: TLS from the tls Secret, the state in SQLite on the PVC or in PostgreSQL through the URL
file of the database Secret, the CRL from its ConfigMap, listeners on all interfaces.
*/}}
{{- define "coordinator.healthPort" -}}9464{{- end -}}
{{- define "coordinator.grpcPort" -}}{{- (get (.Values.config.listen | default dict) "port") | default 50051 -}}{{- end -}}
{{- define "coordinator.tokenPort" -}}50052{{- end -}}
{{- define "coordinator.external" -}}{{- if .Values.database.secretName -}}true{{- end -}}{{- end -}}

{{- define "coordinator.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- $_ := set $config "tls" (include "ehds.tlsConfig" . | fromYaml) -}}
{{- $_ := set $config "listen" (dict "host" "0.0.0.0" "port" (include "coordinator.grpcPort" . | atoi)) -}}
{{- $_ := set $config "health" (dict "host" "0.0.0.0" "port" (include "coordinator.healthPort" . | atoi)) -}}
{{- if .Values.database.secretName -}}
{{- $_ := set $config "state" (dict "url_file" "/etc/ehds/db/url") -}}
{{- else -}}
{{- $_ := set $config "state" (dict "url" "sqlite:////var/lib/ehds/coordinator-state.db") -}}
{{- end -}}
{{- if .Values.crl.configMapName -}}
{{- $revocation := deepCopy (get $config "revocation" | default dict) -}}
{{- $_ := set $revocation "crl" "/etc/ehds/crl/crl.pem" -}}
{{- $_ := set $config "revocation" $revocation -}}
{{- end -}}
{{- if $config.oidc -}}
{{- $_ := set $config "token_listen" (dict "host" "0.0.0.0" "port" (include "coordinator.tokenPort" . | atoi)) -}}
{{- include "ehds.requireFile" (dict "ctx" . "key" "config.oidc.jwks" "file" $config.oidc.jwks) -}}
{{- end -}}
{{- range $index, $key := (get (get $config "permits" | default dict) "hdab_keys" | default list) -}}
{{- include "ehds.requireFile" (dict "ctx" $ "key" (printf "config.permits.hdab_keys.%d.public_key" $index) "file" $key.public_key) -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}
