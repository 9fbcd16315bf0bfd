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

{{/*
What the operator may do in each watched namespace, and why. Nothing more.
*/}}
{{- define "hartslag.rules" -}}
# Heartbeats: listed and watched into the operator's cache; patch takes off the finalizer
# earlier versions added (none is added now); create, patch and delete serve the
# management API, which is a facade over the resources.
- apiGroups: ["hartslag.dev"]
  resources: ["heartbeats"]
  verbs: ["list", "watch", "patch", "create", "delete"]
# Applications: cached, and patched only to take off the finalizer earlier versions added.
- apiGroups: ["hartslag.dev"]
  resources: ["applications"]
  verbs: ["list", "watch", "patch"]
# AlertChannels: cached (the Heartbeats naming them resolve against the cache), never
# written but for their status.
- apiGroups: ["hartslag.dev"]
  resources: ["alertchannels"]
  verbs: ["get", "list", "watch"]
# Status is written by server-side apply, which is a patch.
- apiGroups: ["hartslag.dev"]
  resources: ["applications/status", "heartbeats/status", "alertchannels/status"]
  verbs: ["patch"]
# Issued Secrets are owned by their resource with blockOwnerDeletion; clusters running the
# OwnerReferencesPermissionEnforcement admission plugin require this to set it.
- apiGroups: ["hartslag.dev"]
  resources: ["applications/finalizers", "heartbeats/finalizers"]
  verbs: ["update"]
# Secrets. list, watch: the operator lists and watches only Secrets labelled
# hartslag.dev/token (its issued and adopted token Secrets) and Secrets labelled
# hartslag.dev/channel-secret (which AlertChannels may read), but RBAC cannot limit a list
# or watch to a label selector. get: a Secret named by tokenSecretName that is not labelled
# yet is read once, to check its hartslag.dev/adopt annotation (no selector can filter on
# annotations) and type; one that does not opt in is never written. create: issue tokens.
# patch: add ping-url and the label to an adopted Secret, restore a missing key in an
# issued one. No update and no delete: issued Secrets go with their resource, through the
# garbage collector.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch"]
# CronJobs named by cronJobRef, or annotated hartslag.dev/monitor, and their Jobs: cached
# and watched, never written (one rule covers batch/v1 and batch/v1beta1). Pods: read only
# when a Job has failed, for the exit code of its failed container.
- apiGroups: ["batch"]
  resources: ["cronjobs", "jobs"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
# Events on the resources (state changes, refusals, issued tokens) and on CronJobs whose
# annotations cannot be followed.
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}

{{/* The Lease that keeps the operator to one running instance. */}}
{{- define "hartslag.lease" -}}
{{ include "hartslag.fullname" . }}
{{- end -}}

{{/* The namespaces the operator watches, as its Lease announces them. */}}
{{- define "hartslag.scope" -}}
{{- if .Values.scope.clusterWide -}}*{{- else -}}{{ join "," .Values.scope.namespaces }}{{- end -}}
{{- end -}}

{{/* Secret holding the dashboard admin token. */}}
{{- define "hartslag.adminSecret" -}}
{{- default (printf "%s-admin" (include "hartslag.fullname" .)) .Values.adminSecretName -}}
{{- end -}}

{{/* A CIDR from a CIDR or a single address, as a NetworkPolicy ipBlock needs it. */}}
{{- define "hartslag.cidr" -}}
{{- if contains "/" . -}}{{ . }}{{- else if contains ":" . -}}{{ . }}/128{{- else -}}{{ . }}/32{{- end -}}
{{- end -}}

{{- define "hartslag.databaseSecret" -}}
{{- if .Values.database.existingSecret -}}{{ .Values.database.existingSecret }}{{- else -}}{{ include "hartslag.fullname" . }}-database{{- end -}}
{{- end -}}

{{/* Whether the data lives in PostgreSQL (database.url or database.existingSecret): "true" or "". */}}
{{- define "hartslag.database" -}}
{{- if or .Values.database.existingSecret .Values.database.url -}}true{{- end -}}
{{- end -}}

{{/*
The drain after SIGTERM: shutdownDelay, else 5s with a database (rolling updates: another
replica takes the requests) and 0s with sled (Recreate: no other pod to take them).
*/}}
{{- define "hartslag.shutdownDelay" -}}
{{- .Values.shutdownDelay | default (ternary "5s" "0s" (eq (include "hartslag.database" .) "true")) -}}
{{- end -}}
