"""Every error the helpers raise on purpose, in one place: each says what went wrong and what to do.

    from helpers.errors import CourseError          # catch any of them
    except NotEnoughMemoryError as err: print(err)  # or one kind

The modules that raise them import them from here; course/ defines its own machinery's errors.
"""


class CourseError(Exception):
    """Base class: a problem the learner can fix; the message says how."""


# ---- models on disk: is this a model we can load? -------------------------------------------


class ModelNotFoundError(CourseError):
    """The path or hub id does not point at a model."""


class NotAModelError(CourseError):
    """The path exists but holds no model we can load."""


class UnsupportedFormatError(NotAModelError):
    """A model folder quantized with a method this course does not load (bitsandbytes, FP8, ...)."""


class NotGGUFError(NotAModelError):
    """The file is not a GGUF file, or its header is damaged."""


class TruncatedGGUFError(NotAModelError):
    """The file is shorter than its own header says: a cut-off download or copy."""


class MissingBackendError(CourseError):
    """A library the format needs is not installed."""


class NotEnoughMemoryError(CourseError):
    """The model would not fit in the free memory."""


class Float16OverflowError(CourseError):
    """The model computes inf or NaN in float16: its activations exceed float16's range."""


# ---- prompts and the context window ---------------------------------------------------------


class ContextOverflowError(CourseError):
    """A prompt does not fit the context window (n_ctx) the model was created with."""


class ContextTruncationWarning(UserWarning):
    """Prompt + max_tokens exceed n_ctx: llama-cpp-python will cut the answer short."""


# ---- the hub --------------------------------------------------------------------------------


class HubError(CourseError):
    """Downloading from the hub (or a mirror) failed; the message says what to do."""


class RepoNotFoundError(HubError):
    """No such repo at this endpoint (or it is private/gated and the token does not open it)."""


class RevisionNotFoundError(HubError):
    """The repo exists but not that branch, tag or commit."""


class NoMatchingFilesError(HubError):
    """A file name or pattern matches nothing in the repo."""


class AmbiguousFilesError(HubError):
    """A pattern picks several files where exactly one is needed (e.g. one GGUF out of a repo)."""


class HubUnreachableError(HubError):
    """The endpoint (hub or mirror) cannot be reached."""


class NotEnoughDiskError(HubError):
    """The chosen files do not fit in the free disk at the destination."""


class DownloadFailedError(HubError):
    """A transfer broke, or a file did not match its size/sha256; nothing incomplete was kept."""


# ---- chat -----------------------------------------------------------------------------------


class ChatError(CourseError):
    """A chat problem the learner can fix."""


class ContextWindowError(ChatError):
    """The newest message alone (with the system prompt and the reply) does not fit the context
    window.
    """


class ChatHistoryError(ChatError):
    """A history file could not be read or written."""


# ---- generation -----------------------------------------------------------------------------


class ModelBusyError(CourseError):
    """The model is still generating (one generation per model at a time: generation.claim)."""
