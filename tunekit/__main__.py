"""python -m tunekit <command> ..."""
from .cli import main

main()
