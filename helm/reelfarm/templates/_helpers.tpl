{{- define "reelfarm.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "reelfarm.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "reelfarm.image" -}}
{{- $root := index . 0 -}}{{- $role := index . 1 -}}
{{- printf "%s/reelfarm-%s:%s" $root.Values.image.registry $role ($root.Values.image.tag | default $root.Chart.AppVersion) -}}
{{- end -}}

{{- define "reelfarm.etcdEndpoints" -}}
{{- if .Values.etcd.external -}}
{{- join "," .Values.etcd.external -}}
{{- else if .Values.etcd.tls.enabled -}}
{{- printf "https://%s-etcd.%s.svc:2379" (include "reelfarm.fullname" .) .Release.Namespace -}}
{{- else -}}
{{- printf "http://%s-etcd:2379" (include "reelfarm.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* Object store settings and credentials, shared by schedulers and workers. */}}
{{- define "reelfarm.storeEnv" -}}
- name: REELFARM_BUCKET
  value: {{ .Values.objectStore.bucket | quote }}
- name: REELFARM_S3_REGION
  value: {{ .Values.objectStore.region | quote }}
- name: REELFARM_S3_PATH_STYLE
  value: {{ .Values.objectStore.pathStyle | quote }}
{{- with .Values.objectStore.endpoint }}
- name: REELFARM_S3_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- with .Values.objectStore.prefix }}
- name: REELFARM_S3_PREFIX
  value: {{ . | quote }}
{{- end }}
{{- with .Values.objectStore.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef: {name: {{ . | quote }}, key: {{ $.Values.objectStore.accessKeyIdKey | quote }}}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef: {name: {{ . | quote }}, key: {{ $.Values.objectStore.secretAccessKeyKey | quote }}}
{{- end }}
{{- if .Values.objectStore.caSecret.name }}
- name: REELFARM_S3_CA_FILE
  value: /etc/reelfarm/s3-ca/ca.crt
{{- end }}
- name: REELFARM_LOG_FORMAT
  value: {{ .Values.telemetry.logFormat | quote }}
{{- with .Values.telemetry.otlpEndpoint }}
- name: REELFARM_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- end -}}

{{- define "reelfarm.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
capabilities:
  drop: [ALL]
{{- end -}}

{{/* Where the catalog file is mounted, and the env var that points reelfarm at it. */}}
{{- define "reelfarm.modelsEnv" -}}
{{- if .Values.models.catalog }}
- name: REELFARM_MODELS
  value: /etc/reelfarm/models/models.toml
{{- end }}
{{- end -}}

{{- define "reelfarm.modelsMount" -}}
{{- if .Values.models.catalog }}
- {name: models, mountPath: /etc/reelfarm/models, readOnly: true}
{{- end }}
{{- end -}}

{{- define "reelfarm.modelsVolume" -}}
{{- if .Values.models.catalog }}
- name: models
  configMap: {name: {{ include "reelfarm.fullname" . }}-models}
{{- end }}
{{- end -}}

{{/* The S3 endpoint's extra CA, mounted where REELFARM_S3_CA_FILE points. */}}
{{- define "reelfarm.storeMount" -}}
{{- if .Values.objectStore.caSecret.name }}
- {name: s3-ca, mountPath: /etc/reelfarm/s3-ca, readOnly: true}
{{- end }}
{{- end -}}

{{- define "reelfarm.storeVolume" -}}
{{- with .Values.objectStore.caSecret }}
{{- if .name }}
- name: s3-ca
  secret:
    secretName: {{ .name | quote }}
    items: [{key: {{ .key | quote }}, path: ca.crt}]
{{- end }}
{{- end }}
{{- end -}}
