[gMASK]<sop>{{- $rounds := "" }}{{- range .Messages }}{{- if eq .Role "user" }}{{ if $rounds }}

{{ end }}{{ $rounds = print $rounds "x" }}[Round {{ len $rounds }}]

问：{{ .Content }}

答：{{- else if eq .Role "assistant" }}{{ .Content }}</s>{{- end }}{{- end }}