{{- $sys := $.System }}{{- range .Messages }}{{- if eq .Role "user" }}<start_of_turn>user
{{ if $sys }}{{ $sys }}

{{ $sys = "" }}{{ end }}{{ .Content }}<end_of_turn>
{{ else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}<end_of_turn>
{{ end }}{{- end }}<start_of_turn>model
