"""Manifests: CSV and JSONL, local and on S3, every row validated and reported by the line a user sees."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from infinitetalk_pipeline.manifest import InvalidRow, ManifestError, ManifestResult, read_manifest

HEADER = "clip_id,input_type,person_count,image_path,video_path,wav_path,wav_path_2,width,height,network_volume"


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def read_csv(tmp_path: Path, *rows: str, header: str = HEADER) -> ManifestResult:
    return read_manifest(write(tmp_path, "manifest.csv", "\n".join([header, *rows]) + "\n"))


def read_jsonl(tmp_path: Path, *lines: dict[str, Any] | str) -> ManifestResult:
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n"
    return read_manifest(write(tmp_path, "manifest.jsonl", text))


def only_invalid(result: ManifestResult) -> InvalidRow:
    assert len(result.invalid) == 1, result.invalid
    return result.invalid[0]


# --- CSV ---------------------------------------------------------------------------------------------------


def test_csv_rows_are_numbered_from_line_2_because_the_header_is_line_1(tmp_path: Path) -> None:
    result = read_csv(tmp_path, "a,image,single,a.png,,a.wav,,,,", "b,video,single,,b.mp4,b.wav,,,,")
    assert [(r.row_number, r.clip_id) for r in result.valid] == [(2, "a"), (3, "b")]
    assert result.invalid == []


def test_csv_cells_are_converted_like_pydantic_lax_mode(tmp_path: Path) -> None:
    result = read_csv(tmp_path, "a,image,multi,a.png,,a.wav,b.wav, 640 ,480,yes")
    request = result.valid[0].request
    assert (request.width, request.height, request.network_volume) == (640, 480, True)
    assert request.person_count == "multi"


def test_csv_blank_cells_are_absent_so_defaults_apply(tmp_path: Path) -> None:
    request = read_csv(tmp_path, "a,,,a.png,,a.wav,,,,").valid[0].request
    assert (request.input_type, request.person_count, request.width, request.height) == (
        "image",
        "single",
        512,
        512,
    )


def test_csv_misspelled_column_makes_rows_using_it_invalid_and_suggests_the_field(tmp_path: Path) -> None:
    result = read_csv(tmp_path, "a,a.png,a.wav,x.png", header="clip_id,image_path,wav_path,imge_path")
    bad = only_invalid(result)
    assert (bad.row_number, bad.clip_id, bad.field) == (2, "a", "imge_path")
    assert "unknown field" in bad.reason and "'image_path'" in bad.reason


def test_csv_two_sources_for_one_media_field_is_invalid(tmp_path: Path) -> None:
    header = "clip_id,image_path,image_url,wav_path"
    bad = only_invalid(read_csv(tmp_path, "a,a.png,https://x/a.png,a.wav", header=header))
    assert bad.row_number == 2
    assert "one source for the image" in bad.reason and "image_path, image_url" in bad.reason


def test_csv_image_to_video_without_an_image_is_invalid(tmp_path: Path) -> None:
    bad = only_invalid(read_csv(tmp_path, "a,image,single,,,a.wav,,,,"))
    assert bad.clip_id == "a"
    assert "needs one of image_path" in bad.reason


def test_csv_width_out_of_range_names_the_field(tmp_path: Path) -> None:
    bad = only_invalid(read_csv(tmp_path, "a,image,single,a.png,,a.wav,,16,,"))
    assert (bad.field, bad.row_number) == ("width", 2)
    assert "greater than or equal to 64" in bad.reason


def test_csv_width_that_is_not_a_number_names_the_field(tmp_path: Path) -> None:
    bad = only_invalid(read_csv(tmp_path, "a,image,single,a.png,,a.wav,,wide,,"))
    assert bad.field == "width"
    assert "valid integer" in bad.reason


def test_csv_invalid_rows_never_stop_the_valid_ones(tmp_path: Path) -> None:
    result = read_csv(tmp_path, "a,image,single,,,a.wav,,,,", "b,image,single,b.png,,b.wav,,,,")
    assert [r.clip_id for r in result.valid] == ["b"]
    assert [r.row_number for r in result.invalid] == [2]


def test_csv_duplicate_clip_id_invalidates_every_later_row_and_names_the_first(tmp_path: Path) -> None:
    row = "a,image,single,a.png,,a.wav,,,,"
    result = read_csv(tmp_path, row, "b,image,single,b.png,,b.wav,,,,", row, row)
    assert [r.row_number for r in result.valid] == [2, 3]
    assert [(r.row_number, r.clip_id, r.field) for r in result.invalid] == [
        (4, "a", "clip_id"),
        (5, "a", "clip_id"),
    ]
    assert all("first used on row 2" in r.reason for r in result.invalid)


def test_csv_duplicates_are_found_after_normalising_and_ignoring_case(tmp_path: Path) -> None:
    result = read_csv(
        tmp_path, "Intro Scene,image,single,a.png,,a.wav,,,,", "intro-scene,image,single,a.png,,a.wav,,,,"
    )
    assert [r.clip_id for r in result.valid] == ["Intro-Scene"]
    bad = only_invalid(result)
    assert "first used on row 2" in bad.reason and "'Intro-Scene'" in bad.reason


def test_csv_duplicate_of_an_invalid_row_is_still_a_duplicate(tmp_path: Path) -> None:
    result = read_csv(tmp_path, "a,image,single,,,a.wav,,,,", "a,image,single,a.png,,a.wav,,,,")
    assert result.valid == []
    assert "first used on row 2" in result.invalid[1].reason


def test_csv_unsafe_clip_id_is_normalised(tmp_path: Path) -> None:
    result = read_csv(tmp_path, "intro scene/1?,image,single,a.png,,a.wav,,,,")
    assert [r.clip_id for r in result.valid] == ["intro-scene-1"]
    assert result.valid[0].request.clip_id == "intro-scene-1"


def test_csv_non_ascii_clip_id_is_an_invalid_row_saying_what_it_would_become(tmp_path: Path) -> None:
    result = read_csv(tmp_path, "clip ä,image,single,a.png,,a.wav,,,,", "b,image,single,b.png,,b.wav,,,,")
    assert [r.clip_id for r in result.valid] == ["b"]
    bad = only_invalid(result)
    assert (bad.row_number, bad.clip_id, bad.field) == (2, "clip ä", "clip_id")
    assert bad.reason.startswith("clip id 'clip ä' is not a valid partition key: 'ä' is not ASCII")
    assert "it would become 'clip'" in bad.reason


def test_csv_clip_id_starting_with_a_dot_is_refused(tmp_path: Path) -> None:
    bad = only_invalid(read_csv(tmp_path, ".hidden,image,single,a.png,,a.wav,,,,"))
    assert (bad.clip_id, bad.field) == (".hidden", "clip_id")
    assert "not usable" in bad.reason


def test_csv_row_without_a_clip_id_is_invalid(tmp_path: Path) -> None:
    bad = only_invalid(read_csv(tmp_path, " ,image,single,a.png,,a.wav,,,,"))
    assert (bad.row_number, bad.clip_id, bad.field, bad.reason) == (2, None, "clip_id", "clip_id is required")


def test_csv_without_a_clip_id_column_is_a_manifest_error_naming_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "no-ids.csv", "image_path,wav_path\na.png,a.wav\n")
    with pytest.raises(ManifestError, match=r"no-ids\.csv.*no clip_id column"):
        read_manifest(path)


@pytest.mark.parametrize(("delimiter", "named"), [(";", "';'"), ("\t", "tab"), ("|", "'|'")])
def test_csv_separated_by_another_delimiter_is_refused_naming_it(tmp_path: Path, delimiter: str, named: str) -> None:
    text = "\n".join(
        delimiter.join(cells) for cells in [("clip_id", "image_path", "wav_path"), ("a", "a.png", "a.wav")]
    )
    with pytest.raises(ManifestError) as refused:
        read_manifest(write(tmp_path, "excel.csv", text + "\n"))
    message = str(refused.value)
    assert "excel.csv: the header looks " + named + "-separated" in message
    assert "manifests are comma-separated CSV (or JSONL)" in message


def test_csv_blank_lines_are_skipped_but_still_counted(tmp_path: Path) -> None:
    result = read_csv(tmp_path, "", "a,image,single,a.png,,a.wav,,,,", ",,,,,,,,,", "b,image,single,b.png,,b.wav,,,,")
    assert [(r.row_number, r.clip_id) for r in result.valid] == [(3, "a"), (5, "b")]


def test_csv_row_numbers_follow_file_lines_across_a_multi_line_cell(tmp_path: Path) -> None:
    header = "clip_id,image_path,wav_path,prompt"
    result = read_csv(tmp_path, 'a,a.png,a.wav,"line one\nline two"', "b,b.png,b.wav,x", header=header)
    assert [(r.row_number, r.clip_id) for r in result.valid] == [(2, "a"), (4, "b")]
    assert result.valid[0].request.prompt == "line one\nline two"


def test_csv_row_with_more_cells_than_the_header_is_invalid(tmp_path: Path) -> None:
    bad = only_invalid(read_csv(tmp_path, "a,image,single,a.png,,a.wav,,,,,extra"))
    assert bad.clip_id == "a"
    assert "11 cells but the header has 10 columns" in bad.reason


def test_csv_row_with_bytes_that_are_not_utf8_is_invalid_and_the_others_are_read(tmp_path: Path) -> None:
    text = f"{HEADER}\na,image,single,caf\xe9.png,,a.wav,,,,\nb,image,single,b.png,,b.wav,,,,\n"
    result = read_manifest(write(tmp_path, "latin1.csv", text.encode("latin-1")))
    assert [r.clip_id for r in result.valid] == ["b"]
    bad = only_invalid(result)
    assert (bad.row_number, bad.clip_id, bad.field) == (2, "a", "image_path")
    assert "UTF-8" in bad.reason


def test_csv_with_a_byte_order_mark_reads_its_first_column(tmp_path: Path) -> None:
    path = write(tmp_path, "bom.csv", b"\xef\xbb\xbfclip_id,image_path,wav_path\na,a.png,a.wav\n")
    assert [r.clip_id for r in read_manifest(path).valid] == ["a"]


# --- JSONL -------------------------------------------------------------------------------------------------


def test_jsonl_accepts_flat_rows_and_whole_requests_numbered_by_line(tmp_path: Path) -> None:
    result = read_jsonl(
        tmp_path,
        {"clip_id": "flat", "image_path": "a.png", "wav_path": "a.wav"},
        "",
        {"id": "wrapped", "input": {"image_path": "b.png", "wav_path": "b.wav", "width": 640}},
        {"id": 7, "input": {"input_type": "video", "video_url": "s3://b/v.mp4", "wav_path": "c.wav"}},
    )
    assert [(r.row_number, r.clip_id) for r in result.valid] == [(1, "flat"), (3, "wrapped"), (4, "7")]
    assert result.valid[1].request.width == 640
    assert result.valid[2].request.workflow_name == "V2V_single"


def test_jsonl_accepts_id_on_a_flat_row(tmp_path: Path) -> None:
    result = read_jsonl(tmp_path, {"id": "a", "image_path": "a.png", "wav_path": "a.wav"})
    assert [r.clip_id for r in result.valid] == ["a"]


def test_jsonl_clip_id_inside_input_is_accepted(tmp_path: Path) -> None:
    result = read_jsonl(tmp_path, {"input": {"clip_id": "a", "image_path": "a.png", "wav_path": "a.wav"}})
    assert [r.clip_id for r in result.valid] == ["a"]


def test_jsonl_disagreeing_ids_are_invalid(tmp_path: Path) -> None:
    bad = only_invalid(read_jsonl(tmp_path, {"id": "a", "input": {"clip_id": "b", "image_path": "a.png"}}))
    assert bad.field == "clip_id"
    assert "disagree" in bad.reason


def test_jsonl_clip_id_with_no_ascii_character_is_invalid_and_says_nothing_would_remain(tmp_path: Path) -> None:
    bad = only_invalid(read_jsonl(tmp_path, {"id": "東京", "image_path": "a.png", "wav_path": "a.wav"}))
    assert (bad.row_number, bad.clip_id, bad.field) == (1, "東京", "clip_id")
    assert "'東京' is not ASCII (nothing would remain of it)" in bad.reason


def test_jsonl_line_without_an_id_is_invalid(tmp_path: Path) -> None:
    bad = only_invalid(read_jsonl(tmp_path, {"input": {"image_path": "a.png", "wav_path": "a.wav"}}))
    assert (bad.row_number, bad.field, bad.reason) == (1, "clip_id", "clip_id is required")


def test_jsonl_bad_json_line_is_a_row_error_and_the_rest_are_read(tmp_path: Path) -> None:
    result = read_jsonl(
        tmp_path, '{"clip_id": "a", "image_path": ', {"clip_id": "b", "image_path": "b", "wav_path": "b"}
    )
    assert [r.clip_id for r in result.valid] == ["b"]
    bad = only_invalid(result)
    assert bad.row_number == 1
    assert bad.reason.startswith("not valid JSON")


def test_jsonl_line_that_is_not_an_object_is_invalid(tmp_path: Path) -> None:
    bad = only_invalid(read_jsonl(tmp_path, '"just a string"'))
    assert bad.reason == "a line must be a JSON object"


def test_jsonl_unknown_top_level_key_of_a_wrapped_request_is_invalid(tmp_path: Path) -> None:
    line = {"id": "a", "webhook": "https://x", "input": {"image_path": "a.png", "wav_path": "a.wav"}}
    bad = only_invalid(read_jsonl(tmp_path, line))
    assert (bad.clip_id, bad.field) == ("a", "webhook")


def test_jsonl_misspelled_field_is_invalid(tmp_path: Path) -> None:
    bad = only_invalid(read_jsonl(tmp_path, {"clip_id": "a", "image_path": "a.png", "wav_pth": "a.wav"}))
    assert "wav_pth" in bad.reason and "'wav_path'" in bad.reason


def test_jsonl_line_with_bytes_that_are_not_utf8_is_a_row_error(tmp_path: Path) -> None:
    good = json.dumps({"clip_id": "b", "image_path": "b.png", "wav_path": "b.wav"}).encode()
    data = b'{"clip_id": "a", "image_path": "caf\xe9.png", "wav_path": "a.wav"}\n' + good + b"\n"
    result = read_manifest(write(tmp_path, "m.jsonl", data))
    assert [r.clip_id for r in result.valid] == ["b"]
    assert only_invalid(result).row_number == 1


def test_a_json_array_is_a_manifest_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"array\.json.*JSON Lines"):
        read_manifest(write(tmp_path, "array.json", '[{"clip_id": "a"}]'))


# --- format, identity, S3 ----------------------------------------------------------------------------------


def test_format_falls_back_to_the_content_when_the_extension_is_unknown(tmp_path: Path) -> None:
    jsonl = read_manifest(write(tmp_path, "a.txt", '{"clip_id": "a", "image_path": "a", "wav_path": "a"}\n'))
    csv = read_manifest(write(tmp_path, "b.txt", "clip_id,image_path,wav_path\nb,b,b\n"))
    assert (jsonl.format, csv.format) == ("jsonl", "csv")
    assert [r.clip_id for r in jsonl.valid + csv.valid] == ["a", "b"]


def test_result_identifies_the_manifest_version_by_sha256(tmp_path: Path) -> None:
    path = write(tmp_path, "m.csv", "clip_id,image_path,wav_path\na,a,a\n")
    result = read_manifest(path)
    assert result.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (result.source, result.etag) == (str(path), None)


def test_missing_file_is_a_manifest_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"nowhere\.csv"):
        read_manifest(tmp_path / "nowhere.csv")


@pytest.mark.s3
def test_manifest_is_read_from_s3_with_its_etag(s3: Any, s3_bucket: str) -> None:
    body = b"clip_id,image_path,wav_path\na,s3://media/a.png,s3://media/a.wav\nb,,s3://media/b.wav\n"
    s3.put_object(Bucket=s3_bucket, Key="team/m.csv", Body=body)
    result = read_manifest(f"s3://{s3_bucket}/team/m.csv", s3_client=s3)
    assert (result.source, result.format) == (f"s3://{s3_bucket}/team/m.csv", "csv")
    assert [(r.row_number, r.clip_id) for r in result.valid] == [(2, "a")]
    assert [(r.row_number, r.clip_id) for r in result.invalid] == [(3, "b")]
    assert result.etag == s3.head_object(Bucket=s3_bucket, Key="team/m.csv")["ETag"].strip('"')
    assert result.sha256 == hashlib.sha256(body).hexdigest()


@pytest.mark.s3
def test_missing_s3_manifest_is_a_manifest_error_naming_the_uri(s3: Any, s3_bucket: str) -> None:
    uri = f"s3://{s3_bucket}/absent.jsonl"
    with pytest.raises(ManifestError, match=re.escape(uri)):
        read_manifest(uri, s3_client=s3)


def test_a_file_whose_header_is_not_utf8_is_a_manifest_error_naming_it(tmp_path: Path) -> None:
    path = write(tmp_path, "utf16.csv", "clip_id,image_path,wav_path\na,a,a\n".encode("utf-16"))
    with pytest.raises(ManifestError, match=r"utf16\.csv.*not UTF-8"):
        read_manifest(path)
