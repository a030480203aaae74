"""Credentials out of text meant for people and storage: log lines, errors, metadata, CLI output, catalog columns.

A request may point at its media with a URL that carries a credential: user-info (`https://user:password@host/`)
or a query parameter (a presigned S3 URL's `X-Amz-Signature` / `X-Amz-Credential` / `X-Amz-Security-Token`, an
Azure SAS `sig`, a `token`, `api_key`...). The fetch needs the whole URL; every description of it gets
`redact_url` (or `redact_text`, for free text that may quote URLs), which keeps what a person needs to recognise
the source (scheme, host, path, the harmless parameters such as `X-Amz-Expires` or Azure's `se`/`sp`) and turns
the secret parts into `***`. One way only: redacted text is never used to fetch.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_plus

MASK = "***"

# A query/fragment parameter is a credential when its name, split into words (`X-Amz-Security-Token` ->
# x, amz, security, token; `apiKey` -> api, key), has one of these words, or when its name run together
# (`accesstoken`, `OSSAccessKeyId`) contains one of the longer markers.
_SECRET_WORDS = frozenset(
    {"sig", "signature", "token", "key", "apikey", "password", "passwd", "pwd", "pass", "secret", "credential"}
    | {"credentials", "auth", "authorization", "jwt"}
)
_SECRET_MARKERS = ("token", "secret", "password", "passwd", "signature", "credential", "apikey", "accesskey", "session")

# A URL in free text: a scheme, `://`, then everything up to whitespace, a quote or a bracket that closes it.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")
# A parameter (`?name=value`, `&name=value`; `#name=value` in a fragment, as OAuth's implicit flow sends tokens), also
# outside any URL with a scheme ("GET /a.png?sig=..." in a log line, or a URL cut short).
_PARAM_IN_TEXT = re.compile(r"(?P<lead>[?&;#])(?P<name>[^=&#\s'\"<>]{1,64})=(?P<value>[^&#\s'\"<>]*)")
# Punctuation that ends a sentence rather than the URL ("... from https://host/a.png.").
_TRAILING = ".,;:!?)]}"


def redact_url(url: str) -> str:
    """`url` with its user-info and the values of its credential parameters replaced by `***`. A local path or
    `base64` comes back unchanged; a URL typed without its scheme (`user:pw@host/a.png`) is masked all the same."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    # The authority ends at the first `/`, `?` or `#`; its user-info ends at the last `@` (as urllib splits it).
    end = next((i for i, c in enumerate(rest) if c in "/?#"), len(rest))
    authority, tail = rest[:end], rest[end:]
    if "@" in authority:
        authority = f"{MASK}@{authority.rpartition('@')[2]}"
    return f"{scheme}{sep}{authority}{_redact_params(tail)}"


def redact_text(text: str) -> str:
    """`text` (an error message, a log line, a traceback) with every URL in it passed through `redact_url`, and any
    credential parameter outside a URL masked as well."""
    text = _URL_IN_TEXT.sub(_redact_match, text)
    return _PARAM_IN_TEXT.sub(_redact_param_match, text)


def _is_secret_param(name: str) -> bool:
    """Whether a query parameter named `name` carries a credential (compared case-insensitively, by words)."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name).lower()
    words = re.findall(r"[a-z0-9]+", spaced)
    joined = "".join(words)
    return any(w in _SECRET_WORDS for w in words) or any(m in joined for m in _SECRET_MARKERS)


def _redact_params(tail: str) -> str:
    """Mask the values of credential parameters in a URL's path-query-fragment (the path itself is kept)."""
    return _PARAM_IN_TEXT.sub(_redact_param_match, tail)


def _redact_param_match(match: re.Match[str]) -> str:
    # names are decoded (`X%2DAmz%2DSignature` is still the signature); values are replaced whole
    name, value = match["name"], match["value"]
    secret = value.rstrip(_TRAILING)  # "...?sig=abc." ends a sentence: keep the full stop
    if not secret or secret == MASK or not _is_secret_param(unquote_plus(name)):
        return match[0]
    return f"{match['lead']}{name}={MASK}{value[len(secret) :]}"


def _redact_match(match: re.Match[str]) -> str:
    url = match[0]
    stripped = url.rstrip(_TRAILING)
    return redact_url(stripped) + url[len(stripped) :]
