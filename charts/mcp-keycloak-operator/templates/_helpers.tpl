{{/* Chart name, cut to the 63 characters of a DNS label. */}}
{{- define "mko.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release name, plus the chart name unless the release name contains it. */}}
{{- define "mko.fullname" -}}
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

{{- define "mko.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mko.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mko.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mko.labels" -}}
helm.sh/chart: {{ include "mko.chart" . }}
{{ include "mko.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: mcp-keycloak-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "mko.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mko.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Operator image reference: repository, then @digest or :tag (default appVersion). */}}
{{- define "mko.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Lease of the leader election (one per release). */}}
{{- define "mko.leaseName" -}}
{{- include "mko.fullname" . }}
{{- end }}

{{/*
Namespaces the operator watches in namespace scope: rbac.namespaces, or the release namespace.
The operator watches one namespace (WATCH_NAMESPACE); more than one is refused.
*/}}
{{- define "mko.watchNamespaces" -}}
{{- $nss := .Values.rbac.namespaces | default (list .Release.Namespace) }}
{{- if gt (len $nss) 1 }}
{{- fail (printf "rbac.namespaces lists %d namespaces (%s), but the operator watches one namespace (WATCH_NAMESPACE); install one release per namespace, or use rbac.scope=cluster" (len $nss) (join ", " $nss)) }}
{{- end }}
{{- join "," $nss }}
{{- end }}

{{/*
What the operator does with the Kubernetes API, shared by the ClusterRole (cluster scope) and
the per-namespace Roles (namespace scope). Each rule is proven necessary by tests/rbac.rs, which
removes one verb at a time and watches the operator fail; the operator never deletes anything
(owned objects go by garbage collection through their ownerReferences).
*/}}
{{- define "mko.rules" -}}
# Watch caches and finalizers of both kinds; McpServers read their McpAuthPolicy.
- apiGroups: ["mcpauth.dev"]
  resources: ["mcpauthpolicies"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["mcpauth.dev"]
  resources: ["mcpservers"]
  verbs: ["list", "watch", "patch"]
# Conditions and the rest of .status (server-side apply).
- apiGroups: ["mcpauth.dev"]
  resources: ["mcpauthpolicies/status", "mcpservers/status"]
  verbs: ["patch"]
# Owned objects carry blockOwnerDeletion; the OwnerReferencesPermissionEnforcement admission
# plugin (e.g. OpenShift) then requires update on the owner's finalizers.
- apiGroups: ["mcpauth.dev"]
  resources: ["mcpservers/finalizers"]
  verbs: ["update"]
# Keycloak admin credentials and CA bundles (read); each McpServer's client Secret (server-side
# apply, watched by label). An apply that creates the object also needs create.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch"]
# Each McpServer's Service and Deployment (server-side apply, watched by label).
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
# Each McpServer's NetworkPolicy (server-side apply, watched by label); delete when a server
# opts out.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Live verification: each McpServer's pods (listed by label), whose pod IPs the operator asks.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
# Events on McpAuthPolicies and McpServers; patch bumps the series of a repeated event.
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/* A label map as `k=v,k2=v2` (sorted by key), the operator's selector flag format. */}}
{{- define "mko.labelList" -}}
{{- $out := list -}}
{{- range $k, $v := . -}}
{{- $out = append $out (printf "%s=%s" $k $v) -}}
{{- end -}}
{{- join "," $out -}}
{{- end }}
