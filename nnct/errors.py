"""Typed errors of the library. Only the CLI turns them into messages and exit codes."""


class NnctError(Exception):
    """Base class of every error nnct raises on purpose."""


class DataError(NnctError):
    """A data set cannot be read at all (missing file, no usable record)."""


class RecordError(NnctError):
    """One record is malformed; it is reported with file, line and field, and skipped."""

    def __init__(self, path: str, line: int, field: str, reason: str):
        self.path, self.line, self.field, self.reason = path, line, field, reason
        super().__init__(f"{path}:{line}: field '{field}': {reason}")


class SpanNotFound(NnctError):
    """A mention (subject, object) is not in the prompt it should be in."""


class UnsupportedModel(NnctError):
    """A model whose architecture lacks one of the standard parts nnct patches."""


class ModelNotFound(NnctError):
    """A model name that is neither the embedded default, a local directory nor loadable."""


class ConfigError(NnctError):
    """Settings that contradict each other or the data (bad window, unknown component...)."""


class ResumeMismatch(NnctError):
    """`--resume` on a run whose stored settings differ from the ones given now."""


class RemoteFailed(NnctError):
    """A remote request failed (refused, timed out, the server went away) after its retries."""


class RemoteAuthError(NnctError):
    """The server refused the API key."""


class ModelNotHosted(NnctError):
    """The server cannot run the model; the message lists the ones it hosts."""


class OutputBusy(NnctError):
    """Another live nnct process is writing the same output."""


class IncompatibleLibrary(NnctError):
    """An installed nnsight or transformers lacks an internal nnct relies on (nnct.compat)."""
