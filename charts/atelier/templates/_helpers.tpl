{{/* Names: every object's name comes from here (as zero-to-jupyterhub's _helpers-names.tpl). */}}
{{- define "atelier.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "atelier.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "atelier.hub.fullname" -}}{{ include "atelier.fullname" . | trunc 59 | trimSuffix "-" }}-hub{{- end -}}
{{- define "atelier.proxy.fullname" -}}{{ include "atelier.fullname" . | trunc 57 | trimSuffix "-" }}-proxy{{- end -}}
{{- define "atelier.operator.fullname" -}}{{ include "atelier.fullname" . | trunc 54 | trimSuffix "-" }}-operator{{- end -}}
{{- define "atelier.culler.fullname" -}}{{ include "atelier.fullname" . | trunc 50 | trimSuffix "-" }}-idle-culler{{- end -}}
{{- define "atelier.hub.dbPvc" -}}{{ include "atelier.hub.fullname" . }}-db{{- end -}}

{{/* The namespace of the Workspaces in shared mode. */}}
{{- define "atelier.workspaceNamespace" -}}
{{- .Values.workspaceNamespace | default .Release.Namespace -}}
{{- end -}}

{{- define "atelier.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "atelier.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "atelier.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: call with (dict "root" $ "component" "hub"). */}}
{{- define "atelier.selectorLabels" -}}
app.kubernetes.io/name: {{ include "atelier.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "atelier.componentLabels" -}}
{{ include "atelier.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The selector labels as the operator's key=value,... flags take them. */}}
{{- define "atelier.podLabelsFlag" -}}
{{- printf "app.kubernetes.io/name=%s,app.kubernetes.io/instance=%s,app.kubernetes.io/component=%s" (include "atelier.name" .root) .root.Release.Name .component -}}
{{- end -}}

{{- define "atelier.hub.apiUrl" -}}
{{- printf "http://%s.%s.svc:%d/hub/api" (include "atelier.hub.fullname" .) .Release.Namespace (int .Values.hub.service.port) -}}
{{- end -}}

{{- define "atelier.publicUrl" -}}
{{- required "publicUrl is required (the site's URL as browsers reach the proxy)" .Values.publicUrl -}}
{{- end -}}

{{/* The database URL as an env entry (hub and proxy). */}}
{{- define "atelier.dbEnv" -}}
- name: ATELIER_DATABASE_URL
{{- if eq .Values.hub.db.type "postgres" }}
  valueFrom:
    secretKeyRef:
      name: {{ required "hub.db.urlSecret.name is required with hub.db.type=postgres" .Values.hub.db.urlSecret.name }}
      key: {{ .Values.hub.db.urlSecret.key }}
{{- else }}
  value: "sqlite:///srv/atelier/db/atelier.sqlite"
{{- end }}
{{- end -}}

{{- define "atelier.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "atelier.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "atelier.imagePullSecrets" -}}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The idle culler's token: kept across upgrades (lookup), else generated. */}}
{{- define "atelier.culler.token" -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "atelier.culler.fullname" .) -}}
{{- if and $existing $existing.data (index $existing.data "token") -}}
{{- index $existing.data "token" | b64dec -}}
{{- else -}}
{{- randAlphaNum 48 -}}
{{- end -}}
{{- end -}}

{{- define "atelier.culler.scopes" -}}list:users,read:users:activity,read:servers,delete:servers{{- end -}}

{{/* Single sign-on (hub.oidc.providers): where the config and the file secrets are mounted. */}}
{{- define "atelier.hub.oidcName" -}}{{ include "atelier.hub.fullname" . }}-oidc{{- end -}}
{{- define "atelier.hub.oidcDir" -}}/etc/atelier/oidc{{- end -}}
{{- define "atelier.hub.oidcSecretDir" -}}/etc/atelier/oidc-secrets{{- end -}}
{{- define "atelier.hub.oidcPath" -}}{{ include "atelier.hub.oidcDir" . }}/oidc.yaml{{- end -}}
{{- define "atelier.hub.rolesName" -}}{{ include "atelier.hub.fullname" . }}-roles{{- end -}}
{{- define "atelier.hub.rolesDir" -}}/etc/atelier/roles{{- end -}}
{{- define "atelier.hub.rolesPath" -}}{{ include "atelier.hub.rolesDir" . }}/roles.yaml{{- end -}}

{{/* The environment variable holding a provider's client secret (clientSecret.mountAs: env). */}}
{{- define "atelier.hub.oidcSecretEnv" -}}
ATELIER_OIDC_{{ . | upper | replace "-" "_" }}_CLIENT_SECRET
{{- end -}}

{{/*
The hub's --oidc-config file (README, "Single sign-on"): the providers with their secrets named
(client_secret_file / client_secret_env), never written. Refuses a provider name used twice.
*/}}
{{- define "atelier.hub.oidcConfig" -}}
{{- $providers := list }}
{{- $seen := dict }}
{{- range $i, $p := .Values.hub.oidc.providers }}
{{- if hasKey $seen $p.name }}
{{- fail (printf "hub.oidc.providers: the name %q is used twice" $p.name) }}
{{- end }}
{{- $_ := set $seen $p.name true }}
{{- $out := dict "name" $p.name "issuer" $p.issuer "client_id" $p.clientId }}
{{- with $p.displayName }}{{ $_ := set $out "display_name" . }}{{ end }}
{{- with $p.clientSecret }}
{{- if eq (.mountAs | default "file") "env" }}
{{- $_ := set $out "client_secret_env" (include "atelier.hub.oidcSecretEnv" $p.name) }}
{{- else }}
{{- $_ := set $out "client_secret_file" (printf "%s/%s" (include "atelier.hub.oidcSecretDir" $) $p.name) }}
{{- end }}
{{- end }}
{{- with $p.scopes }}{{ $_ := set $out "scopes" . }}{{ end }}
{{- with $p.usernameClaim }}{{ $_ := set $out "username_claim" . }}{{ end }}
{{- with $p.groupClaims }}{{ $_ := set $out "group_claims" . }}{{ end }}
{{- with $p.adminGroups }}{{ $_ := set $out "admin_groups" . }}{{ end }}
{{- with $p.allowedGroups }}{{ $_ := set $out "allowed_groups" . }}{{ end }}
{{- $providers = append $providers $out }}
{{- end }}
{{- toYaml (dict "providers" $providers) }}
{{- end -}}

{{/* Providers whose client secret is a mounted file. */}}
{{- define "atelier.hub.oidcFileSecrets" -}}
{{- range .Values.hub.oidc.providers }}
{{- if and .clientSecret (ne (.clientSecret.mountAs | default "file") "env") }}
- secret:
    name: {{ .clientSecret.existingSecret }}
    items:
      - key: {{ .clientSecret.key }}
        path: {{ .name }}
{{- end }}
{{- end }}
{{- end -}}
