"""Errors shared by every layer: each one names the clip and, where there is one, the field at fault."""

from __future__ import annotations

from infinitetalk_pipeline.redact import redact_text


class PipelineError(Exception):
    """Base of the errors this package raises on purpose."""


class ClipInputError(PipelineError):
    """A clip's request is unusable: a bad value, a missing or unreadable media file.

    Never retried: the same input fails the same way.
    """

    def __init__(self, clip_id: str | None, field: str | None, reason: str) -> None:
        self.clip_id = clip_id
        self.field = field
        # Reasons quote the input (a URL that failed, a raw value) and end up in logs, metadata and CLI output:
        # credentials in them are masked here, once. The fetch keeps the request's own, whole URL.
        reason = redact_text(reason)
        self.reason = reason
        where = []
        if clip_id:
            where.append(f"clip {redact_text(clip_id)!r}")
        if field:
            where.append(f"field {field!r}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {reason}" if prefix else reason)


class OutputRootError(PipelineError):
    """The output root as a whole is unusable (its S3 bucket does not exist); the message names the root.

    Never retried: a configuration error, which every clip would meet the same way.
    """
