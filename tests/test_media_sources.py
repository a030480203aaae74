"""Media fields -> local files: allowed roots, SSRF guard, size caps, base64, S3, format from bytes, the
cache."""

from __future__ import annotations

import base64
import threading
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from infinitetalk_pipeline.errors import ClipInputError
from infinitetalk_pipeline.media.sources import MediaFetcher, SourcePolicy
from infinitetalk_pipeline.spec import MediaRef
from tests.fixtures.http_files import FileServer
from tests.fixtures.media import encode_audio, make_portrait, make_speech, make_tone, make_video


def ref(kind: str, value: str, role: str = "image", field_name: str | None = None) -> MediaRef:
    names = {"image": "image", "video": "video", "audio": "wav", "audio_2": "wav"}
    # type: ignore[arg-type]
    return MediaRef(role=role, field=field_name or f"{names[role]}_{kind}", kind=kind, value=value)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    d = tmp_path / "volume"
    d.mkdir()
    return d


@pytest.fixture
def fetcher(root: Path, tmp_path: Path) -> MediaFetcher:
    return MediaFetcher(SourcePolicy(allowed_roots=(root,)), tmp_path / "cache")


# -- local paths ---------------------------------------------------------------------------------------------


def test_a_local_file_under_an_allowed_root_is_used_in_place(fetcher: MediaFetcher, root: Path) -> None:
    face = make_portrait(root / "face.png")
    media = fetcher.fetch(ref("path", str(face)), "c1")
    assert (media.path, media.format, media.kind, media.size_bytes) == (
        face,
        "png",
        "image",
        face.stat().st_size,
    )


def test_a_relative_path_is_under_the_first_root(fetcher: MediaFetcher, root: Path) -> None:
    (root / "faces").mkdir()
    make_portrait(root / "faces" / "a.png")
    assert fetcher.fetch(ref("path", "faces/a.png")).path == root / "faces" / "a.png"


def test_a_path_outside_the_allowed_roots_is_refused(fetcher: MediaFetcher, tmp_path: Path) -> None:
    outside = make_portrait(tmp_path / "secret.png")
    with pytest.raises(ClipInputError, match="outside the allowed roots") as info:
        fetcher.fetch(ref("path", str(outside)), "c1")
    assert (info.value.clip_id, info.value.field) == ("c1", "image_path")


def test_dot_dot_cannot_climb_out_of_a_root(fetcher: MediaFetcher, tmp_path: Path) -> None:
    make_portrait(tmp_path / "secret.png")
    with pytest.raises(ClipInputError, match="outside the allowed roots"):
        fetcher.fetch(ref("path", "../secret.png"))


def test_a_symlink_cannot_lead_out_of_a_root(fetcher: MediaFetcher, root: Path, tmp_path: Path) -> None:
    (root / "link.png").symlink_to(make_portrait(tmp_path / "secret.png"))
    with pytest.raises(ClipInputError, match="outside the allowed roots"):
        fetcher.fetch(ref("path", str(root / "link.png")))


def test_local_paths_are_refused_without_allowed_roots(tmp_path: Path) -> None:
    face = make_portrait(tmp_path / "face.png")
    with pytest.raises(ClipInputError, match="local paths are not allowed"):
        MediaFetcher(SourcePolicy(), tmp_path / "cache").fetch(ref("path", str(face)))


def test_a_missing_file_is_a_clear_error(fetcher: MediaFetcher) -> None:
    with pytest.raises(ClipInputError, match="no such file"):
        fetcher.fetch(ref("path", "nope.png"))


def test_the_format_comes_from_the_bytes_not_the_name(fetcher: MediaFetcher, root: Path) -> None:
    speech = make_speech(root / "speech.wav")
    disguised = encode_audio(speech, root / "really-an-mp3.wav", "mp3_cbr")
    media = fetcher.fetch(ref("path", str(disguised), role="audio"))
    assert (media.format, media.extension) == ("mp3", ".mp3")


def test_a_file_of_the_wrong_kind_for_its_role_is_refused(fetcher: MediaFetcher, root: Path) -> None:
    tone = make_tone(root / "tone.wav", 0.5)
    with pytest.raises(ClipInputError, match="expected an image, got a wav audio file") as info:
        fetcher.fetch(ref("path", str(tone)), "c2")
    assert info.value.field == "image_path"


def test_an_empty_file_is_refused(fetcher: MediaFetcher, root: Path) -> None:
    (root / "empty.png").touch()
    with pytest.raises(ClipInputError, match="empty"):
        fetcher.fetch(ref("path", str(root / "empty.png")))


def test_files_over_the_size_cap_are_refused(root: Path, tmp_path: Path) -> None:
    face = make_portrait(root / "face.png")
    small = MediaFetcher(SourcePolicy(allowed_roots=(root,), max_bytes=100), tmp_path / "cache")
    with pytest.raises(ClipInputError, match="100 byte limit"):
        small.fetch(ref("path", str(face)))


# -- base64 --------------------------------------------------------------------------------------------------


def test_base64_is_decoded_into_the_cache(fetcher: MediaFetcher, tmp_path: Path) -> None:
    data = make_portrait(tmp_path / "face.png").read_bytes()
    media = fetcher.fetch(ref("base64", base64.b64encode(data).decode()))
    assert media.path.read_bytes() == data
    assert (media.format, media.path.suffix, media.source) == ("png", ".png", "base64")


def test_a_data_uri_prefix_is_stripped(fetcher: MediaFetcher, tmp_path: Path) -> None:
    data = make_portrait(tmp_path / "face.png").read_bytes()
    media = fetcher.fetch(ref("base64", "data:image/png;base64," + base64.b64encode(data).decode()))
    assert media.path.read_bytes() == data


def test_line_wrapped_base64_is_accepted(fetcher: MediaFetcher, tmp_path: Path) -> None:
    data = make_portrait(tmp_path / "face.png").read_bytes()
    encoded = base64.encodebytes(data).decode()  # 76-character lines
    assert fetcher.fetch(ref("base64", encoded)).path.read_bytes() == data


def test_bad_base64_padding_is_a_clear_error(fetcher: MediaFetcher) -> None:
    with pytest.raises(ClipInputError, match="invalid base64") as info:
        fetcher.fetch(ref("base64", "iVBORw0KGgo"), "c3")
    assert (info.value.clip_id, info.value.field) == ("c3", "image_base64")


def test_oversized_base64_is_refused_before_decoding(tmp_path: Path) -> None:
    small = MediaFetcher(SourcePolicy(max_bytes=1000), tmp_path / "cache")
    with pytest.raises(ClipInputError, match="1000 byte limit"):
        small.fetch(ref("base64", "A" * 2000 + "!"))  # not even valid: the size is checked first


def test_url_safe_base64_is_accepted(fetcher: MediaFetcher, tmp_path: Path) -> None:
    data = make_portrait(tmp_path / "face.png").read_bytes()
    assert fetcher.fetch(ref("base64", base64.urlsafe_b64encode(data).decode())).path.read_bytes() == data


def test_long_line_wrapped_base64_decodes_to_the_exact_bytes(fetcher: MediaFetcher, tmp_path: Path) -> None:
    """Megabytes of 76-character lines: decoded in blocks whose edges fall inside lines and groups."""
    data = make_tone(tmp_path / "long.wav", 120.0).read_bytes()  # 3.8 MB
    media = fetcher.fetch(ref("base64", "\n" + base64.encodebytes(data).decode() + "\n", role="audio"))
    assert media.path.read_bytes() == data
    assert media.size_bytes == len(data)


def test_large_base64_is_decoded_without_a_full_size_copy(fetcher: MediaFetcher, tmp_path: Path) -> None:
    """The request's string is the only full-size copy: decoding holds a few blocks at a time, not the whole
    decoded file (let alone a whitespace-free copy of the text)."""
    data = make_tone(tmp_path / "long.wav", 600.0).read_bytes()  # 19 MB
    encoded = base64.encodebytes(data).decode()
    del data
    tracemalloc.start()
    try:
        media = fetcher.fetch(ref("base64", encoded, role="audio"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < media.size_bytes / 2


def test_base64_padded_in_the_middle_is_refused(fetcher: MediaFetcher, tmp_path: Path) -> None:
    half = make_tone(tmp_path / "half.wav", 50.0).read_bytes()[:-1]  # 1.6 MB; its length leaves padding
    twice = base64.b64encode(half).decode() * 2
    with pytest.raises(ClipInputError, match="invalid base64") as info:
        fetcher.fetch(ref("base64", twice, role="audio"), "c3")
    assert (info.value.clip_id, info.value.field) == ("c3", "wav_base64")
    assert list((fetcher.cache_dir / "tmp").iterdir()) == []


def test_non_ascii_in_base64_is_a_clear_error(fetcher: MediaFetcher) -> None:
    with pytest.raises(ClipInputError, match="invalid base64 \\(a character that is not base64\\)"):
        fetcher.fetch(ref("base64", "iVBORw0KGgoé==="))


# -- the workers' upload limit -------------------------------------------------------------------------------


def test_speech_over_the_workers_upload_limit_is_refused_at_fetch_time(root: Path, tmp_path: Path) -> None:
    """ComfyUI would answer HTTP 413 at render time: the clip fails when its input is fetched, with both sizes."""
    speech = make_tone(root / "long.wav", 60.0)  # 1.9 MB
    limited = MediaFetcher(SourcePolicy(allowed_roots=(root,), max_upload_bytes=1 << 20), tmp_path / "cache")
    with pytest.raises(ClipInputError) as info:
        limited.fetch(ref("path", str(speech), role="audio"), "c7")
    assert (info.value.clip_id, info.value.field) == ("c7", "wav_path")
    assert f"{speech.stat().st_size} bytes (1.8 MB): larger than the workers' upload limit of 1 MB" in str(info.value)
    assert "--max-upload-size" in str(info.value)


def test_a_portrait_over_the_upload_limit_is_refused_before_it_is_decoded(tmp_path: Path) -> None:
    data = make_tone(tmp_path / "long.wav", 60.0).read_bytes()
    limited = MediaFetcher(SourcePolicy(max_upload_bytes=1 << 20), tmp_path / "cache")
    with pytest.raises(ClipInputError, match="once decoded: larger than the workers' upload limit") as info:
        limited.fetch(ref("base64", base64.b64encode(data).decode()), "c8")
    assert info.value.field == "image_base64"


def test_a_download_over_the_upload_limit_is_refused(http_files: FileServer, tmp_path: Path) -> None:
    url = http_files.put("long.wav", make_tone(tmp_path / "long.wav", 60.0).read_bytes())
    limited = MediaFetcher(SourcePolicy(allow_private_hosts=True, max_upload_bytes=1 << 20), tmp_path / "cache")
    with pytest.raises(ClipInputError, match="larger than the workers' upload limit of 1 MB") as info:
        limited.fetch(ref("url", url, role="audio"), "c9")
    assert info.value.field == "wav_url"


def test_a_source_video_over_the_upload_limit_is_fetched_for_conforming(root: Path, tmp_path: Path) -> None:
    """V2V sources are re-encoded before upload: the limit applies to the conformed file (`check_upload`)."""
    video = make_video(root / "source.mp4", 2.0)
    limited = MediaFetcher(SourcePolicy(allowed_roots=(root,), max_upload_bytes=5000), tmp_path / "cache")
    assert limited.fetch(ref("path", str(video), role="video")).size_bytes > 5000


def test_a_conformed_file_over_the_upload_limit_is_refused_before_upload(root: Path, tmp_path: Path) -> None:
    video = make_video(root / "source.mp4", 2.0)
    limited = MediaFetcher(SourcePolicy(allowed_roots=(root,), max_upload_bytes=5000), tmp_path / "cache")
    conformed = limited.fetch(ref("path", str(video), role="video"))
    with pytest.raises(ClipInputError, match="larger than the workers' upload limit") as info:
        limited.check_upload(conformed, "c10", "video_path")
    assert (info.value.clip_id, info.value.field) == ("c10", "video_path")


def test_no_upload_limit_when_it_is_zero(root: Path, tmp_path: Path) -> None:
    speech = make_tone(root / "long.wav", 60.0)
    unlimited = MediaFetcher(SourcePolicy(allowed_roots=(root,), max_upload_bytes=0), tmp_path / "cache")
    assert unlimited.fetch(ref("path", str(speech), role="audio")).size_bytes == speech.stat().st_size


# -- http(s) -------------------------------------------------------------------------------------------------


@dataclass
class WebServer:
    url: str
    files: dict[str, tuple[bytes, dict[str, str]]] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)


@pytest.fixture
def web() -> Iterator[WebServer]:
    """A tiny HTTP server on 127.0.0.1: serves `files`, answers If-None-Match with 304, records every
    request."""
    state = WebServer(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append((self.path, dict(self.headers)))
            if self.path not in state.files:
                self.send_error(404)
                return
            body, headers = state.files[self.path]
            etag = headers.get("ETag")
            if etag and self.headers.get("If-None-Match") == etag:
                self.send_response(304)
                self.end_headers()
                return
            self.send_response(int(headers.get("Status", "200")))
            for k, v in headers.items():
                if k != "Status":
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def local_web_fetcher(tmp_path: Path) -> MediaFetcher:
    return MediaFetcher(SourcePolicy(allow_private_hosts=True), tmp_path / "cache")


def test_a_url_is_downloaded_into_the_cache(local_web_fetcher: MediaFetcher, web: WebServer, tmp_path: Path) -> None:
    data = make_portrait(tmp_path / "face.png").read_bytes()
    web.files["/face"] = (data, {"Content-Type": "application/octet-stream"})
    media = local_web_fetcher.fetch(ref("url", f"{web.url}/face"))
    assert media.path.read_bytes() == data
    assert (media.format, media.path.suffix, media.source) == ("png", ".png", f"{web.url}/face")


def test_one_fetcher_downloads_a_shared_url_once(
    local_web_fetcher: MediaFetcher, web: WebServer, tmp_path: Path
) -> None:
    web.files["/face.png"] = (make_portrait(tmp_path / "face.png").read_bytes(), {})
    paths = {local_web_fetcher.fetch(ref("url", f"{web.url}/face.png"), f"clip-{i}").path for i in range(500)}
    assert len(paths) == 1
    assert len(web.requests) == 1


def test_a_later_run_revalidates_instead_of_downloading(web: WebServer, tmp_path: Path) -> None:
    web.files["/face.png"] = (make_portrait(tmp_path / "face.png").read_bytes(), {"ETag": '"v1"'})
    policy = SourcePolicy(allow_private_hosts=True)
    first = MediaFetcher(policy, tmp_path / "cache").fetch(ref("url", f"{web.url}/face.png"))
    second = MediaFetcher(policy, tmp_path / "cache").fetch(ref("url", f"{web.url}/face.png"))
    assert second.path == first.path
    assert web.requests[1][1].get("If-None-Match") == '"v1"'  # answered 304: no body sent again


def test_a_changed_url_is_downloaded_again(web: WebServer, tmp_path: Path) -> None:
    policy = SourcePolicy(allow_private_hosts=True)
    web.files["/face.png"] = (make_portrait(tmp_path / "a.png").read_bytes(), {"ETag": '"v1"'})
    first = MediaFetcher(policy, tmp_path / "cache").fetch(ref("url", f"{web.url}/face.png"))
    web.files["/face.png"] = (
        make_portrait(tmp_path / "b.png", colour="#00ff00").read_bytes(),
        {"ETag": '"v2"'},
    )
    second = MediaFetcher(policy, tmp_path / "cache").fetch(ref("url", f"{web.url}/face.png"))
    assert second.sha256 != first.sha256


def test_redirects_are_followed(local_web_fetcher: MediaFetcher, web: WebServer, tmp_path: Path) -> None:
    web.files["/old"] = (b"", {"Status": "302", "Location": "/new.png"})
    web.files["/new.png"] = (make_portrait(tmp_path / "face.png").read_bytes(), {})
    assert local_web_fetcher.fetch(ref("url", f"{web.url}/old")).format == "png"


def test_a_redirect_to_another_scheme_is_refused(local_web_fetcher: MediaFetcher, web: WebServer) -> None:
    web.files["/old"] = (b"", {"Status": "302", "Location": "file:///etc/passwd"})
    with pytest.raises(ClipInputError, match="redirected to a refused URL scheme"):
        local_web_fetcher.fetch(ref("url", f"{web.url}/old"))


def test_an_http_error_is_reported(local_web_fetcher: MediaFetcher, web: WebServer) -> None:
    with pytest.raises(ClipInputError, match="HTTP 404") as info:
        local_web_fetcher.fetch(ref("url", f"{web.url}/missing.png"), "c4")
    assert (info.value.clip_id, info.value.field) == ("c4", "image_url")


def test_a_cached_file_over_a_lowered_upload_limit_is_refused(web: WebServer, tmp_path: Path) -> None:
    """Revalidated (HTTP 304) or not, the file must still fit what the workers take now."""
    web.files["/long.wav"] = (make_tone(tmp_path / "long.wav", 60.0).read_bytes(), {"ETag": '"v1"'})
    MediaFetcher(SourcePolicy(allow_private_hosts=True), tmp_path / "cache").fetch(
        ref("url", f"{web.url}/long.wav", role="audio")
    )
    limited = MediaFetcher(SourcePolicy(allow_private_hosts=True, max_upload_bytes=1 << 20), tmp_path / "cache")
    with pytest.raises(ClipInputError, match="larger than the workers' upload limit"):
        limited.fetch(ref("url", f"{web.url}/long.wav", role="audio"), "c11")
    assert web.requests[1][1].get("If-None-Match") == '"v1"'


def test_a_download_over_the_size_cap_is_refused(web: WebServer, tmp_path: Path) -> None:
    web.files["/big.png"] = (make_portrait(tmp_path / "face.png").read_bytes(), {})
    small = MediaFetcher(SourcePolicy(allow_private_hosts=True, max_bytes=100), tmp_path / "cache")
    with pytest.raises(ClipInputError, match="100 byte limit"):
        small.fetch(ref("url", f"{web.url}/big.png"))
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []


def test_an_html_page_is_not_an_image(local_web_fetcher: MediaFetcher, web: WebServer) -> None:
    web.files["/face.png"] = (b"<html><body>Sign in to continue</body></html>", {"Content-Type": "image/png"})
    with pytest.raises(ClipInputError, match="unrecognised file format"):
        local_web_fetcher.fetch(ref("url", f"{web.url}/face.png"))


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/face.png",
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://localhost:9/face.png",
        "http://[::1]:9/face.png",
        "http://[::ffff:127.0.0.1]:9/face.png",
        "http://10.0.0.8/face.png",
    ],
)
def test_private_and_metadata_addresses_are_refused_by_default(tmp_path: Path, url: str) -> None:
    fetcher = MediaFetcher(SourcePolicy(), tmp_path / "cache")
    with pytest.raises(ClipInputError, match="non-public address") as info:
        fetcher.fetch(ref("url", url), "c5")
    assert (info.value.clip_id, info.value.field) == ("c5", "image_url")


def test_the_guard_holds_for_a_running_local_server(web: WebServer, tmp_path: Path) -> None:
    web.files["/face.png"] = (make_portrait(tmp_path / "face.png").read_bytes(), {})
    with pytest.raises(ClipInputError, match="non-public address"):
        MediaFetcher(SourcePolicy(), tmp_path / "cache").fetch(ref("url", f"{web.url}/face.png"))
    assert web.requests == []


@pytest.mark.parametrize("url", ["ftp://example.com/a.png", "file:///etc/passwd", "gopher://x/"])
def test_other_url_schemes_are_refused(fetcher: MediaFetcher, url: str) -> None:
    with pytest.raises(ClipInputError, match="scheme"):
        fetcher.fetch(ref("url", url))


def test_a_url_in_a_path_field_is_refused(fetcher: MediaFetcher) -> None:
    with pytest.raises(ClipInputError, match="use the \\*_url field"):
        fetcher.fetch(ref("path", "https://example.com/a.png"))


# -- s3 ------------------------------------------------------------------------------------------------------


@pytest.mark.s3
def test_an_s3_object_is_fetched(s3: Any, s3_bucket: str, tmp_path: Path) -> None:
    data = make_portrait(tmp_path / "face.png").read_bytes()
    s3.put_object(Bucket=s3_bucket, Key="faces/a.png", Body=data)
    fetcher = MediaFetcher(SourcePolicy(), tmp_path / "cache", s3_client=s3)
    media = fetcher.fetch(ref("url", f"s3://{s3_bucket}/faces/a.png"))
    assert media.path.read_bytes() == data
    assert (media.format, media.source) == ("png", f"s3://{s3_bucket}/faces/a.png")


@pytest.mark.s3
def test_an_s3_uri_is_accepted_in_a_path_field(s3: Any, s3_bucket: str, tmp_path: Path) -> None:
    s3.put_object(Bucket=s3_bucket, Key="a.png", Body=make_portrait(tmp_path / "face.png").read_bytes())
    fetcher = MediaFetcher(SourcePolicy(), tmp_path / "cache", s3_client=s3)
    assert fetcher.fetch(ref("path", f"s3://{s3_bucket}/a.png")).format == "png"


@pytest.mark.s3
def test_an_unchanged_s3_object_is_reused_by_a_later_run(s3: Any, s3_bucket: str, tmp_path: Path) -> None:
    s3.put_object(Bucket=s3_bucket, Key="a.png", Body=make_portrait(tmp_path / "a.png").read_bytes())
    uri = f"s3://{s3_bucket}/a.png"
    first = MediaFetcher(SourcePolicy(), tmp_path / "cache", s3_client=s3).fetch(ref("url", uri))
    second = MediaFetcher(SourcePolicy(), tmp_path / "cache", s3_client=s3).fetch(ref("url", uri))
    assert second.path == first.path
    s3.put_object(Bucket=s3_bucket, Key="a.png", Body=make_portrait(tmp_path / "b.png", colour="#00ff00").read_bytes())
    third = MediaFetcher(SourcePolicy(), tmp_path / "cache", s3_client=s3).fetch(ref("url", uri))
    assert third.sha256 != first.sha256


@pytest.mark.s3
def test_a_missing_s3_object_is_a_clear_error(s3: Any, s3_bucket: str, tmp_path: Path) -> None:
    fetcher = MediaFetcher(SourcePolicy(), tmp_path / "cache", s3_client=s3)
    with pytest.raises(ClipInputError, match="no such S3 object") as info:
        fetcher.fetch(ref("url", f"s3://{s3_bucket}/absent.wav", role="audio"), "c6")
    assert (info.value.clip_id, info.value.field) == ("c6", "wav_url")


def test_s3_without_a_client_is_a_clear_error(fetcher: MediaFetcher) -> None:
    with pytest.raises(ClipInputError, match="need an S3 client"):
        fetcher.fetch(ref("url", "s3://bucket/a.png"))
