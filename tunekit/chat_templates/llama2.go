{{- $first := true }}{{- range .Messages }}{{- if eq .Role "user" }}{{ if not $first }}<s>{{ end }}[INST] {{ if and $first $.System }}<<SYS>>
{{ $.System }}
<</SYS>>

{{ end }}{{ .Content }} [/INST]{{ $first = false }}{{- else if eq .Role "assistant" }} {{ .Content }} </s>{{- end }}{{- end }}