{{- $n := len .Messages }}{{- $i := "" }}{{- range .Messages }}{{- $i = print $i "x" }}{{- if eq .Role "user" }}[INST] {{ if and $.System (eq (len $i) $n) }}{{ $.System }}

{{ end }}{{ .Content }}[/INST]{{- else if eq .Role "assistant" }} {{ .Content }}</s>{{- end }}{{- end }}