{{/* Names: <release> when it contains the chart name (the usual `inference-engine`), else <release>-<chart>. */}}
{{- define "ie.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ie.fullname" -}}
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

{{/* The Redis objects' name; room left for the suffix within 63 characters. */}}
{{- define "ie.redisName" -}}
{{- printf "%s-redis" (include "ie.fullname" . | trunc 57 | trimSuffix "-") -}}
{{- end -}}

{{- define "ie.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object; pass (dict "ctx" $ "component" "server"). */}}
{{- define "ie.labels" -}}
helm.sh/chart: {{ include "ie.chart" .ctx }}
{{ include "ie.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: inference-engine
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels: immutable on a Deployment, so never anything that changes between upgrades.
The component keeps the server's selector off the chart's Redis pods. */}}
{{- define "ie.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ie.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "ie.image" -}}
{{- $tag := .Values.image.tag | default (printf "%s-%s" .Chart.AppVersion .Values.image.variant) -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "ie.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ie.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Redis URL the server gets in its configuration (not the Secret case, which is env). */}}
{{- define "ie.redisUrl" -}}
{{- if .Values.rateLimit.redis.deploy -}}
{{- printf "redis://%s.%s.svc.%s:6379/0" (include "ie.redisName" .) .Release.Namespace .Values.clusterDomain -}}
{{- else -}}
{{- .Values.rateLimit.redis.url -}}
{{- end -}}
{{- end -}}

{{/* The server's YAML layer: `config` with rate_limit written over from `rateLimit`. */}}
{{- define "ie.serverConfig" -}}
{{- $rl := .Values.rateLimit -}}
{{- $rateLimit := dict "enabled" $rl.enabled "rate" $rl.rate "burst" $rl.burst "backend" $rl.backend "fail_open" $rl.failOpen -}}
{{- if eq $rl.backend "redis" -}}
{{- $_ := set $rateLimit "redis_timeout_s" $rl.redis.timeoutSeconds -}}
{{- $url := include "ie.redisUrl" . -}}
{{- if $url -}}
{{- $_ := set $rateLimit "redis_url" $url -}}
{{- end -}}
{{- end -}}
{{- $config := mustMergeOverwrite (deepCopy .Values.config) (dict "rate_limit" $rateLimit) -}}
{{- toYaml $config -}}
{{- end -}}

{{/* IE_* variables: the chart's own, then `env`. */}}
{{- define "ie.env" -}}
{{- $env := dict
  "IE_ENV" "prod"
  "IE_SERVER__HOST" "0.0.0.0"
  "IE_SERVER__PORT" (toString .Values.server.httpPort)
  "IE_GRPC__PORT" (toString .Values.server.grpcPort)
  "IE_SERVER__DRAIN_TIMEOUT_S" (toString .Values.server.drainTimeoutSeconds)
-}}
{{- range $key, $value := .Values.env -}}
{{- $_ := set $env $key (toString $value) -}}
{{- end -}}
{{- toYaml $env -}}
{{- end -}}

{{/* Checks the schema cannot express; each fails the render with the reason and the fix. */}}
{{- define "ie.validate" -}}
{{- $v := .Values -}}
{{- $grace := float64 $v.terminationGracePeriodSeconds -}}
{{- $needed := addf $v.server.preStopSleepSeconds $v.server.drainTimeoutSeconds 10 -}}
{{- if lt $grace $needed -}}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be at least server.preStopSleepSeconds (%v) + server.drainTimeoutSeconds (%v) + 10 s for a forward pass and unload (%v): the kubelet would kill pods mid-drain" $v.terminationGracePeriodSeconds $v.server.preStopSleepSeconds $v.server.drainTimeoutSeconds $needed) -}}
{{- end -}}
{{- if eq (int $v.server.httpPort) (int $v.server.grpcPort) -}}
{{- fail "server.httpPort and server.grpcPort must differ" -}}
{{- end -}}
{{- $redis := $v.rateLimit.redis -}}
{{- $sources := 0 -}}
{{- if $redis.deploy }}{{ $sources = add1 $sources }}{{ end -}}
{{- if $redis.url }}{{ $sources = add1 $sources }}{{ end -}}
{{- if $redis.existingSecret }}{{ $sources = add1 $sources }}{{ end -}}
{{- if eq $v.rateLimit.backend "redis" -}}
{{- if eq $sources 0 -}}
{{- fail "rateLimit.backend is redis but no Redis is given: set one of rateLimit.redis.deploy=true (the chart runs one), rateLimit.redis.url (an existing Redis) or rateLimit.redis.existingSecret (a Secret holding the URL)" -}}
{{- else if gt $sources 1 -}}
{{- fail "rateLimit.redis: set only one of deploy, url and existingSecret" -}}
{{- end -}}
{{- else if gt $sources 0 -}}
{{- fail "rateLimit.redis.deploy/url/existingSecret are set but rateLimit.backend is memory: set rateLimit.backend=redis, or unset them" -}}
{{- end -}}
{{- if regexMatch "^rediss?://[^/@]*:[^/@]+@" $redis.url -}}
{{- fail "rateLimit.redis.url carries a password and would land in a ConfigMap: put the URL in a Secret and set rateLimit.redis.existingSecret instead" -}}
{{- end -}}
{{- $models := $v.models -}}
{{- if and (eq $models.source "pvc") (not $models.pvc.claimName) -}}
{{- fail "models.source is pvc: set models.pvc.claimName" -}}
{{- end -}}
{{- if and (eq $models.source "image") (not $models.image.repository) -}}
{{- fail "models.source is image: set models.image.repository (and tag or digest) of the models image" -}}
{{- end -}}
{{- if and (eq $models.source "initContainer") (not $models.initContainer.command) -}}
{{- fail "models.source is initContainer: set models.initContainer.command" -}}
{{- end -}}
{{- $auth := $v.config.auth | default dict -}}
{{- if and (ne (toString $auth.enabled) "false") (not $v.auth.existingSecret) (not $auth.api_key_hashes) (not (hasKey $v.env "IE_AUTH__API_KEY_HASHES")) -}}
{{- fail "config.auth.enabled is true but no API key digests are given: set auth.existingSecret (a Secret with a JSON list of SHA-256 digests), or set config.auth.enabled=false" -}}
{{- end -}}
{{- $pdb := $v.podDisruptionBudget -}}
{{- if $pdb.enabled -}}
{{- if and (kindIs "invalid" $pdb.minAvailable) (kindIs "invalid" $pdb.maxUnavailable) -}}
{{- fail "podDisruptionBudget: set maxUnavailable or minAvailable" -}}
{{- end -}}
{{- $floor := ternary $v.autoscaling.minReplicas $v.replicaCount $v.autoscaling.enabled -}}
{{- if and (not (kindIs "invalid" $pdb.minAvailable)) (not (kindIs "string" $pdb.minAvailable)) (ge (int $pdb.minAvailable) (int $floor)) -}}
{{- fail (printf "podDisruptionBudget.minAvailable (%v) must be below the replica floor (%v), or a node drain can never evict a pod" $pdb.minAvailable $floor) -}}
{{- end -}}
{{- end -}}
{{- if $v.autoscaling.enabled -}}
{{- $a := $v.autoscaling -}}
{{- if gt (int $a.minReplicas) (int $a.maxReplicas) -}}
{{- fail (printf "autoscaling.minReplicas (%v) is above autoscaling.maxReplicas (%v)" $a.minReplicas $a.maxReplicas) -}}
{{- end -}}
{{- if not (or $a.targetCPUUtilizationPercentage $a.queueDepthPerPod $a.inFlightRequestsPerPod) -}}
{{- fail "autoscaling: every metric is off; set targetCPUUtilizationPercentage, queueDepthPerPod or inFlightRequestsPerPod, or autoscaling.enabled=false" -}}
{{- end -}}
{{- end -}}
{{- end -}}
