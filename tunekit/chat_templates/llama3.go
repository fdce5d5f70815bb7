{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>{{- end }}<|start_header_id|>assistant<|end_header_id|>

