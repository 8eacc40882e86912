"""The one secret scrubber: what every log line, error message and dead letter passes through.

Secrets come from the environment only (never flags), but they still reach text:
a server echoes the ``Authorization`` header it refused, a client exception
quotes the URL it failed on, an operator passes ``https://user:pass@host``. So
:func:`scrub` removes two kinds of secret from any text:

* the values of the secret environment variables (:data:`SECRET_ENV_VARS`,
  also percent-encoded, and the Basic-auth encoding of ``ES_USERNAME:ES_PASSWORD``),
  shown as ``<NAME redacted>`` so the reader knows which one to check;
* secret-shaped text whatever its origin: ``ApiKey …``/``Bearer …``/``Basic …``
  credentials, user info in URLs (``https://user:pass@host``), and secret
  parameters (``?api_key=``, ``&token=``, ``&X-Amz-Signature=``, ``password=``,
  ``"authorization": "…"``), shown as ``<redacted>``.

It lives in ``es/``, the package that imports nothing of ours, so that every
layer (``es`` itself, ``transforms``, ``labeling``, ``pipelines``) can use it.
"""
from __future__ import annotations

import base64
import logging
import os
import re
import threading
from urllib.parse import quote

ES_API_KEY_ENV = "ES_API_KEY"
ES_USERNAME_ENV = "ES_USERNAME"
ES_PASSWORD_ENV = "ES_PASSWORD"
# The vision-LLM judge's key: labeling.client reads the first of these that is set.
LLM_API_KEY_ENVS = ("LLM_API_KEY", "OPENAI_API_KEY")
SECRET_ENV_VARS = (ES_API_KEY_ENV, ES_PASSWORD_ENV, ES_USERNAME_ENV, *LLM_API_KEY_ENVS)

REDACTED = "<redacted>"
# Shorter values would blank out ordinary words and numbers wherever they occur.
MIN_SECRET_LENGTH = 4

# An HTTP credential after its scheme (RFC 7235 token68), as headers and their echoes show it.
_AUTH_VALUE = re.compile(r"(?i)\b(ApiKey|Bearer|Basic)(\s+)([A-Za-z0-9._~+/-]+=*)")
# A word, or a capitalised word, after a scheme is prose ("Basic authentication", "Bearer Token"), not a credential.
_PROSE = re.compile(r"[A-Z]?[a-z]+")
# scheme://userinfo@ : the user info of a URL, with or without a password.
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/?#]+@")  # greedy: a password may hold "@"
_SECRET_NAMES = (r"api[_-]?key|apikey|x-api-key|access[_-]?token|refresh[_-]?token|id[_-]?token|auth[_-]?token"
                 r"|token|client[_-]?secret|secret|password|passwd|authorization")
# A query parameter whose name ends like a secret: ?api_key=, &token=, &X-Amz-Signature=, &sig=, &key= ...
_QUERY_SECRET = re.compile(r"(?i)([?&;][\w.-]*?(?:key|token|secret|password|passwd|pwd|signature|sig|auth"
                           r"|credential|session)=)([^&#\s'\"<>]+)")
# NAME=value outside a query string: keyword arguments, environment dumps (OPENAI_API_KEY=...), form bodies.
_ASSIGNED_SECRET = re.compile(rf"(?i)(?<![\w.-])([\w.-]*?(?:{_SECRET_NAMES})=)(['\"]?)([^\s&#'\",;)}}\]<>]+)")
# "name": "value" in JSON or a Python dict's repr; (?!<) skips a value that is already redacted.
_QUOTED_SECRET = re.compile(rf"(?i)(([\"'])[\w.-]*?(?:{_SECRET_NAMES})\2\s*:\s*)([\"'])(?!<)((?:(?!\3).)+)\3")


def _env_secrets() -> list[tuple[str, str]]:
    """(value, label) for every secret the environment holds now, longest first."""
    found: list[tuple[str, str]] = []
    for name in SECRET_ENV_VARS:
        value = os.environ.get(name)
        if value and len(value) >= MIN_SECRET_LENGTH:
            label = f"<{name} redacted>"
            found.append((value, label))
            encoded = quote(value, safe="")
            if encoded != value:
                found.append((encoded, label))
    username, password = os.environ.get(ES_USERNAME_ENV), os.environ.get(ES_PASSWORD_ENV)
    if username and password:  # what an echoed "Authorization: Basic ..." header carries
        found.append((base64.b64encode(f"{username}:{password}".encode()).decode("ascii"),
                      f"<{ES_USERNAME_ENV}:{ES_PASSWORD_ENV} redacted>"))
    return sorted(found, key=lambda pair: -len(pair[0]))


def _auth_value(match: re.Match) -> str:
    scheme, space, token = match.groups()
    return match.group(0) if _PROSE.fullmatch(token.rstrip("=")) else f"{scheme}{space}{REDACTED}"


def scrub(text: str) -> str:
    """``text`` without any secret: environment values become ``<NAME redacted>``, secret-shaped text ``<redacted>``."""
    for value, label in _env_secrets():
        text = text.replace(value, label)
    text = _AUTH_VALUE.sub(_auth_value, text)
    text = _URL_USERINFO.sub(rf"\1{REDACTED}@", text)
    text = _QUERY_SECRET.sub(rf"\1{REDACTED}", text)
    text = _QUOTED_SECRET.sub(rf"\1\3{REDACTED}\3", text)
    return _ASSIGNED_SECRET.sub(rf"\1\2{REDACTED}", text)


def _scrub_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a broken format is the handler's to report, not ours to raise
        return
    cleaned = scrub(message)
    if cleaned != message:
        record.msg, record.args = cleaned, None
    if record.exc_info and not record.exc_text:
        # Formatters print exc_text when it is set; a traceback's last line quotes the exception's message.
        trace = logging.Formatter().formatException(record.exc_info)
        cleaned = scrub(trace)
        if cleaned != trace:
            record.exc_text = cleaned
    if record.stack_info:
        record.stack_info = scrub(record.stack_info)


_install_lock = threading.Lock()


def install_log_scrubber() -> None:
    """Scrub every log record this process makes from now on, whichever logger makes it. Idempotent.

    At DEBUG the Elasticsearch transport logs whole response bodies, and a failed
    request's exception names its URL, so a filter on a few loggers is not enough:
    this wraps the record factory every logger uses.
    """
    with _install_lock:
        previous = logging.getLogRecordFactory()
        if getattr(previous, "scrubs_secrets", False):
            return

        def factory(*args, **kwargs) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            _scrub_record(record)
            return record

        factory.scrubs_secrets = True  # type: ignore[attr-defined]
        logging.setLogRecordFactory(factory)
