{{- define "hartslag.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "hartslag.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "hartslag.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "hartslag.externalURL" -}}
{{- if .Values.externalURL -}}
{{- .Values.externalURL | trimSuffix "/" -}}
{{- else -}}
{{- printf "http://%s.%s.svc:%v" (include "hartslag.fullname" .) .Release.Namespace .Values.service.port -}}
{{- end -}}
{{- end -}}

{{- define "hartslag.smtpSecret" -}}
{{- if .Values.smtp.existingSecret -}}{{ .Values.smtp.existingSecret }}{{- else -}}{{ include "hartslag.fullname" . }}-smtp{{- end -}}
{{- end -}}

{{- define "hartslag.rules" -}}
- apiGroups: ["hartslag.dev"]
  resources: ["applications", "heartbeats"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["hartslag.dev"]
  resources: ["applications/status", "heartbeats/status"]
  verbs: ["get", "patch"]
- apiGroups: ["hartslag.dev"]
  resources: ["applications/finalizers", "heartbeats/finalizers"]
  verbs: ["update"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}

{{/* Secret holding the dashboard admin token. */}}
{{- define "hartslag.adminSecret" -}}
{{- default (printf "%s-admin" (include "hartslag.fullname" .)) .Values.adminSecretName -}}
{{- end -}}

{{/* A CIDR from a CIDR or a single address, as a NetworkPolicy ipBlock needs it. */}}
{{- define "hartslag.cidr" -}}
{{- if contains "/" . -}}{{ . }}{{- else if contains ":" . -}}{{ . }}/128{{- else -}}{{ . }}/32{{- end -}}
{{- end -}}
