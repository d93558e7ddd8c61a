{{/* TLS, tokens and identities (README "Running on Kubernetes", "Securing the farm"). */}}

{{/* Headless Service whose DNS names (POD.<this>.NS.svc) the schedulers advertise with TLS:
     a certificate cannot name pod IPs. Kept within a 63-character DNS label. */}}
{{- define "reelfarm.schedulerPeers" -}}
{{- printf "%s-scheduler-peers" (include "reelfarm.fullname" . | trunc 47 | trimSuffix "-") -}}
{{- end -}}

{{- define "reelfarm.schedulerURL" -}}
{{- if .Values.tls.enabled -}}
{{- printf "https://%s-scheduler.%s.svc:%v" (include "reelfarm.fullname" .) .Release.Namespace .Values.scheduler.port -}}
{{- else -}}
{{- printf "http://%s-scheduler:%v" (include "reelfarm.fullname" .) .Values.scheduler.port -}}
{{- end -}}
{{- end -}}

{{/* The Secret with the schedulers' tls.crt and tls.key. */}}
{{- define "reelfarm.tlsSecret" -}}
{{- .Values.tls.secretName | default (printf "%s-scheduler-tls" (include "reelfarm.fullname" .)) -}}
{{- end -}}

{{/* The schedulers' certificate names: the Service, and every pod under the headless one. */}}
{{- define "reelfarm.schedulerDnsNames" -}}
{{- $name := printf "%s-scheduler" (include "reelfarm.fullname" .) -}}
{{- $ns := .Release.Namespace -}}
{{- list $name (printf "%s.%s.svc" $name $ns) (printf "%s.%s.svc.%s" $name $ns .Values.clusterDomain) (printf "*.%s.%s.svc" (include "reelfarm.schedulerPeers" .) $ns) | toJson -}}
{{- end -}}

{{- define "reelfarm.etcdClientSecret" -}}
{{- .Values.etcd.tls.clientSecretName | default (printf "%s-etcd-client" (include "reelfarm.fullname" .)) -}}
{{- end -}}

{{- define "reelfarm.etcdServerSecret" -}}
{{- .Values.etcd.tls.serverSecretName | default (printf "%s-etcd-server" (include "reelfarm.fullname" .)) -}}
{{- end -}}

{{/* Whether schedulers check tokens: then every worker needs a token or a certificate, and
     a worker pod's own `reelfarm drain` (preStop) could not act for its worker. */}}
{{- define "reelfarm.authOn" -}}
{{- if .Values.auth.adminTokenSecret.name }}true{{ end -}}
{{- end -}}

{{/* Settings that cannot work together fail the install with the fix, not the pods later. */}}
{{- define "reelfarm.checkSecurity" -}}
{{- $tls := .Values.tls -}}
{{- if and $tls.certManager.enabled (not $tls.enabled) -}}
{{- fail "tls.certManager.enabled needs tls.enabled" -}}
{{- end -}}
{{- if and $tls.enabled (not $tls.certManager.enabled) (not $tls.secretName) -}}
{{- fail "tls.enabled: name the Secret with the schedulers' certificate (tls.secretName) or let cert-manager issue it (tls.certManager.enabled)" -}}
{{- end -}}
{{- if and $tls.certManager.enabled (not $tls.certManager.issuerRef.name) -}}
{{- fail "tls.certManager.enabled: name the issuer (tls.certManager.issuerRef.name)" -}}
{{- end -}}
{{- if $tls.workerCertificates.csi.enabled -}}
{{- if not $tls.enabled -}}
{{- fail "tls.workerCertificates.csi.enabled: worker certificates are presented over TLS; set tls.enabled" -}}
{{- end -}}
{{- if not $tls.workerCertificates.csi.issuerName -}}
{{- fail "tls.workerCertificates.csi.enabled: name the issuer of worker certificates (tls.workerCertificates.csi.issuerName)" -}}
{{- end -}}
{{- end -}}
{{- $etcd := .Values.etcd.tls -}}
{{- if and $etcd.certManager.enabled (not $etcd.enabled) -}}
{{- fail "etcd.tls.certManager.enabled needs etcd.tls.enabled" -}}
{{- end -}}
{{- if $etcd.enabled -}}
{{- range .Values.etcd.external -}}
{{- if not (hasPrefix "https://" .) -}}
{{- fail (printf "etcd.tls.enabled: etcd.external endpoint %s must be https://" .) -}}
{{- end -}}
{{- end -}}
{{- if $etcd.certManager.enabled -}}
{{- if not $etcd.certManager.issuerRef.name -}}
{{- fail "etcd.tls.certManager.enabled: name the issuer (etcd.tls.certManager.issuerRef.name)" -}}
{{- end -}}
{{- else -}}
{{- if not $etcd.clientSecretName -}}
{{- fail "etcd.tls.enabled: name the Secret with the schedulers' etcd client certificate (etcd.tls.clientSecretName) or set etcd.tls.certManager.enabled" -}}
{{- end -}}
{{- if and (not .Values.etcd.external) (not $etcd.serverSecretName) -}}
{{- fail "etcd.tls.enabled: name the Secret with the bundled etcd's certificate (etcd.tls.serverSecretName) or set etcd.tls.certManager.enabled" -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and .Values.auth.adminTokenSecret.name (not .Values.auth.workerTokenSecret.name) (not $tls.workerCertificates.csi.enabled) -}}
{{- fail "auth.adminTokenSecret: every call then needs credentials; give workers auth.workerTokenSecret or tls.workerCertificates.csi" -}}
{{- end -}}
{{- end -}}

{{/* Schedulers: where each secret file is mounted, and the variables that point at it.
     Files only: no secret is ever an env value. */}}
{{- define "reelfarm.schedulerSecurityEnv" -}}
{{- if .Values.tls.enabled }}
- name: REELFARM_TLS_CERT_FILE
  value: /etc/reelfarm/tls/tls.crt
- name: REELFARM_TLS_KEY_FILE
  value: /etc/reelfarm/tls/tls.key
{{- if .Values.tls.workerCertificates.csi.enabled }}
- name: REELFARM_TLS_CLIENT_CA_FILE
  value: /etc/reelfarm/tls/worker-ca.crt
{{- end }}
{{- end }}
{{- if .Values.etcd.tls.enabled }}
- name: REELFARM_ETCD_CA_FILE
  value: /etc/reelfarm/etcd-tls/ca.crt
- name: REELFARM_ETCD_CERT_FILE
  value: /etc/reelfarm/etcd-tls/tls.crt
- name: REELFARM_ETCD_KEY_FILE
  value: /etc/reelfarm/etcd-tls/tls.key
{{- end }}
{{- if .Values.auth.adminTokenSecret.name }}
- name: REELFARM_ADMIN_TOKEN_FILE
  value: /etc/reelfarm/tokens/admin.token
{{- end }}
{{- if .Values.auth.workerTokenSecret.name }}
- name: REELFARM_WORKER_TOKEN_FILE
  value: /etc/reelfarm/tokens/worker.token
{{- end }}
{{- end -}}

{{- define "reelfarm.schedulerSecurityMounts" -}}
{{- if .Values.tls.enabled }}
- {name: tls, mountPath: /etc/reelfarm/tls, readOnly: true}
{{- end }}
{{- if .Values.etcd.tls.enabled }}
- {name: etcd-tls, mountPath: /etc/reelfarm/etcd-tls, readOnly: true}
{{- end }}
{{- if or .Values.auth.adminTokenSecret.name .Values.auth.workerTokenSecret.name }}
- {name: tokens, mountPath: /etc/reelfarm/tokens, readOnly: true}
{{- end }}
{{- end -}}

{{- define "reelfarm.schedulerSecurityVolumes" -}}
{{- $tls := .Values.tls -}}
{{- if $tls.enabled }}
- name: tls
  projected:
    sources:
      - secret:
          name: {{ include "reelfarm.tlsSecret" . | quote }}
          items: [{key: tls.crt, path: tls.crt}, {key: tls.key, path: tls.key}]
      {{- if $tls.workerCertificates.csi.enabled }}
      {{- $ca := $tls.workerCertificates.ca }}
      - secret:
          # The CA of worker certificates; default: the CA of the schedulers' own certificate.
          name: {{ $ca.secretName | default $tls.ca.secretName | default (include "reelfarm.tlsSecret" .) | quote }}
          items: [{key: {{ $ca.key | quote }}, path: worker-ca.crt}]
      {{- end }}
{{- end }}
{{- if .Values.etcd.tls.enabled }}
- name: etcd-tls
  secret:
    secretName: {{ include "reelfarm.etcdClientSecret" . | quote }}
    items: [{key: ca.crt, path: ca.crt}, {key: tls.crt, path: tls.crt}, {key: tls.key, path: tls.key}]
{{- end }}
{{- with .Values.auth }}
{{- if or .adminTokenSecret.name .workerTokenSecret.name }}
- name: tokens
  projected:
    sources:
      {{- with .adminTokenSecret }}{{ if .name }}
      - secret: {name: {{ .name | quote }}, items: [{key: {{ .key | quote }}, path: admin.token}]}
      {{- end }}{{ end }}
      {{- with .workerTokenSecret }}{{ if .name }}
      - secret: {name: {{ .name | quote }}, items: [{key: {{ .key | quote }}, path: worker.token}]}
      {{- end }}{{ end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Workers: the CA they trust for the schedulers' certificate, and who they are: a per-pod
     certificate from the cert-manager csi-driver (Common Name: the pod's name, the worker
     id) or else the shared worker token. */}}
{{- define "reelfarm.workerCsiIdentity" -}}
{{- and .Values.tls.enabled .Values.tls.workerCertificates.csi.enabled | ternary "true" "" -}}
{{- end -}}

{{- define "reelfarm.workerSecurityEnv" -}}
{{- if .Values.tls.enabled }}
- name: REELFARM_TLS_CA_FILE
  value: /etc/reelfarm/tls/ca.crt
{{- end }}
{{- if include "reelfarm.workerCsiIdentity" . }}
- name: REELFARM_TLS_CERT_FILE
  value: /etc/reelfarm/identity/tls.crt
- name: REELFARM_TLS_KEY_FILE
  value: /etc/reelfarm/identity/tls.key
{{- else if .Values.auth.workerTokenSecret.name }}
- name: REELFARM_TOKEN_FILE
  value: /etc/reelfarm/tokens/worker.token
{{- end }}
{{- end -}}

{{- define "reelfarm.workerSecurityMounts" -}}
{{- if .Values.tls.enabled }}
- {name: tls, mountPath: /etc/reelfarm/tls, readOnly: true}
{{- end }}
{{- if include "reelfarm.workerCsiIdentity" . }}
- {name: identity, mountPath: /etc/reelfarm/identity, readOnly: true}
{{- else if .Values.auth.workerTokenSecret.name }}
- {name: tokens, mountPath: /etc/reelfarm/tokens, readOnly: true}
{{- end }}
{{- end -}}

{{- define "reelfarm.workerSecurityVolumes" -}}
{{- $tls := .Values.tls -}}
{{- if $tls.enabled }}
- name: tls
  secret:
    # ca.crt alone: the schedulers' key stays out of worker pods.
    secretName: {{ $tls.ca.secretName | default (include "reelfarm.tlsSecret" .) | quote }}
    items: [{key: {{ $tls.ca.key | quote }}, path: ca.crt}]
{{- end }}
{{- if include "reelfarm.workerCsiIdentity" . }}
{{- with $tls.workerCertificates.csi }}
- name: identity
  csi:
    driver: csi.cert-manager.io
    readOnly: true
    volumeAttributes:
      csi.cert-manager.io/issuer-name: {{ .issuerName | quote }}
      csi.cert-manager.io/issuer-kind: {{ .issuerKind | quote }}
      csi.cert-manager.io/issuer-group: {{ .issuerGroup | quote }}
      # Expanded by the csi-driver, not Kubernetes: the pod's name, which is the worker id.
      csi.cert-manager.io/common-name: "${POD_NAME}"
      csi.cert-manager.io/key-usages: "client auth,digital signature,key encipherment"
      csi.cert-manager.io/key-encoding: PKCS8
      csi.cert-manager.io/duration: {{ .duration | quote }}
      # The worker runs as group 10001 (reelfarm.containerSecurity): let it read its key.
      csi.cert-manager.io/fs-group: "10001"
{{- end }}
{{- else if .Values.auth.workerTokenSecret.name }}
{{- with .Values.auth.workerTokenSecret }}
- name: tokens
  secret:
    secretName: {{ .name | quote }}
    items: [{key: {{ .key | quote }}, path: worker.token}]
{{- end }}
{{- end }}
{{- end -}}
