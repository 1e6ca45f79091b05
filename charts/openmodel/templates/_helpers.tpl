{{/* Base name: the release name when it already says openmodel, else <release>-openmodel. */}}
{{- define "openmodel.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "openmodel.operatorName" -}}
{{- printf "%s-operator" (include "openmodel.fullname" .) -}}
{{- end -}}

{{- define "openmodel.serviceAccountName" -}}
{{- default (include "openmodel.operatorName" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "openmodel.selectorLabels" -}}
app.kubernetes.io/name: openmodel
app.kubernetes.io/component: operator
{{- end -}}

{{- define "openmodel.gatewaySelectorLabels" -}}
app.kubernetes.io/name: openmodel
app.kubernetes.io/component: gateway
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "openmodel.labels" -}}
app.kubernetes.io/name: openmodel
app.kubernetes.io/part-of: openmodel
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "openmodel.operatorLabels" -}}
{{ include "openmodel.labels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{- /* repository:tag, or repository:tag@digest with image.digest (the digest decides). */}}
{{- define "openmodel.image" -}}
{{- $ref := printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- if .Values.image.digest -}}
{{- $ref = printf "%s@%s" $ref .Values.image.digest -}}
{{- end -}}
{{- $ref -}}
{{- end -}}

{{- define "openmodel.gatewayName" -}}
{{- printf "%s-gateway" (include "openmodel.fullname" .) -}}
{{- end -}}

{{- /* The gateway's in-cluster URL (its Service, port 8080). */}}
{{- define "openmodel.gatewayURL" -}}
{{- printf "%s://%s.%s.svc.%s:8080" (ternary "https" "http" (not (empty .Values.gateway.tls.secretName))) (include "openmodel.gatewayName" .) .Release.Namespace (.Values.config.clusterDomain | default "cluster.local") -}}
{{- end -}}
