"""Where each speaker is, for the multi-person graphs: request fields, layouts and the masks the render sends."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from infinitetalk_pipeline.errors import ClipInputError
from infinitetalk_pipeline.media.masks import conform_mask, layout_masks
from infinitetalk_pipeline.media.sources import MediaFetcher, SourcePolicy
from infinitetalk_pipeline.render import prepare_clip
from infinitetalk_pipeline.spec import parse_request
from infinitetalk_pipeline.worker.capabilities import attention_mode
from tests.fixtures.synth import make_portrait, make_tone


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    make_portrait(tmp_path / "face.png", size=(320, 240))
    make_tone(tmp_path / "a.wav", seconds=1.0)
    make_tone(tmp_path / "b.wav", seconds=1.0, freq=330.0)
    return tmp_path


def multi(inputs: Path, **fields: object) -> dict[str, object]:
    return {
        "person_count": "multi",
        "image_path": str(inputs / "face.png"),
        "wav_path": str(inputs / "a.wav"),
        "wav_path_2": str(inputs / "b.wav"),
        "width": 96,
        "height": 64,
        **fields,
    }


def white(mask: Image.Image) -> np.ndarray:
    return np.asarray(mask) > 127


def test_default_layout_is_infinitetalks_own_left_and_right_halves_inset_by_a_tenth() -> None:
    """The rectangles WanVideoWrapper's multitalk_loop.py builds when it gets no masks."""
    speaker_1, speaker_2 = layout_masks(100, 50, "left-right")
    expected_1, expected_2 = np.zeros((50, 100), bool), np.zeros((50, 100), bool)
    expected_1[5:45, 5:45] = True
    expected_2[5:45, 55:95] = True
    assert (white(speaker_1) == expected_1).all()
    assert (white(speaker_2) == expected_2).all()


def test_right_left_layout_swaps_the_speakers() -> None:
    left_right, right_left = layout_masks(64, 48, "left-right"), layout_masks(64, 48, "right-left")
    assert (white(left_right[0]) == white(right_left[1])).all()
    assert (white(left_right[1]) == white(right_left[0])).all()


def test_a_users_mask_is_fitted_like_the_portrait_cover_and_centre_crop(tmp_path: Path) -> None:
    src = Image.new("L", (200, 100), 0)
    src.paste(255, (0, 0, 100, 100))  # left half white
    src.save(tmp_path / "m.png")
    fitted = white(conform_mask(tmp_path / "m.png", 50, 50))  # the square crop keeps the middle 100x100
    assert fitted[:, :24].all() and not fitted[:, 26:].any()


def test_a_transparent_cut_out_marks_the_speaker_by_its_alpha(tmp_path: Path) -> None:
    src = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    src.paste((10, 10, 10, 255), (0, 0, 20, 40))  # a dark but opaque speaker on the left
    src.save(tmp_path / "cut.png")
    fitted = white(conform_mask(tmp_path / "cut.png", 40, 40))
    assert fitted[:, :20].all() and not fitted[:, 20:].any()


def test_masks_need_two_people() -> None:
    with pytest.raises(ClipInputError, match="mask_path is given but person_count is 'single'"):
        parse_request({"image_path": "/f.png", "wav_path": "/a.wav", "mask_path": "/m.png"}, clip_id="solo")


def test_one_mask_without_the_other_is_refused() -> None:
    with pytest.raises(ClipInputError, match=r"clip 'duo'.*mask_url needs the other speaker's mask"):
        parse_request(
            {"person_count": "multi", "image_path": "/f.png", "wav_path": "/a.wav", "mask_url": "https://x/m.png"},
            clip_id="duo",
        )


def test_layout_and_masks_together_are_refused() -> None:
    with pytest.raises(ClipInputError, match="either speaker_layout or the mask images"):
        parse_request(
            {
                "person_count": "multi",
                "image_path": "/f.png",
                "wav_path": "/a.wav",
                "mask_path": "/m1.png",
                "mask_path_2": "/m2.png",
                "speaker_layout": "right-left",
            }
        )


def test_an_unknown_layout_names_the_field() -> None:
    with pytest.raises(ClipInputError) as err:
        parse_request({"person_count": "multi", "image_path": "/f.png", "wav_path": "/a.wav", "speaker_layout": "up"})
    assert err.value.field == "speaker_layout"


def test_prepared_multi_clip_carries_layout_masks_at_the_clip_size(inputs: Path) -> None:
    fetcher = MediaFetcher(SourcePolicy(allowed_roots=(inputs,)), inputs / "cache")
    request = parse_request(multi(inputs, speaker_layout="right-left"), clip_id="duo")
    prepared = prepare_clip(request, fetcher, inputs / "work", clip_id="duo")
    speaker_1 = Image.open(prepared.media["mask"].path)
    assert speaker_1.size == (96, 64)
    assert (white(speaker_1) == white(layout_masks(96, 64, "right-left")[0])).all()
    assert prepared.media["mask"].source == "layout:right-left:speaker1"


def test_prepared_multi_clip_conforms_the_requests_mask_images(inputs: Path) -> None:
    for name, box in (("m1.png", (0, 0, 160, 240)), ("m2.png", (160, 0, 320, 240))):
        mask = Image.new("L", (320, 240), 0)
        mask.paste(255, box)
        mask.save(inputs / name)
    fetcher = MediaFetcher(SourcePolicy(allowed_roots=(inputs,)), inputs / "cache")
    fields = {"mask_path": str(inputs / "m1.png"), "mask_path_2": str(inputs / "m2.png")}
    prepared = prepare_clip(parse_request(multi(inputs, **fields), clip_id="duo"), fetcher, inputs / "work")
    speaker_2 = white(Image.open(prepared.media["mask_2"].path))
    assert speaker_2.shape == (64, 96) and speaker_2[:, 49:].all() and not speaker_2[:, :47].any()


def test_an_all_black_mask_fails_naming_the_clip_and_field(inputs: Path) -> None:
    Image.new("L", (320, 240), 0).save(inputs / "black.png")
    Image.new("L", (320, 240), 255).save(inputs / "white.png")
    fetcher = MediaFetcher(SourcePolicy(allowed_roots=(inputs,)), inputs / "cache")
    fields = {"mask_path": str(inputs / "white.png"), "mask_path_2": str(inputs / "black.png")}
    with pytest.raises(ClipInputError) as err:
        prepare_clip(parse_request(multi(inputs, **fields), clip_id="duo"), fetcher, inputs / "work")
    assert (err.value.clip_id, err.value.field) == ("duo", "mask_path_2")
    assert "no white (speaker) pixels" in str(err.value)


def test_a_mask_that_is_not_an_image_is_refused_like_any_media_field(inputs: Path) -> None:
    fetcher = MediaFetcher(SourcePolicy(allowed_roots=(inputs,)), inputs / "cache")
    fields = {"mask_path": str(inputs / "a.wav"), "mask_path_2": str(inputs / "face.png")}
    with pytest.raises(ClipInputError) as err:
        prepare_clip(parse_request(multi(inputs, **fields), clip_id="duo"), fetcher, inputs / "work")
    assert (err.value.clip_id, err.value.field) == ("duo", "mask_path")


def test_attention_is_sageattn_only_where_it_imports() -> None:
    assert attention_mode({"attention_modes": ["sageattn", "sdpa"]}) == "sageattn"
    assert attention_mode({"attention_modes": ["sdpa"]}) == "sdpa"
    assert attention_mode(None) == "sdpa"  # a worker without our extension says nothing: the kernel torch has
