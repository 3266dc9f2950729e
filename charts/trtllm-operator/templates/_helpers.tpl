{{/*
Chart name, truncated to the 63 characters a label value allows.
*/}}
{{- define "trtllm-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's objects. It contains the release name, so cluster-scoped objects
(ClusterRole, ClusterRoleBinding) of two releases do not collide.
*/}}
{{- define "trtllm-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "trtllm-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object of the release. managed-by is Helm here: the operator marks what *it*
creates with app.kubernetes.io/managed-by=trtllm-operator, and its own objects must not look
like its children.
*/}}
{{- define "trtllm-operator.labels" -}}
helm.sh/chart: {{ include "trtllm-operator.chart" . }}
{{ include "trtllm-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: trtllm-operator
{{- end }}

{{- define "trtllm-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "trtllm-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "trtllm-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "trtllm-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "trtllm-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
RBAC, in one place. The rules the operator needs in every namespace it watches: the cluster-wide
ClusterRole renders them, and so does each per-namespace Role when watchNamespaces is set.
Least privilege, verb by verb:
- its own kinds: read and watch, patch metadata (finalizers on LLMEngine) and status; never
  create, update or delete a user's object;
- Jobs, Deployments, Services it owns: written with server-side apply (patch), created,
  deleted when a target or deployment goes away;
- pods: read only (build results, serving readiness);
- ConfigMaps: the build entrypoint ConfigMap, created once and never deleted (shared, immutable);
- Events: posted on the objects it reconciles.
*/}}
{{- /*
The operator's permissions, one rule per capability, each proven necessary by
tests/e2e/test_rbac.py (removing any one breaks part of the engine-build and serving flow).
Reads are list+watch only (kopf watches, keeps indexes; never GETs). Writes are server-side
apply (create+patch), the immutable build-entrypoint ConfigMap (create), deletions of Jobs of
removed targets, status and finalizer patches, and Events.
*/}}
{{- define "trtllm-operator.namespacedRules" -}}
- apiGroups: ["trtllm.dev"]
  resources: ["llmengines"]
  verbs: ["list", "watch"]
- apiGroups: ["trtllm.dev"]
  resources: ["llmengines"]
  verbs: ["patch"]
- apiGroups: ["trtllm.dev"]
  resources: ["llmengines/status"]
  verbs: ["patch"]
- apiGroups: ["trtllm.dev"]
  resources: ["llmdeployments"]
  verbs: ["list", "watch"]
- apiGroups: ["trtllm.dev"]
  resources: ["llmdeployments/status"]
  verbs: ["patch"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["list", "watch"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["create"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["list", "watch"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["list", "watch"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["create"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["patch"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["list", "watch"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["create", "patch"]
# A GPU type taken off an LLMDeployment's spec.slices, or a switch to LeaderWorkerSet
# groups: its Deployment goes.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["list", "watch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["create", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
# spec.inferencePool (Gateway API Inference Extension): asked whether the CRD is served (list),
# applied, and deleted when the field goes. Harmless where the CRD is not installed.
- apiGroups: ["inference.networking.k8s.io"]
  resources: ["inferencepools"]
  verbs: ["list", "create", "patch", "delete"]
# spec.autoscaling without KEDA: the operator's HorizontalPodAutoscalers (watched: their
# status is the Autoscaling condition; KEDA's HPAs carry the ScaledObject's labels and are
# watched with them), applied, and deleted when autoscaling is turned off.
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["list", "watch"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["create", "patch"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["delete"]
{{- if .Values.autoscaling.keda }}
# KEDA ScaledObjects: "is the kind served" is one list of at most one object; applied, and
# deleted when autoscaling is turned off or moves to an HPA.
- apiGroups: ["keda.sh"]
  resources: ["scaledobjects"]
  verbs: ["list"]
- apiGroups: ["keda.sh"]
  resources: ["scaledobjects"]
  verbs: ["create", "patch"]
- apiGroups: ["keda.sh"]
  resources: ["scaledobjects"]
  verbs: ["delete"]
{{- end }}
{{- if .Values.serving.podMonitors }}
# A Prometheus Operator PodMonitor per LLMDeployment with metrics on, where the kind is served.
- apiGroups: ["monitoring.coreos.com"]
  resources: ["podmonitors"]
  verbs: ["list"]
- apiGroups: ["monitoring.coreos.com"]
  resources: ["podmonitors"]
  verbs: ["create", "patch"]
- apiGroups: ["monitoring.coreos.com"]
  resources: ["podmonitors"]
  verbs: ["delete"]
{{- end }}
{{- if .Values.leaderWorkerSet.enabled }}
# Multi-node serving: LeaderWorkerSet groups and the SSH key Secret of each (created once,
# never read). An engine rebuilt with other parallelism replaces the Deployment by an LWS or
# back: the workload of the old shape is deleted.
- apiGroups: ["leaderworkerset.x-k8s.io"]
  resources: ["leaderworkersets"]
  verbs: ["list", "watch"]
- apiGroups: ["leaderworkerset.x-k8s.io"]
  resources: ["leaderworkersets"]
  verbs: ["create", "patch"]
- apiGroups: ["leaderworkerset.x-k8s.io"]
  resources: ["leaderworkersets"]
  verbs: ["delete"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create"]
{{- end }}
{{- end }}

{{- define "trtllm-operator.clusterRules" -}}
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["list", "watch"]
{{- end }}
