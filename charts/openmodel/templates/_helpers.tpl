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

{{- define "openmodel.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
