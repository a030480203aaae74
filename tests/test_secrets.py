"""No secrets anywhere: credentials in input URLs never reach logs, errors, metadata, CLI output or the catalog.

A request's `*_url` may carry a password (`https://user:password@host/...`) or a presigned URL's signature
(`?X-Amz-Credential=...&X-Amz-Signature=...`). The fetch uses the whole URL; everything written for people or
storage describes it with the credentials masked (`infinitetalk_pipeline/redact.py`).

What is allowed to keep the secret: the input itself. The manifest, the request file and the clip's registered
request (`clips/<clip_id>.json` in the output store, the spec a later render fetches from again) hold the URL
whole, as the user wrote it; nothing prints or copies them. Everything else is searched below: the CLI's stdout and
stderr, every event of the Dagster instance (run logs, python logs, asset and failure metadata), its databases and
compute log files, the stored catalog rows, timings and the Parquet catalog.

The first part specifies `redact_url` / `redact_text`, one behaviour each; the second plants secrets in every source
field a request accepts and runs real renders (a local HTTP server, the local ComfyUI, the CLI and Dagster).
"""

from __future__ import annotations

import csv
import json
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from PIL import Image

from infinitetalk_pipeline.clip_renderer import ClipFailure
from infinitetalk_pipeline.comfy.errors import ComfyUnreachable
from infinitetalk_pipeline.comfy.fleet import Fleet
from infinitetalk_pipeline.defs.assets import TIMING, VIDEO, clip_manifest, clip_renders, video_catalog
from infinitetalk_pipeline.defs.fleet import comfyui_workers, comfyui_workers_sensor
from infinitetalk_pipeline.defs.resources import ComfyUIResource, PipelineStorage
from infinitetalk_pipeline.errors import ClipInputError
from infinitetalk_pipeline.manifest import InvalidRow
from infinitetalk_pipeline.media.sources import FetchedMedia, MediaFetcher, SourcePolicy
from infinitetalk_pipeline.redact import redact_text, redact_url
from infinitetalk_pipeline.registry import load_spec
from infinitetalk_pipeline.spec import MediaRef
from infinitetalk_pipeline.storage import LocalOutputStore
from tests.fixtures.http_files import FileServer, serve_files
from tests.fixtures.media import make_portrait, make_tone, make_video
from tests.fixtures.pipeline import local_resources

# -- redact_url / redact_text --------------------------------------------------------------------------------------


def test_user_info_is_masked_and_the_host_kept() -> None:
    assert (
        redact_url("https://alice:hunter2@media.example.com:8443/a.png") == "https://***@media.example.com:8443/a.png"
    )


def test_a_user_name_alone_is_masked_too() -> None:
    # tokens are often sent as the user name (`https://<token>@host/`)
    assert redact_url("https://ghp_abc123@example.com/a.png") == "https://***@example.com/a.png"


def test_a_presigned_s3_url_keeps_its_readable_parameters() -> None:
    url = (
        "https://b.s3.amazonaws.com/a.wav?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=AKIAEXAMPLE%2F20260101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20260101T000000Z"
        "&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Security-Token=FwoGZX&X-Amz-Signature=0f1e2d"
    )
    assert redact_url(url) == (
        "https://b.s3.amazonaws.com/a.wav?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=***&X-Amz-Date=20260101T000000Z"
        "&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Security-Token=***&X-Amz-Signature=***"
    )


def test_parameter_names_match_case_insensitively() -> None:
    assert redact_url("https://h/a?x-amz-signature=1&SIGNATURE=2&Token=3") == (
        "https://h/a?x-amz-signature=***&SIGNATURE=***&Token=***"
    )


def test_percent_encoded_parameter_names_are_recognised() -> None:
    assert redact_url("https://h/a?X%2DAmz%2DSignature=1&b=2") == "https://h/a?X%2DAmz%2DSignature=***&b=2"


@pytest.mark.parametrize(
    "name",
    [
        *("sig", "signature", "token", "access_token", "key", "api_key", "apikey", "apiKey", "password", "secret"),
        *("credential", "auth", "client_secret", "AWSAccessKeyId", "X-Goog-Signature", "X-Goog-Credential"),
    ],
)
def test_generic_credential_parameters_are_masked(name: str) -> None:
    assert redact_url(f"https://h/a.png?{name}=s3cr3t&page=2") == f"https://h/a.png?{name}=***&page=2"


def test_an_azure_sas_keeps_its_expiry_and_permissions_but_not_its_signature() -> None:
    url = "https://acct.blob.core.windows.net/c/a.wav?sv=2022-11-02&se=2026-01-01T00%3A00Z&sp=r&sr=b&sig=AbC%2Bd%3D"
    assert redact_url(url) == (
        "https://acct.blob.core.windows.net/c/a.wav?sv=2022-11-02&se=2026-01-01T00%3A00Z&sp=r&sr=b&sig=***"
    )


def test_a_token_in_the_fragment_is_masked() -> None:
    assert redact_url("https://h/cb#access_token=abc&state=1") == "https://h/cb#access_token=***&state=1"


def test_a_url_typed_without_its_scheme_is_masked() -> None:
    assert redact_url("user:pw@host/a.png?sig=1") == "***@host/a.png?sig=***"


@pytest.mark.parametrize("value", ["/data/media/face.png", "s3://bucket/faces/a.png", "base64", "layout:left-right"])
def test_what_carries_no_credential_is_unchanged(value: str) -> None:
    assert redact_url(value) == value


def test_empty_credential_values_are_left_as_they_are() -> None:
    assert redact_url("https://h/a?token=&page=1") == "https://h/a?token=&page=1"


def test_redacting_twice_changes_nothing() -> None:
    once = redact_url("https://u:p@h/a?sig=1&b=2")
    assert redact_url(once) == once == "https://***@h/a?sig=***&b=2"


def test_every_url_in_a_message_is_redacted_and_the_rest_kept() -> None:
    text = "HTTP 404 from https://u:pw@a.example/x.png?sig=1; also 'http://h/y?token=2'. Retry later."
    assert (
        redact_text(text)
        == "HTTP 404 from https://***@a.example/x.png?sig=***; also 'http://h/y?token=***'. Retry later."
    )


def test_a_credential_parameter_outside_a_full_url_is_masked() -> None:
    assert redact_text("GET /x.png?X-Amz-Signature=abc HTTP/1.1") == "GET /x.png?X-Amz-Signature=*** HTTP/1.1"


def test_text_without_urls_is_unchanged() -> None:
    text = "clip 'a', field 'wav_path': no such file: /data/a.wav (ratio 16:9, 100% done)"
    assert redact_text(text) == text


# -- the boundaries that use them ----------------------------------------------------------------------------------

URL = "https://user:pw@media.example/a.png?X-Amz-Signature=sig123"


def test_a_clip_input_error_masks_the_url_it_quotes() -> None:
    exc = ClipInputError("c1", "image_url", f"HTTP 404 from {URL}")
    assert "pw" not in str(exc) and "sig123" not in exc.reason and "media.example/a.png" in str(exc)


def test_a_clip_failure_masks_library_error_texts() -> None:
    failure = ClipFailure.of("c1", RuntimeError(f"cannot connect to {URL}"))
    assert (
        failure.message
        == "clip 'c1': RuntimeError: cannot connect to https://***@media.example/a.png?X-Amz-Signature=***"
    )


def test_an_invalid_manifest_row_masks_its_reason_and_raw_clip_id() -> None:
    row = InvalidRow(3, URL, "clip_id", f"clip id {URL!r} is not usable")
    assert "pw" not in f"{row.clip_id} {row.reason}" and "sig123" not in f"{row.clip_id} {row.reason}"


def test_fetched_media_describe_their_source_without_credentials(tmp_path: Path) -> None:
    media = FetchedMedia(tmp_path / "a.png", "0" * 64, "png", 1, URL)
    assert media.source == "https://***@media.example/a.png?X-Amz-Signature=***"


# -- secrets planted in every source field, through the real pipeline ------------------------------------------------

PASSWORD = "S3cr3tPassw0rd"
SIGNATURE = f"sig{uuid.uuid4().hex}"  # unique per test session: a hit can only come from this run
CREDENTIAL = f"AKIA{uuid.uuid4().hex.upper()}"
SECRETS = (PASSWORD, SIGNATURE, CREDENTIAL)


def _secret_url(base: str, name: str) -> str:
    """`name` on the server at `base` (`http://127.0.0.1:port`), as a password-protected presigned URL."""
    host = base.removeprefix("http://")
    return (
        f"http://user:{PASSWORD}@{host}/{name}?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        f"&X-Amz-Credential={CREDENTIAL}%2F20260101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Expires=3600"
        f"&X-Amz-SignedHeaders=host&X-Amz-Signature={SIGNATURE}"
    )


def _closed_port() -> int:
    """A port nothing listens on: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _leaks(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


def _file_leaks(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, list[str]]:
    """Every file under `root` (binary ones too: SQLite databases) that holds a planted secret."""
    found = {}
    for path in root.rglob("*"):
        if path.is_file() and not any(path.is_relative_to(s) for s in skip):
            data = path.read_bytes()
            if hits := [s for s in SECRETS if s.encode() in data]:
                found[str(path.relative_to(root))] = hits
    return found


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FileServer]:
    """Real media on a local HTTP server; names it does not have answer 404."""
    root = tmp_path_factory.mktemp("served")
    with serve_files(root) as server:
        make_portrait(root / "duo.png", size=(256, 128))
        make_portrait(root / "face.png", size=(128, 128))
        left, right = Image.new("L", (256, 128), 0), Image.new("L", (256, 128), 0)
        left.paste(255, (0, 0, 128, 128))
        right.paste(255, (128, 0, 256, 128))
        left.save(root / "mask-left.png")
        right.save(root / "mask-right.png")
        make_tone(root / "a.wav", 0.6)
        make_tone(root / "b.wav", 0.8, freq=330)
        make_video(root / "src.mp4", seconds=0.6, fps=25, size=(128, 128))
        yield server


def _requests(web: FileServer) -> dict[str, dict[str, object]]:
    """clip id -> request: two that render with every field a secret URL, and one failure per field."""

    def ok(name: str) -> str:
        return _secret_url(web.url, name)

    def missing(name: str) -> str:
        return _secret_url(web.url, f"missing/{name}")

    refused = _secret_url(f"http://127.0.0.1:{_closed_port()}", "a.wav")
    size = {"width": 128, "height": 128}
    duo = {"person_count": "multi", "width": 256, "height": 128}
    masks = {"mask_url": ok("mask-left.png"), "mask_url_2": ok("mask-right.png")}
    return {
        "ok-i2v-multi": {**duo, "image_url": ok("duo.png"), "wav_url": ok("a.wav"), "wav_url_2": ok("b.wav"), **masks},
        "ok-v2v": {**size, "input_type": "video", "video_url": ok("src.mp4"), "wav_url": ok("a.wav")},
        "bad-image": {**size, "image_url": missing("face.png"), "wav_url": ok("a.wav")},
        "bad-video": {**size, "input_type": "video", "video_url": missing("src.mp4"), "wav_url": ok("a.wav")},
        "bad-wav": {**size, "image_url": ok("face.png"), "wav_url": refused},
        "bad-wav-2": {**duo, "image_url": ok("duo.png"), "wav_url": ok("a.wav"), "wav_url_2": missing("b.wav")},
        "bad-mask": {**duo, "image_url": ok("duo.png"), "wav_url": ok("a.wav"), **masks, "mask_url": missing("m.png")},
        "bad-mask-2": {**duo, "image_url": ok("duo.png"), "wav_url": ok("a.wav"), **masks, "mask_url_2": missing("m")},
        # typed without its scheme: refused before any request, and the refusal quotes the value
        "bad-scheme": {**size, "image_url": ok("face.png").removeprefix("http://"), "wav_url": ok("a.wav")},
    }


SUCCEEDING = ("ok-i2v-multi", "ok-v2v")
FAILING = ("bad-image", "bad-video", "bad-wav", "bad-wav-2", "bad-mask", "bad-mask-2", "bad-scheme")
FIELD_OF = {
    "bad-image": "image_url",
    "bad-video": "video_url",
    "bad-wav": "wav_url",
    "bad-wav-2": "wav_url_2",
    "bad-mask": "mask_url",
    "bad-mask-2": "mask_url_2",
    "bad-scheme": "image_url",
}


# -- worker URLs (a ComfyUI behind an authenticating proxy) ------------------------------------------------------------


def _worker_url(port: int) -> str:
    return f"http://worker:{PASSWORD}@127.0.0.1:{port}"


def test_the_workers_asset_says_why_a_worker_does_not_answer_without_its_credential() -> None:
    resources = {"comfyui": ComfyUIResource(urls=_worker_url(_closed_port()))}
    [event] = dg.materialize([comfyui_workers], resources=resources).get_asset_materialization_events()
    [row] = [r.data for r in event.materialization.metadata["workers"].value.records]
    assert not row["reachable"] and "http://***@127.0.0.1:" in row["problem"]
    assert _leaks(json.dumps(row)) == []


def test_the_workers_sensor_keeps_no_credential_in_its_cursor() -> None:
    resources = {"comfyui": ComfyUIResource(urls=_worker_url(_closed_port()))}
    with dg.instance_for_test() as instance:
        result = comfyui_workers_sensor(dg.build_sensor_context(instance=instance, resources=resources))
    assert result.cursor and "http://***@127.0.0.1:" in result.cursor and _leaks(result.cursor) == []


def test_a_fleet_that_no_worker_answers_names_its_workers_without_their_credentials(tmp_path: Path) -> None:
    with socket.socket() as silent:  # connections complete in the backlog; no request is ever answered
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        fleet = Fleet([_worker_url(silent.getsockname()[1])], poll_interval=0.1, silence_timeout=1)
        with fleet, pytest.raises(ComfyUnreachable, match="no ComfyUI worker answered") as raised:
            fleet.render(lambda _client: {}, "3", tmp_path / "out.png")
    assert "http://***@127.0.0.1:" in str(raised.value) and _leaks(str(raised.value)) == []


# -- the CLI ---------------------------------------------------------------------------------------------------------


def _cli(tmp_path: Path, comfy_url: str, clip_id: str, body: dict[str, object]) -> subprocess.CompletedProcess[str]:
    request = tmp_path / f"{clip_id}.json"
    request.write_text(json.dumps({"input": body}))
    exe = shutil.which("infinitetalk", path=str(Path(sys.executable).parent)) or "infinitetalk"
    command = [exe, "render", str(request), "--comfyui-url", comfy_url, "--output-dir", str(tmp_path / "out")]
    return subprocess.run([*command, "--allow-private-urls"], capture_output=True, text=True, timeout=600)


@pytest.mark.comfyui
@pytest.mark.parametrize("clip_id", SUCCEEDING + FAILING)
def test_the_cli_prints_and_stores_no_secret(tmp_path: Path, comfy_url: str, web: FileServer, clip_id: str) -> None:
    result = _cli(tmp_path, comfy_url, clip_id, _requests(web)[clip_id])
    output = result.stdout + result.stderr
    assert _leaks(output) == [], output
    assert _file_leaks(tmp_path / "out") == {}
    last = json.loads(result.stdout.strip().splitlines()[-1])
    if clip_id in SUCCEEDING:
        assert result.returncode == 0, output
        row = json.loads((tmp_path / "out" / "catalog" / "rows" / f"{clip_id}.json").read_text())
        assert "user:" not in row["inputs"] and "http://***@127.0.0.1:" in row["inputs"]
    else:
        assert result.returncode == 1
        assert f"clip '{clip_id}', field '{FIELD_OF[clip_id]}'" in last["error"] and "***" in last["error"]


def test_the_fetch_uses_the_whole_url_and_describes_it_masked(tmp_path: Path, web: FileServer) -> None:
    fetcher = MediaFetcher(SourcePolicy(allow_private_hosts=True), cache_dir=tmp_path / "cache")
    media = fetcher.fetch(MediaRef("audio", "wav_url", "url", _secret_url(web.url, "a.wav")), "c1")
    assert SIGNATURE in web.requests[-1].path and CREDENTIAL in web.requests[-1].path
    assert media.source.startswith("http://***@127.0.0.1:") and _leaks(media.source) == []


# -- Dagster ---------------------------------------------------------------------------------------------------------

FIELDS = ["clip_id", "input_type", "person_count", "image_url", "video_url", "wav_url", "wav_url_2"]
FIELDS += ["mask_url", "mask_url_2", "width", "height"]


@pytest.fixture(scope="module")
def dagster_run(
    tmp_path_factory: pytest.TempPathFactory, comfy_url: str, web: FileServer
) -> Iterator[tuple[dg.DagsterInstance, Path, Path]]:
    """The manifest registered, all its clips rendered in one run (a backfill range), and the catalog refreshed, on
    an instance whose databases and compute logs live in `home`. httpx's request lines are routed into the run
    logs (as a deployment may do), so they are searched too."""
    root = tmp_path_factory.mktemp("secrets")
    home = root / "dagster_home"
    home.mkdir()
    requests = _requests(web)
    with (root / "manifest.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        writer.writeheader()
        for clip_id, body in requests.items():
            writer.writerow({"clip_id": clip_id, **body})
        # invalid: two sources for one portrait (the manifest's own validation)
        writer.writerow({"clip_id": "bad-row", "image_url": requests["bad-image"]["image_url"], "video_url": "x"})
    # the worker's URL carries a credential too (a ComfyUI behind an authenticating proxy)
    resources = local_resources(root, comfy_url.replace("http://", f"http://worker:{PASSWORD}@"))
    storage = resources["storage"]
    assert isinstance(storage, PipelineStorage)
    resources["storage"] = PipelineStorage(  # the test's server is on 127.0.0.1
        **{field: getattr(storage, field) for field in ("output_root", "cache_dir", "allowed_roots", "manifest", "s3")},
        allow_private_urls=True,
    )
    python_logs = {"python_logs": {"managed_python_loggers": ["httpx"], "python_log_level": "INFO"}}
    assets = [clip_manifest, clip_renders, video_catalog]
    with dg.instance_for_test(temp_dir=str(home), overrides=python_logs) as instance:
        dg.materialize(assets, selection=[clip_manifest], instance=instance, resources=resources)
        keys = instance.get_dynamic_partitions("clips")
        dg.materialize(
            assets,
            selection=[TIMING, VIDEO],
            instance=instance,
            resources=resources,
            tags={"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]},
            raise_on_error=False,
        )
        dg.materialize(assets, selection=[video_catalog], instance=instance, resources=resources)
        yield instance, home, root / "out"


def _event_texts(instance: dg.DagsterInstance) -> list[str]:
    """Every event record of every run, serialized whole (messages, metadata, errors with their causes)."""
    return [dg.serialize_value(entry) for run in instance.get_runs() for entry in instance.all_logs(run.run_id)]


@pytest.mark.comfyui
def test_no_event_of_any_run_holds_a_secret(dagster_run) -> None:
    instance, _, _ = dagster_run
    events = _event_texts(instance)
    assert [e for e in events if _leaks(e)] == []
    text = "\n".join(events)
    # not vacuous: the failures, the invalid row and httpx's request lines are there, masked
    for clip_id in FAILING:
        assert f"clip '{clip_id}', field '{FIELD_OF[clip_id]}'" in text
    assert "bad-row" in text and "HTTP Request: GET http://" in text and "X-Amz-Signature=***" in text


@pytest.mark.comfyui
def test_the_run_failure_metadata_names_each_clip_without_its_secret(dagster_run) -> None:
    instance, _, _ = dagster_run
    [run] = [r for r in instance.get_runs() if r.status == dg.DagsterRunStatus.FAILURE]
    [failure] = [e for e in instance.all_logs(run.run_id) if e.dagster_event and e.dagster_event.is_step_failure]
    data = failure.dagster_event.step_failure_data
    failed = data.user_failure_data.metadata["failed_clips"].value
    assert sorted(failed) == sorted(FAILING)
    assert _leaks(json.dumps(failed)) == [] and _leaks(data.error.to_string()) == []


@pytest.mark.comfyui
def test_no_database_or_compute_log_file_holds_a_secret(dagster_run) -> None:
    _, home, _ = dagster_run
    assert list(home.rglob("*.db")) and list(home.rglob("*.err")) + list(home.rglob("*.out"))
    assert _file_leaks(home) == {}


@pytest.mark.comfyui
def test_the_catalog_and_stored_records_hold_no_secret_but_say_where_inputs_came_from(dagster_run) -> None:
    _, _, out = dagster_run
    assert _file_leaks(out, skip=(out / "registry",)) == {}
    catalog = pd.read_parquet(out / "catalog" / "video_catalog")
    assert sorted(catalog["clip_id"]) == sorted(SUCCEEDING)
    inputs = {row.clip_id: json.loads(row.inputs) for row in catalog.itertuples()}
    assert sorted(inputs["ok-i2v-multi"]) == ["audio", "audio_2", "image", "mask", "mask_2"]
    assert inputs["ok-v2v"]["video"].startswith("http://***@127.0.0.1:")
    assert "X-Amz-Signature=***" in inputs["ok-v2v"]["video"] and "X-Amz-Expires=3600" in inputs["ok-v2v"]["video"]
    assert {w.split("@")[0] for w in catalog["worker"]} == {"http://***"}  # the worker named, its credential not


@pytest.mark.comfyui
def test_the_registered_request_keeps_the_whole_url_to_fetch_again(dagster_run) -> None:
    # the input itself, like the manifest: a later render of the clip fetches from it
    _, _, out = dagster_run
    request = load_spec(LocalOutputStore(out), "ok-v2v").request
    assert all(secret in (request.video_url or "") for secret in SECRETS)
