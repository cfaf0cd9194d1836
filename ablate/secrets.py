"""Secrets stay in the process: the one place that masks them in anything ablate writes or prints.

A spec's ``tracking.db`` / ``tracking.mlflow`` may hold a database password (``postgresql://user:PW@host``)
and a spec may name other credentials. The records database keeps the spec as written (it is the user's
own store, and ``report``, ``ui`` and ``build`` read the tracking URLs back from it); everything that
leaves the process goes through :func:`redact_url`, :func:`redact_text` or :func:`redact`: model cards,
reports, MLflow params and tags, log lines, events and errors, command output (text and ``--json``).
Child processes get URLs through their environment, never their arguments (``ps`` shows those).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["MASK", "RedactingFilter", "install_log_redaction", "redact", "redact_text", "redact_url"]

MASK = "***"

# scheme://user:PASSWORD@host: the password runs to the last '@' before whitespace or a quote (a raw '@'
# inside a password is then masked too; a path '@' after a port over-masks, which is safe).
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^\s/:@'\"`]*:)[^\s'\"`]*@")
_SECRET_WORD = r"(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|secret[_-]?key|private[_-]?key|credentials?)"
# key=value in a query string or a command line (?password=..., --token=..., PGPASSWORD=...)
_PARAM = re.compile(rf"(?i)(\b[\w.-]*{_SECRET_WORD}=)[^&\s'\"`]+")
# key: value in YAML, or "key": "value" in JSON, where the key's last word is a secret word
# (``auth_token: x`` and ``password: x`` are masked; ``tokens: 2k`` and ``eval_tokens`` are not)
_KEY_VALUE = re.compile(
    rf"(?im)^(\s*-?\s*[\"']?(?:[\w-]*[_-])?{_SECRET_WORD}[\"']?\s*:\s*)(?![|>]\s*$)(\S.*?)(\s*,?)$"
)
_INLINE_KEY_VALUE = re.compile(
    rf"(?i)([{{,]\s*[\"']?(?:[\w-]*[_-])?{_SECRET_WORD}[\"']?\s*:\s*)(\"[^\"]*\"|'[^']*'|[^,}}\s]+)"
)


def redact_url(url: Any) -> str:
    """The URL with any password replaced by ``***``; safe to print or log. A SQLAlchemy URL object is
    rendered with its password hidden; any other text gets :func:`redact_text`."""
    text = url if isinstance(url, str) else _render(url)
    return redact_text(text)


def _render(url: Any) -> str:
    render = getattr(url, "render_as_string", None)
    if render is not None:
        try:
            return str(render(hide_password=True))
        except Exception:  # noqa: BLE001 - fall back to masking the text
            pass
    return str(url)


def redact_text(text: str) -> str:
    """``text`` with every URL password, ``key=value`` credential and YAML/JSON secret value masked.

    Meant for specs, messages, exception texts and command lines; cheap enough to call on every line."""
    if not text:
        return text
    out = _URL_PASSWORD.sub(rf"\1{MASK}@", text)
    out = _PARAM.sub(rf"\1{MASK}", out)
    out = _KEY_VALUE.sub(rf"\1{MASK}\3", out)
    return _INLINE_KEY_VALUE.sub(rf"\1{MASK}", out)


def redact(value: Any) -> Any:
    """A copy of ``value`` (nested dicts, lists, tuples, strings) with :func:`redact_text` applied to every
    string and every value under a secret-looking key; for JSON output and structured records."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {
            k: (MASK if isinstance(k, str) and _is_secret_key(k) and v else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    return value


_SECRET_KEY = re.compile(rf"(?i)^(?:[\w-]*[_-])?{_SECRET_WORD}$")


def _is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.match(key))


def _clean_record(record: logging.LogRecord) -> logging.LogRecord:
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a malformed record is logging's problem, not ours
        return record
    clean = redact_text(message)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
        record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
    elif record.exc_text:
        record.exc_text = redact_text(record.exc_text)
    return record


class RedactingFilter(logging.Filter):
    """A logging filter that masks secrets in every record it passes (message and arguments merged)."""

    def filter(self, record: logging.LogRecord) -> bool:
        _clean_record(record)
        return True


def install_log_redaction() -> None:
    """Mask secrets in every log record this process creates, whichever logger and handler it goes
    to (MLflow and Ray bring their own handlers, which a filter on the root handler never sees)."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "_ablate_redacting", False):
        return

    def redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return _clean_record(factory(*args, **kwargs))

    redacting_factory._ablate_redacting = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(redacting_factory)
