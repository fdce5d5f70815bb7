"""The project's error types.  An ArgumentError (or a subclass) is bad input: the command line prints its message as
one `error: ...` line and exits 2.  The message says what, where (file, record, key) and how to fix it."""


class ArgumentError(ValueError):
    """A bad argument, file or combination."""


class DataError(ArgumentError):
    """A bad data file or record."""


class ConversionError(ArgumentError):
    """A checkpoint that cannot be converted exactly."""


class NonFiniteLossError(RuntimeError):
    """The loss (or gradient norm) became inf or NaN during training."""


class EmptyAdapterError(RuntimeError):
    """A saved adapter that is missing tensors, holds empty ones, or never trained."""
