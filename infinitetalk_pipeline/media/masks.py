"""Per-speaker masks for the multi-person graphs (`ref_target_masks`): white where that speaker is.

Without masks WanVideoWrapper 1.4.7's sampler fails on every fresh prompt ('NoneType' object has no attribute 'max'),
so the render always sends two: the request's mask images, conformed to the clip's size exactly as the portrait is
(cover, centre crop), or the layout's rectangles, which are InfiniteTalk's own default (each speaker one half of the
frame, inset by 10%).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from PIL import Image, ImageOps, UnidentifiedImageError

from infinitetalk_pipeline.media.sniff import MediaError

SpeakerLayout = Literal["left-right", "right-left"]
INSET = 0.1  # WanVideoWrapper's multitalk_loop.py `face_scale`


def layout_masks(width: int, height: int, layout: SpeakerLayout) -> tuple[Image.Image, Image.Image]:
    """Speaker 1 and speaker 2 masks: the same rectangles as InfiniteTalk's built-in default, at width x height."""
    half = width // 2
    top, bottom = int(height * INSET), int(height * (1 - INSET))
    left_box = (int(half * INSET), top, int(half * (1 - INSET)), bottom)
    right_box = (int(half * INSET + half), top, int(half * (1 - INSET) + half), bottom)
    boxes = (left_box, right_box) if layout == "left-right" else (right_box, left_box)
    masks = []
    for box in boxes:
        mask = Image.new("L", (width, height), 0)
        mask.paste(255, box)
        masks.append(mask)
    return masks[0], masks[1]


def conform_mask(path: Path, width: int, height: int) -> Image.Image:
    """A user's mask at width x height, binary. Transparency wins over brightness when the image has any (a
    cut-out speaker), else white is the speaker. Raises MediaError when unreadable or empty."""
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                alpha = img.convert("RGBA").getchannel("A")
                gray = alpha if alpha.getextrema()[0] < 255 else img.convert("L")
            else:
                gray = img.convert("L")
            fitted = ImageOps.fit(gray, (width, height), Image.Resampling.BILINEAR, centering=(0.5, 0.5))
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError) as exc:
        raise MediaError(f"cannot read the mask image: {exc}") from exc
    binary = fitted.point(lambda v: 255 if v >= 128 else 0)
    if binary.getextrema()[1] == 0:
        raise MediaError(f"the mask has no white (speaker) pixels once fitted to {width}x{height}")
    return binary


def save_mask(mask: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    mask.save(path, format="PNG", optimize=False)
    return path
