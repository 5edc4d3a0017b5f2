{{/* Names, labels and the few decisions every template shares. */}}

{{- define "veil.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "veil.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Selector labels of one component: stable across upgrades (selectors are immutable). */}}
{{- define "veil.selectorLabels" -}}
app.kubernetes.io/name: {{ include "veil.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "veil.labels" -}}
{{ include "veil.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: veil
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* An image reference: repository@digest when pinned, else repository:tag (refused when
     image.requireDigest is set: an unpinned image is not what the launch measurement covers). */}}
{{- define "veil.image" -}}
{{- $img := index .root.Values.image .name -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else if .root.Values.image.requireDigest -}}
{{- fail (printf "image.%s.digest is required (image.requireDigest is true)" .name) -}}
{{- else -}}
{{- printf "%s:%s" $img.repository $img.tag -}}
{{- end -}}
{{- end -}}

{{- define "veil.coordinatorUrl" -}}
{{- printf "http://%s-coordinator.%s.svc:%d" (include "veil.fullname" .) .Release.Namespace (int .Values.coordinator.service.port) -}}
{{- end -}}

{{- define "veil.gatewayUrl" -}}
{{- printf "http://%s-gateway.%s.svc:%d" (include "veil.fullname" .) .Release.Namespace (int .Values.gateway.service.port) -}}
{{- end -}}

{{/* Node selector for a confidential node pool (AKS, GKE), merged with the component's own. */}}
{{- define "veil.nodeSelector" -}}
{{- $sel := dict -}}
{{- $provider := .root.Values.confidentialNodes.provider -}}
{{- if eq $provider "aks" -}}
{{- $_ := set $sel "kubernetes.azure.com/security-type" "ConfidentialVM" -}}
{{- else if eq $provider "gke" -}}
{{- $_ := set $sel "cloud.google.com/gke-confidential-nodes-instance-type" .root.Values.confidentialNodes.gkeInstanceType -}}
{{- end -}}
{{- $sel = merge (deepCopy .own) $sel -}}
{{- if $sel -}}
nodeSelector:
  {{- toYaml $sel | nindent 2 }}
{{- end -}}
{{- end -}}

{{/* The database URL Secret the coordinators read (an existing one, or the bundled one). */}}
{{- define "veil.databaseSecret" -}}
{{- if .Values.coordinator.database.existingSecret -}}
{{- .Values.coordinator.database.existingSecret -}}
{{- else if .Values.postgres.enabled -}}
{{- printf "%s-postgres" (include "veil.fullname" .) -}}
{{- else -}}
{{- fail "coordinator.database.existingSecret is required unless postgres.enabled is true (coordinators share state through PostgreSQL)" -}}
{{- end -}}
{{- end -}}

{{/* The client policy the helm test pod (and NOTES.txt) use: this release's in-cluster URLs. */}}
{{- define "veil.clientPolicy" -}}
{{- $p := deepCopy .Values.tests.clientPolicy -}}
{{- $_ := set $p "coordinator_url" (include "veil.coordinatorUrl" .) -}}
{{- $_ := set $p "gateway_url" (include "veil.gatewayUrl" .) -}}
{{- toPrettyJson $p -}}
{{- end -}}

{{/* Egress to the cluster's DNS only (kube-system), so Service names resolve. */}}
{{- define "veil.dnsEgress" -}}
- to:
    - namespaceSelector:
        matchLabels: {kubernetes.io/metadata.name: kube-system}
  ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}
{{- end -}}
