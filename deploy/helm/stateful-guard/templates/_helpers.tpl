{{/*
Object names are fixed, not derived from the release name: the webhook configurations and the
ClusterRole are cluster-scoped, so there is one stateful-guard per cluster, and the binary's
defaults (--cert-secret, --service, --webhook-name) are these names.
*/}}

{{/* Labels on every object: the kustomize base's part-of, plus the labels Helm charts add. */}}
{{- define "stateful-guard.labels" -}}
app.kubernetes.io/part-of: stateful-guard
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "stateful-guard.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The serving certificate's Secret: the chart's own, or the user's in mode `secret`. */}}
{{- define "stateful-guard.tlsSecret" -}}
{{- if eq .Values.certificates.mode "secret" -}}
{{ required "certificates.secret.name is required with certificates.mode=secret" .Values.certificates.secret.name }}
{{- else -}}
stateful-guard-tls
{{- end -}}
{{- end -}}

{{/*
The policy document with spec.mode set to .Values.mode. The text is edited, not re-serialised,
so its comments and layout stay; the result is parsed back to check the edit took.
*/}}
{{- define "stateful-guard.policy" -}}
{{- $text := .Values.policy -}}
{{- $doc := fromYaml $text -}}
{{- if hasKey $doc "Error" -}}
{{- fail (printf "policy is not a YAML document: %s" $doc.Error) -}}
{{- end -}}
{{- $spec := $doc.spec | default dict -}}
{{- if not (hasKey $spec "mode") -}}
{{- $text = regexReplaceAll "(?m)^spec:[ \t]*$" $text (printf "spec:\n  mode: %s" .Values.mode) -}}
{{- else if ne (toString $spec.mode) .Values.mode -}}
{{- $text = regexReplaceAll "(?m)^([ \t]+mode:[ \t]*)(\"?)(enforce|audit|off)(\"?)" $text (printf "${1}${2}%s${4}" .Values.mode) -}}
{{- end -}}
{{- $check := fromYaml $text -}}
{{- if ne (toString (dig "spec" "mode" "" $check)) .Values.mode -}}
{{- fail (printf "cannot set spec.mode to %q in .Values.policy: give the policy a block-style `spec:` with `mode:` on its own line, or set spec.mode in it yourself" .Values.mode) -}}
{{- end -}}
{{- $text -}}
{{- end -}}

{{/* Both webhooks' namespaceSelector: never kube-system nor the webhook's own namespace. */}}
{{- define "stateful-guard.namespaceSelector" -}}
{{- $excluded := concat (list "kube-system" .Release.Namespace) .Values.webhook.namespaceSelector.excludeNamespaces | uniq -}}
{{- $expressions := list
      (dict "key" "kubernetes.io/metadata.name" "operator" "NotIn" "values" $excluded)
      (dict "key" "stateful-guard.io/exclude" "operator" "DoesNotExist") -}}
namespaceSelector:
  matchExpressions:
  {{- toYaml (concat $expressions .Values.webhook.namespaceSelector.matchExpressions) | nindent 2 }}
{{- end -}}

{{/*
Both webhooks' clientConfig; the caBundle is the user's in mode `secret`. In mode `bootstrap`
the webhook sets the caBundle and the path (`/mutate/<token>`, see docs/operations.md "Who may
call") itself: neither is rendered, so that no apply, server-side apply, Helm upgrade or GitOps
sync claims or resets them. In the other modes the path carries `webhook.token`, if given.
*/}}
{{- define "stateful-guard.clientConfig" -}}
clientConfig:
  service:
    name: stateful-guard
    namespace: {{ .context.Release.Namespace }}
    {{- if ne .context.Values.certificates.mode "bootstrap" }}
    path: {{ .path }}{{ with .context.Values.webhook.token }}/{{ . }}{{ end }}
    {{- end }}
    port: 443
  {{- if eq .context.Values.certificates.mode "secret" }}
  caBundle: {{ required "certificates.secret.caBundle is required with certificates.mode=secret" .context.Values.certificates.secret.caBundle }}
  {{- end }}
{{- end -}}
