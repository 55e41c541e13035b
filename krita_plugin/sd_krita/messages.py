"""What the user reads: errors in plain words, never "[Errno 111]" or a Python exception's name. Krita-free, Qt-free.

Every message and status line the controller emits goes through `plain`; `describe` turns an exception (from the
shared client, the document reader or a worker thread) into a sentence.
"""

from __future__ import annotations

import builtins
import re

from .sd_client import ClientError, ServerUnavailable

# the operating system's words for the connection failures users meet, by errno
_ERRNO_WORDS = {
    "111": "nothing answers there (connection refused)",
    "61": "nothing answers there (connection refused)",
    "10061": "nothing answers there (connection refused)",
    "110": "no answer in time",
    "60": "no answer in time",
    "113": "that machine cannot be reached",
    "101": "the network cannot be reached",
    "104": "the server closed the connection",
    "54": "the server closed the connection",
    "32": "the server closed the connection",
    "-2": "that host name is unknown",
    "-3": "that host name could not be looked up",
    "-5": "that host name is unknown",
    "2": "the file was not found",
    "13": "permission denied",
}
_PHRASES = [  # other wordings of the same failures (Python's and urllib's)
    (re.compile(r"timed out", re.I), "no answer in time"),
    (re.compile(r"Name or service not known", re.I), "that host name is unknown"),
    (re.compile(r"Connection refused", re.I), "nothing answers there (connection refused)"),
    (re.compile(r"Remote end closed connection without response", re.I), "the server closed the connection"),
]
_ERRNO = re.compile(r"\[Errno (-?\d+)\]\s*([^:\n,;)]*)")
_WIN_ERROR = re.compile(r"\[WinError (\d+)\]\s*")
_EXCEPTION_NAMES = sorted(
    (name for name, value in vars(builtins).items() if isinstance(value, type) and issubclass(value, BaseException)),
    key=len,
    reverse=True,
)
_NAMED = re.compile(r"\b(?:[A-Za-z_][\w.]*\.)?(?:" + "|".join(_EXCEPTION_NAMES) + r"|\w+(?:Error|Exception))\b:?\s*")
_ANGLE = re.compile(r"<urlopen error\s*(.*?)>", re.S)


def plain(text: str) -> str:
    """`text` without errno codes and exception class names, those failures said in words instead."""
    text = _ANGLE.sub(r"\1", text)

    def errno_words(match: re.Match[str]) -> str:
        words = _ERRNO_WORDS.get(match.group(1))
        return words if words else (match.group(2).strip() or "a system error")

    text = _ERRNO.sub(errno_words, text)
    text = _WIN_ERROR.sub("", text)
    for pattern, words in _PHRASES:
        if words not in text:
            text = pattern.sub(words, text)
    text = _NAMED.sub("", text)
    text = re.sub(r"\(\s*\)", "", text)
    text = re.sub(r"[ \t]{2,}", " ", text)
    text = re.sub(r"\s+([.,:;])", r"\1", text)
    text = re.sub(r":\s*$", "", text.strip())
    return text or "Something went wrong."


def describe(error: BaseException, *, server_hint: str = "") -> str:
    """An exception as a sentence for the user."""
    if isinstance(error, ServerUnavailable):
        return plain(f"The server is not answering ({error.message}). Start it or check the URL.{server_hint}")
    if isinstance(error, ClientError):
        where = f" ({error.field})" if error.field else ""
        return plain(f"The server refused the request{where}: {error.message}")
    if isinstance(error, MemoryError):
        return "Not enough memory for this; try a smaller selection or Model size."
    if isinstance(error, OSError):
        return plain(f"A file or connection failed: {error}")
    detail = plain(str(error)) if str(error) else ""
    return f"Failed: {detail}" if detail else "Failed unexpectedly (the plugin's log has the details)."
