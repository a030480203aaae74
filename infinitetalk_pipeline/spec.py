"""The per-clip contract: the original RunPod template's request fields, validated.

A request is `{"input": {...}}` with the template's fields (`input_type`, `person_count`, `image_*`, `video_*`,
`wav_*`, `wav_*_2`, `prompt`, `width`, `height`, `max_frame`, `network_volume`) plus a few of ours
(`clip_id`, `seed`, `multi_audio_type`, `video_fit`, and for two speakers `speaker_layout` or the mask images
`mask_*` / `mask_*_2`). Unknown keys are errors: the original template silently fell
back to example files when a key was misspelled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from infinitetalk_pipeline.errors import ClipInputError

MediaRole = Literal["image", "video", "audio", "audio_2", "mask", "mask_2"]
SourceKind = Literal["path", "url", "base64"]

# role -> {kind: request field}; `s3://` URIs are accepted in both `*_path` and `*_url`.
MEDIA_FIELDS: dict[MediaRole, dict[SourceKind, str]] = {
    "image": {"path": "image_path", "url": "image_url", "base64": "image_base64"},
    "video": {"path": "video_path", "url": "video_url", "base64": "video_base64"},
    "audio": {"path": "wav_path", "url": "wav_url", "base64": "wav_base64"},
    "audio_2": {"path": "wav_path_2", "url": "wav_url_2", "base64": "wav_base64_2"},
    # Multi-person: where each speaker is, in the portrait's / source video's pixels (white = that speaker).
    "mask": {"path": "mask_path", "url": "mask_url", "base64": "mask_base64"},
    "mask_2": {"path": "mask_path_2", "url": "mask_url_2", "base64": "mask_base64_2"},
}

MIN_SIDE, MAX_SIDE = 64, 2048
# The frame inputs of the InfiniteTalk and core nodes stop at 4096 (163.84 s at 25 fps); InfiniteTalk drifts after about
# a minute anyway, so long tracks should be split upstream.
MAX_FRAMES = 4096

DEFAULT_LAYOUT = "left-right"

_MEDIA_FIELD_ROLES = tuple((role, field) for role, fields in MEDIA_FIELDS.items() for field in fields.values())
_CLIP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class MediaRef:
    """One media input of a clip, as the request gave it."""

    role: MediaRole
    field: str
    kind: SourceKind
    value: str


def normalise_clip_id(raw: str) -> str:
    """Clip ids become partition keys, file names and S3 keys, so they are kept to `[A-Za-z0-9._-]`.

    Runs of other ASCII characters (spaces, slashes...) become one `-` and leading/trailing `-` are dropped; an id
    that would still start with `.` (a hidden file) or is empty is refused. Non-ASCII characters are refused, not
    replaced: they are mostly letters (`clip ä` would silently become `clip`, the same id as `clip ö`).
    """
    stripped = raw.strip()
    cleaned = _UNSAFE.sub("-", stripped).strip("-")
    if not stripped.isascii():
        foreign = "".join(dict.fromkeys(c for c in stripped if not c.isascii()))
        would = f"it would become {cleaned!r}" if cleaned else "nothing would remain of it"
        raise ValueError(
            f"clip id {raw!r} is not a valid partition key: {foreign!r} is not ASCII ({would}); use only ASCII "
            "letters, digits, '.', '_' or '-'"
        )
    if not _CLIP_ID.match(cleaned) or cleaned in {".", ".."}:
        raise ValueError(
            f"clip id {raw!r} is not usable: 1-128 characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return cleaned


class ClipRequest(BaseModel):
    """One clip's request. Blank strings count as absent (CSV cells are blank, not null)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, frozen=True)

    clip_id: str | None = None
    input_type: Literal["image", "video"] = "image"
    person_count: Literal["single", "multi"] = "single"
    image_path: str | None = None
    image_url: str | None = None
    image_base64: str | None = None
    video_path: str | None = None
    video_url: str | None = None
    video_base64: str | None = None
    wav_path: str | None = None
    wav_url: str | None = None
    wav_base64: str | None = None
    wav_path_2: str | None = None
    wav_url_2: str | None = None
    wav_base64_2: str | None = None
    mask_path: str | None = None
    mask_url: str | None = None
    mask_base64: str | None = None
    mask_path_2: str | None = None
    mask_url_2: str | None = None
    mask_base64_2: str | None = None
    prompt: str = "A person talking naturally"
    negative_prompt: str | None = None
    width: int = Field(default=512, ge=MIN_SIDE, le=MAX_SIDE)
    height: int = Field(default=512, ge=MIN_SIDE, le=MAX_SIDE)
    max_frame: int | None = Field(default=None, ge=1, le=MAX_FRAMES)
    seed: int = Field(default=2, ge=0, le=2**53)
    # The template's output switch: true -> a file path, false -> the video inline as base64. Absent -> a path, since
    # inline videos blow payload limits (the original template returned empty results for long videos).
    network_volume: bool | None = None
    # Multi-person: `para` = both speak at once (length of the longer track), `add` = one after the other (sum).
    multi_audio_type: Literal["para", "add"] = "para"
    # V2V when the audio outlasts the source video; a longer video is always trimmed.
    video_fit: Literal["loop", "pingpong", "freeze"] = "pingpong"
    # Multi-person without mask images: speaker 1 on the left half and speaker 2 on the right (InfiniteTalk's own
    # default), or the other way round.
    speaker_layout: Literal["left-right", "right-left"] = DEFAULT_LAYOUT

    @model_validator(mode="before")
    @classmethod
    def _blank_is_absent(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not (v is None or (isinstance(v, str) and not v.strip()))}
        return data

    @field_validator("clip_id")
    @classmethod
    def _clip_id(cls, value: str | None) -> str | None:
        return None if value is None else normalise_clip_id(value)

    @model_validator(mode="after")
    def _media_matches_input_type(self) -> ClipRequest:
        # The fields given per role, in MEDIA_FIELDS order (so [0] is what `media` returns): read once from the
        # model's own dict, since this runs for every row of a 100,000-row manifest.
        values = self.__dict__
        given: dict[str, list[str]] = {role: [] for role in MEDIA_FIELDS}
        for role, field in _MEDIA_FIELD_ROLES:
            if values[field] is not None:
                given[role].append(field)
        for role, fields in given.items():
            if len(fields) > 1:
                raise ValueError(f"give one source for the {role}, not {len(fields)} ({', '.join(fields)})")
        needed: MediaRole = "image" if self.input_type == "image" else "video"
        unwanted: MediaRole = "video" if self.input_type == "image" else "image"
        if not given[needed]:
            raise ValueError(f"input_type {self.input_type!r} needs one of {', '.join(MEDIA_FIELDS[needed].values())}")
        if given[unwanted]:
            raise ValueError(f"{given[unwanted][0]} is given but input_type is {self.input_type!r}")
        if not given["audio"]:
            raise ValueError(f"audio is required: one of {', '.join(MEDIA_FIELDS['audio'].values())}")
        if self.person_count == "single":
            for role in ("audio_2", "mask", "mask_2"):
                if given[role]:
                    raise ValueError(f"{given[role][0]} is given but person_count is 'single'")
            if self.speaker_layout != DEFAULT_LAYOUT:
                raise ValueError("speaker_layout is given but person_count is 'single'")
        masks = [given["mask"], given["mask_2"]]
        if any(masks) and not all(masks):
            raise ValueError(f"{(masks[0] or masks[1])[0]} needs the other speaker's mask too (mask_* and mask_*_2)")
        # (compared with the default, not "was it set": a stored request is dumped with its defaults)
        if all(masks) and self.speaker_layout != DEFAULT_LAYOUT:
            raise ValueError("give either speaker_layout or the mask images, not both: both place the speakers")
        return self

    def media(self, role: MediaRole) -> MediaRef | None:
        for kind, field in MEDIA_FIELDS[role].items():
            value = getattr(self, field)
            if value is not None:
                return MediaRef(role=role, field=field, kind=kind, value=value)
        return None

    def speaker_audio(self) -> list[MediaRef]:
        """The audio tracks that drive the mouths: the second speaker defaults to the first, as in the template."""
        first = self.media("audio")
        assert first is not None  # guaranteed by validation
        if self.person_count == "single":
            return [first]
        return [first, self.media("audio_2") or first]

    def speaker_masks(self) -> list[MediaRef]:
        """The two speakers' mask images, when the request gives them (else the layout decides)."""
        return [ref for ref in (self.media("mask"), self.media("mask_2")) if ref is not None]

    @property
    def workflow_name(self) -> str:
        return f"{'I2V' if self.input_type == 'image' else 'V2V'}_{self.person_count}"


def parse_request(payload: dict[str, Any], clip_id: str | None = None) -> ClipRequest:
    """Validate one request; a `{"input": {...}}` wrapper is accepted. Errors name the clip and the field."""
    body = payload.get("input", payload) if isinstance(payload, dict) else payload
    if not isinstance(body, dict):
        raise ClipInputError(clip_id, None, "a request must be a JSON object")
    if clip_id is not None and "clip_id" not in body:
        body = {**body, "clip_id": clip_id}
    try:
        return ClipRequest.model_validate(body)
    except ValidationError as exc:
        raise request_error(exc, clip_id or _raw_id(body)) from None


def request_error(exc: ValidationError, clip_id: str | None) -> ClipInputError:
    """The first problem of a validation error as a ClipInputError (all of them, joined, in the reason)."""
    problems = []
    first_field = None
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or None
        first_field = first_field or field
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field (misspelled?)"
        problems.append(f"{field}: {msg}" if field else msg)
    reason = "; ".join(problems)
    if first_field and len(problems) == 1:
        reason = problems[0].split(": ", 1)[1]
    return ClipInputError(clip_id, first_field if len(problems) == 1 else None, reason)


def _raw_id(body: dict[str, Any]) -> str | None:
    raw = body.get("clip_id") or body.get("id")
    return str(raw) if raw not in (None, "") else None
