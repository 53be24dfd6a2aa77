{{/* Names and labels. */}}
{{- define "swarmstate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "swarmstate.fullname" -}}
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

{{- define "swarmstate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "swarmstate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "swarmstate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "swarmstate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "swarmstate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "swarmstate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret the pod reads: the user's, or the chart's. */}}
{{- define "swarmstate.secretName" -}}
{{- default (include "swarmstate.fullname" .) .Values.existingSecret.name -}}
{{- end -}}

{{/* host:port list of the Redis URL, by mode. */}}
{{- define "swarmstate.redisHosts" -}}
{{- $r := .Values.redis -}}
{{- if eq $r.mode "standalone" -}}
{{- printf "%s:%v" $r.standalone.host $r.standalone.port -}}
{{- else if eq $r.mode "sentinel" -}}
{{- join "," $r.sentinel.sentinels -}}
{{- else -}}
{{- join "," $r.cluster.nodes -}}
{{- end -}}
{{- end -}}

{{/* The Redis URL; $(REDIS_PASSWORD) is expanded by Kubernetes from the env var set before it. */}}
{{- define "swarmstate.redisUrl" -}}
{{- $r := .Values.redis -}}
{{- $scheme := "redis" -}}
{{- if eq $r.mode "sentinel" -}}{{- $scheme = ternary "rediss+sentinel" "redis+sentinel" $r.tls -}}
{{- else if eq $r.mode "cluster" -}}{{- $scheme = ternary "rediss-cluster" "redis-cluster" $r.tls -}}
{{- else -}}{{- $scheme = ternary "rediss" "redis" $r.tls -}}
{{- end -}}
{{- $auth := "" -}}
{{- if include "swarmstate.hasRedisPassword" . -}}
{{- $auth = printf "%s:$(REDIS_PASSWORD)@" $r.username -}}
{{- else if $r.username -}}
{{- $auth = printf "%s@" $r.username -}}
{{- end -}}
{{- $path := "" -}}
{{- if eq $r.mode "sentinel" -}}{{- $path = printf "/%s/%v" $r.sentinel.masterName $r.sentinel.db -}}
{{- else if eq $r.mode "standalone" -}}{{- $path = printf "/%v" $r.standalone.db -}}
{{- end -}}
{{- printf "%s://%s%s%s" $scheme $auth (include "swarmstate.redisHosts" .) $path -}}
{{- end -}}

{{/* Non-empty when the pod gets REDIS_PASSWORD. */}}
{{- define "swarmstate.hasRedisPassword" -}}
{{- if .Values.existingSecret.name -}}{{- if .Values.existingSecret.redisPasswordKey -}}yes{{- end -}}
{{- else if .Values.redis.password -}}yes{{- end -}}
{{- end -}}

{{/* Non-empty when the pod gets SWARMSTATE_BACKUP_KEY. */}}
{{- define "swarmstate.hasBackupKey" -}}
{{- if .Values.existingSecret.name -}}{{- if .Values.existingSecret.backupKeyKey -}}yes{{- end -}}
{{- else if .Values.backupKey -}}yes{{- end -}}
{{- end -}}

{{/* Non-empty when the pod gets a tokens file. */}}
{{- define "swarmstate.hasTokens" -}}
{{- if .Values.existingSecret.name -}}{{- if .Values.existingSecret.tokensKey -}}yes{{- end -}}
{{- else if .Values.auth.tokensToml -}}yes{{- end -}}
{{- end -}}
