"""Keeps a local ComfyUI worker up: restarts it when it exits, and when the pipeline drained it and it went idle
(its `/infinitetalk/live` answers 503). `infinitetalk comfyui start` runs this in the background; on SIGTERM it
stops ComfyUI and exits.

    python -m infinitetalk_pipeline.comfy.supervisor --workdir DIR --port N [--cache MODE] [--profile P]
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path
from types import FrameType

from infinitetalk_pipeline.comfy.errors import ComfyError
from infinitetalk_pipeline.comfy.rest import ComfyRest
from infinitetalk_pipeline.comfy.server import LocalComfyUI

SUPERVISOR_NAME = "infinitetalk comfyui start"
log = logging.getLogger("infinitetalk.supervisor")


def supervise(local: LocalComfyUI, stop: threading.Event, poll_interval: float = 1.0) -> None:
    """Run `local` until `stop` is set, restarting it whenever it exits or asks for a restart."""
    local.start()
    log.info(f"ComfyUI pid {local.pid} at {local.url}")
    with ComfyRest(local.url, timeout=5.0) as rest:
        while not stop.wait(poll_interval):
            if not local.running():
                code = local.process.returncode if local.process else None
                log.warning(f"ComfyUI exited (code {code}); restarting it")
            elif rest.live() is False:  # drained and idle: not busy, and not a worker that merely does not answer
                log.info("ComfyUI was drained and is idle; restarting it")
                local.stop()
            else:
                continue
            try:
                local.start()
            except ComfyError as exc:
                log.error(f"restart failed, trying again: {exc}")
                continue
            log.info(f"ComfyUI pid {local.pid} at {local.url}")
    local.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cache", default=None)
    parser.add_argument("--profile", default="preview")
    parser.add_argument("--models-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    local = LocalComfyUI(
        args.workdir,
        port=args.port,
        cache=args.cache,
        profile=args.profile,
        models_dir=args.models_dir,
        supervisor=SUPERVISOR_NAME,
    )
    supervise(local, stop)


if __name__ == "__main__":
    main()
