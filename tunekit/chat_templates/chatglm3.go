[gMASK]<sop>{{- range .Messages }}<|{{ .Role }}|>
 {{ .Content }}{{ if eq .Role "assistant" }}</s>{{ end }}{{- end }}<|assistant|>