{{/* Names, labels and derived values of the fleet-limiter chart. */}}

{{- define "fleet-limiter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "fleet-limiter.fullname" -}}
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

{{- define "fleet-limiter.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object; pass a dict with "root" (the top context) and "component". */}}
{{- define "fleet-limiter.labels" -}}
helm.sh/chart: {{ include "fleet-limiter.chart" .root }}
{{ include "fleet-limiter.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: fleet-limiter
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end -}}

{{- define "fleet-limiter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fleet-limiter.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "fleet-limiter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "fleet-limiter.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "fleet-limiter.peeringName" -}}
{{- default (include "fleet-limiter.fullname" .) .Values.operator.peeringName -}}
{{- end -}}

{{- define "fleet-limiter.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "fleet-limiter.limiterImage" -}}
{{- printf "%s:%s" (default .Values.image.repository .Values.limiter.image.repository) (default (default .Chart.AppVersion .Values.image.tag) .Values.limiter.image.tag) -}}
{{- end -}}

{{/* Whether the in-chart Redis is deployed: asked for, and no external URL given. */}}
{{- define "fleet-limiter.redisInChart" -}}
{{- if and .Values.redis.enabled (not .Values.redis.url) -}}true{{- end -}}
{{- end -}}

{{/* The operator's default Redis URL: the external one, else the in-chart one, else none. */}}
{{- define "fleet-limiter.redisUrl" -}}
{{- if .Values.redis.url -}}
{{- .Values.redis.url -}}
{{- else if include "fleet-limiter.redisInChart" . -}}
{{- printf "redis://%s-redis.%s.svc:6379/0" (include "fleet-limiter.fullname" .) .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/* Combinations that cannot work: fail the install with what to change. */}}
{{- define "fleet-limiter.validate" -}}
{{- if and .Values.operator.standalone (gt (int .Values.operator.replicas) 1) -}}
{{- fail "operator.standalone=true with operator.replicas > 1: standalone replicas do not peer, so every replica would act on every policy; keep peering (standalone=false) or run one replica" -}}
{{- end -}}
{{- if and (not .Values.serviceAccount.create) (not .Values.serviceAccount.name) -}}
{{- fail "serviceAccount.create=false needs serviceAccount.name: the existing ServiceAccount the operator runs as" -}}
{{- end -}}
{{- if and (not .Values.rbac.create) .Values.serviceAccount.create -}}
{{- fail "rbac.create=false with serviceAccount.create=true: the new ServiceAccount would have no permissions; bind your own roles to an existing account (serviceAccount.create=false, serviceAccount.name)" -}}
{{- end -}}
{{- if and .Values.operator.metricsPort (eq (int .Values.operator.metricsPort) (int .Values.operator.healthPort)) -}}
{{- fail "operator.metricsPort equals operator.healthPort: the metrics and the liveness endpoint need ports of their own; change one of them" -}}
{{- end -}}
{{- if and .Values.serviceMonitor.enabled (not .Values.operator.metricsPort) -}}
{{- fail "serviceMonitor.enabled=true with operator.metricsPort=0: the operator's ServiceMonitor scrapes its metrics port; set operator.metricsPort (e.g. 8082)" -}}
{{- end -}}
{{- end -}}

{{/* Labels of the limiter Services the operator creates for each policy (operator/builders.py: labels()). */}}
{{- define "fleet-limiter.limiterServiceSelector" -}}
app.kubernetes.io/name: fleet-limiter
app.kubernetes.io/component: limiter
app.kubernetes.io/managed-by: fleet-limiter-operator
{{- end -}}

{{/* The operator's rules in a namespace it serves: what it does there, and nothing more. */}}
{{- define "fleet-limiter.operatorRules" -}}
# Watch policies, keep kopf's finalizer and annotations on them, and write their status.
- apiGroups: [fleetlimiter.io]
  resources: [ratelimitpolicies]
  verbs: [get, list, watch, patch]
- apiGroups: [fleetlimiter.io]
  resources: [ratelimitpolicies/status]
  verbs: [get, patch]
# Owner references with blockOwnerDeletion need this where OwnerReferencesPermissionEnforcement is on.
- apiGroups: [fleetlimiter.io]
  resources: [ratelimitpolicies/finalizers]
  verbs: [update]
# The fleet of each policy. list/watch: the operator follows its Deployments' readiness;
# delete: a policy's pods are stopped before its Redis keys are removed.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services, serviceaccounts]
  verbs: [get, create, patch]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, create, patch]
# Events on the policies (what was created, updated, projected, refused).
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- if .Values.operator.readSecrets }}
# Only to read the Redis URL of policies with spec.redis.secretRef (get, never list or watch).
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
{{- end }}
{{- end }}
