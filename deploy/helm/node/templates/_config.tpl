{{/*
node.yaml, rendered from values.config with the keys the chart owns set from its mounts: TLS
from the tls Secret, the policy beside it, the state on the PVC, the health port on all
interfaces (probes and Prometheus reach it; the NetworkPolicy admits only the latter).
*/}}
{{- define "node.healthPort" -}}9465{{- end -}}

{{- define "node.isSpark" -}}
{{- if hasKey (.Values.config.cdm | default dict) "spark" -}}true{{- end -}}
{{- end -}}

{{- define "node.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- $coordinator := required "config.coordinator.address is required: the coordinator's host:port" (get (get $config "coordinator" | default dict) "address") -}}
{{- $cdm := deepCopy (get $config "cdm" | default dict) -}}
{{- if .Values.cdmDatabase.secretName -}}
{{- if hasKey $cdm "url" -}}{{- fail "config.cdm.url and cdmDatabase.secretName: give one (a database URL with a password belongs in the Secret)" -}}{{- end -}}
{{- $_ := set $cdm "url_file" "/etc/ehds/db/url" -}}
{{- end -}}
{{- if not (or (hasKey $cdm "url") (hasKey $cdm "url_file") (hasKey $cdm "spark")) -}}
{{- fail "config.cdm is required: cdm.url (a DuckDB file under cdmVolume.mountPath), cdm.spark (a Parquet layout), or cdmDatabase.secretName (a PostgreSQL URL in a Secret)" -}}
{{- end -}}
{{- $_ := set $config "cdm" $cdm -}}
{{- $_ := set $config "tls" (include "ehds.tlsConfig" . | fromYaml) -}}
{{- $_ := set $config "policy" "policy.yaml" -}}
{{- $_ := set $config "state" "/var/lib/ehds/node-state.db" -}}
{{- $_ := set $config "health" (dict "host" "0.0.0.0" "port" (include "node.healthPort" . | atoi)) -}}
{{- toYaml $config -}}
{{- end -}}

{{- define "node.policy" -}}
{{- $policy := .Values.policy -}}
{{- $_ := required "policy.version is required: the policy document's own version" $policy.version -}}
{{- $keys := required "policy.hdab_keys is required: the HDAB public keys this node trusts" $policy.hdab_keys -}}
{{- range $index, $key := $keys -}}
{{- include "ehds.requireFile" (dict "ctx" $ "key" (printf "policy.hdab_keys.%d.public_key" $index) "file" $key.public_key) -}}
{{- end -}}
{{- toYaml $policy -}}
{{- end -}}
