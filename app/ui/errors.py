"""Every `ErrorKind` in words a person can act on: the one table the studio's failure messages use.

The runtime's own message says what happened to *this* request ("junk.gguf is not a GGUF model
file"); the kind says what sort of trouble it is, and so what the person can do about it. A failure
is shown as ``headline + message + action``. A kind added to the protocol without a line here fails
tests/ui/test_errors.py, so no failure ever reaches a person as a bare enum value.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.runtime.protocol import ErrorKind, RuntimeFailure

LOG_HINT = "the log file has the details: Settings, Your data, Logs"


@dataclass(frozen=True)
class Wording:
    headline: str  # what sort of trouble, in a few words
    action: str  # what the person can do about it


WORDS: dict[ErrorKind, Wording] = {
    ErrorKind.BAD_MESSAGE: Wording("The runtime could not read a request from the studio.",
                                   f"Restart Hearth; if it happens again, please report it ({LOG_HINT})."),
    ErrorKind.UNKNOWN_METHOD: Wording("The runtime does not know this request.",
                                      "The studio and the runtime come from different versions: reinstall Hearth."),
    ErrorKind.INVALID_PARAMS: Wording("A value was not accepted.",
                                      "Check the values you entered and try again."),
    ErrorKind.MODEL_NOT_FOUND: Wording("The model was not found.",
                                       "Pick a model on the Models page, or add the folder that holds it there."),
    ErrorKind.MODEL_INVALID: Wording("The model file cannot be used.",
                                     "It may be incomplete or damaged: download or convert it again, or pick another model."),
    ErrorKind.LOAD_FAILED: Wording("The model could not be loaded.",
                                   "Try a shorter context in the chat settings, a smaller quantization, or another model."),
    ErrorKind.OUT_OF_MEMORY: Wording("Not enough memory.",
                                     "Close other programs, or pick a smaller model, quantization or context length."),
    ErrorKind.DISK_FULL: Wording("Not enough free disk space.",
                                 "Free some space (the Models page can delete models you no longer use), then try again."),
    ErrorKind.UNSUPPORTED: Wording("This is not supported here.",
                                   "Choose another model, format or option; the message says what is missing."),
    ErrorKind.BUSY: Wording("The runtime is busy with another job.",
                            "Wait for it to finish or cancel it, then try again."),
    ErrorKind.CANCELLED: Wording("Cancelled before it started.",
                                 "Nothing was changed; start it again when you want it."),
    ErrorKind.WORKER_DIED: Wording("The runtime stopped unexpectedly.",
                                   "Hearth restarts it by itself: try again. If it keeps stopping, pick a smaller model or context."),
    ErrorKind.REMOTE_FAILED: Wording("The remote server did not answer properly.",
                                     "Check that the server runs and that its address and key are right."),
    ErrorKind.PROTOCOL_MISMATCH: Wording("The studio and the runtime do not match.",
                                         "Reinstall Hearth so that both come from the same version."),
    ErrorKind.INTERNAL: Wording("Something went wrong inside Hearth.",
                                f"Try again; if it happens again, please report it ({LOG_HINT})."),
}


def wording(kind: ErrorKind | str) -> Wording:
    """The words for a kind; a kind this studio does not know (a newer runtime) reads as internal."""
    try:
        return WORDS[ErrorKind(kind)]
    except ValueError:
        return WORDS[ErrorKind.INTERNAL]


def worded(failure: RuntimeFailure) -> str:
    """One paragraph for a person: what sort of trouble, the runtime's own sentence, what to do."""
    words = wording(failure.kind)
    message = failure.message.strip()
    if message and message[-1] not in ".!?:)":
        message += "."
    parts = [words.headline] if message.lower() != words.headline.lower() else []
    return " ".join([*parts, *([message] if message else []), words.action])
