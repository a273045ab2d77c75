{{- define "kpath.labels" -}}
app.kubernetes.io/name: kpath-agent
app.kubernetes.io/part-of: kpath
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}
{{- define "kpath.selector" -}}
app.kubernetes.io/name: kpath-agent
{{- end -}}
