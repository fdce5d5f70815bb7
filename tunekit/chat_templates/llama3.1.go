<|start_header_id|>system<|end_header_id|>

Cutting Knowledge Date: December 2023
Today Date: 26 Jul 2024

{{ .System }}<|eot_id|>{{- range .Messages }}{{- if eq .Role "user" "assistant" }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>{{- end }}{{- end }}<|start_header_id|>assistant<|end_header_id|>

