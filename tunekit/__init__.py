import logging

# On a CPU with AVX512-BF16, bitsandbytes (imported by peft) tries the `kernels` package, which would fetch a kernel
# from the hub, and warns at import when it is absent; its own CPU path is used instead, so the line is only noise.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
