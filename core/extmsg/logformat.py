"""How ``extmsg serve`` writes its log: text lines for people, or JSON lines for a log shipper.

``[server] log_format = "json"`` (or ``extmsg serve --log-format json``) writes one JSON object
per record and line::

    {"time": "2026-05-04T09:12:31.042Z", "level": "INFO", "logger": "extmsg.engine",
     "message": "...", "request_id": "6f1c…", "channel": "sms", "job_id": "17",
     "message_id": "0193…", "conversation_id": "xK2…"}

The id fields (see :mod:`extmsg.logcontext`) appear when known; ``exception`` holds a
traceback. Both formats go through the same filters (:func:`extmsg.logsafe.install_log_escaping`):
secrets are ``***`` and control characters escaped in every field, not only in the message.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Literal

import msgspec

from .logcontext import FIELDS
from .logsafe import _RECORD_FIELDS, _clean, install_log_escaping, redact

__all__ = ["TEXT_FORMAT", "JsonFormatter", "LogFormat", "configure_logging"]

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_encoder = msgspec.json.Encoder()


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, the id fields bound when it was logged, string/number ``extra`` fields, and
    ``exception``/``stack`` when the record has them.

    Every string is redacted and escaped again here, so that a record that reached this
    formatter without the filters still keeps secrets out.
    """

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": _clean(record.getMessage()),
        }
        attrs = record.__dict__
        for name in FIELDS:
            value = attrs.get(name)
            if value is not None:
                out[name] = _clean(str(value))
        for key, value in attrs.items():
            if key in _RECORD_FIELDS or key in out or key.startswith("_"):
                continue
            if isinstance(value, str):
                out[key] = _clean(value)
            elif isinstance(value, bool | int | float) or value is None:
                out[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exception"] = _redact_lines(record.exc_text)
        if record.stack_info:
            out["stack"] = _redact_lines(record.stack_info)
        return _encoder.encode(out).decode()


def _iso(created: float) -> str:
    seconds = int(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + (
        f".{int((created - seconds) * 1000):03d}Z"
    )


def _redact_lines(text: str) -> str:
    return "\n".join(redact(line) for line in text.split("\n"))


_handler: logging.Handler | None = None


def configure_logging(level: str, fmt: LogFormat = "text") -> None:
    """Log to stderr at ``level`` in ``fmt``, one line per record, through the filters of
    :func:`extmsg.logsafe.install_log_escaping` (also on handlers configured before us).

    Called again (once the configuration is read) it changes the level and format in place.
    """
    global _handler
    root = logging.getLogger()
    if not root.handlers:
        _handler = logging.StreamHandler(sys.stderr)
        root.addHandler(_handler)
    formatter = JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)
    for handler in root.handlers:
        if handler is _handler or fmt == "json":
            handler.setFormatter(formatter)
    install_log_escaping()
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # aiosqlite's DEBUG lines quote every statement with its parameters: addresses, texts.
    logging.getLogger("aiosqlite").setLevel(logging.INFO)
