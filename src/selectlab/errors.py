"""The one family of user errors: a bad config value, a bad file, a missing model.

Raise :class:`SelectlabError` (or a subclass) with a message that names the config key
(``selection.budget='abc': ...``) or the file and line (``pool.jsonl:3: ...``). The entry point
prints such an error as one line and exits with :data:`USER_ERROR_EXIT_CODE`; any other
exception is a bug and keeps its traceback. It subclasses ValueError so callers that caught
ValueError for bad values keep working.
"""
from __future__ import annotations

USER_ERROR_EXIT_CODE = 2  # an unexpected exception exits 1 (Python, Hydra)


class SelectlabError(ValueError):
    """A user error; the message says what is wrong and where (config key or file:line)."""


def one_line(error: BaseException) -> str:
    """The error's message on one line (a multi-line message is joined with ' | ')."""
    return " | ".join(part.strip() for part in str(error).splitlines() if part.strip())


def config_error_line(error: BaseException) -> str:
    """One line for an error Hydra or OmegaConf raised while composing the config (a wrong type,
    an unknown option, a bad override): the key first when the cause names it, then the cause's
    words and Hydra's (``train.lr: Value 'abc' ... (Error merging override train.lr=abc)``)."""
    chain = []
    while error is not None:
        chain.append(error)
        error = error.__cause__
    key = next((str(e.full_key) for e in chain if getattr(e, "full_key", None)), None)
    words = [getattr(e, "msg", None) or str(e) for e in reversed(chain)]
    first = one_line(words[0]).split(" | full_key:")[0].split(" | Config search path:")[0]
    rest = [one_line(w) for w in words[1:]]
    return (f"{key}: " if key else "") + first + (f" ({'; '.join(rest)})" if rest else "")
