"""python -m tunekit.tiny FAMILY [--gptq]: builds (cached) and prints the embedded default's folder."""
from . import main

main()
