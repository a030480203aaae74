"""Synthetic media for the demo, the tests and the benchmarks: portraits (Pillow), tones and speech (numpy,
espeak-ng) and videos (PyAV). Nothing here is downloaded."""

from __future__ import annotations

import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile as sf
from PIL import Image, ImageDraw


def make_portrait(path: Path, size: tuple[int, int] = (480, 640), colour: str = "#c89f7a") -> Path:
    """A face-like drawing: enough structure for resize/crop to be visible, no external assets."""
    img = Image.new("RGB", size, "#334455")
    draw = ImageDraw.Draw(img)
    w, h = size
    draw.ellipse([w * 0.2, h * 0.15, w * 0.8, h * 0.75], fill=colour)
    draw.ellipse([w * 0.33, h * 0.35, w * 0.43, h * 0.42], fill="white")
    draw.ellipse([w * 0.57, h * 0.35, w * 0.67, h * 0.42], fill="white")
    draw.rectangle([w * 0.4, h * 0.58, w * 0.6, h * 0.62], fill="#802020")
    img.save(path)
    return path


def make_tone(
    path: Path, seconds: float, rate: int = 16000, freq: float = 220.0, channels: int = 1, subtype: str = "PCM_16"
) -> Path:
    """A sine tone, written by soundfile in whatever container the suffix names (wav, flac, ogg)."""
    t = np.arange(round(seconds * rate)) / rate
    mono = 0.3 * np.sin(2 * np.pi * freq * t)
    data = np.stack([mono] * channels, axis=1) if channels > 1 else mono
    sf.write(path, data, rate, subtype=subtype)
    return path


def make_speech(path: Path, text: str = "Hello, this is a dubbing test.", voice: str = "en") -> Path:
    """Real speech from espeak-ng (a 22.05 kHz WAV); scripts/setup.sh installs it."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed (scripts/setup.sh installs it)")
    subprocess.run([exe, "-v", voice, "-w", str(path), text], check=True, capture_output=True)
    return path


def make_video(
    path: Path, seconds: float, fps: int = 25, size: tuple[int, int] = (320, 240), audio_seconds: float | None = None
) -> Path:
    """An H.264 mp4 whose frames differ (a moving bar), optionally with an AAC tone track."""
    n = round(seconds * fps)
    w, h = size
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=Fraction(fps))
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        ast = None
        if audio_seconds is not None:
            ast = out.add_stream("aac", rate=44100)
        for i in range(n):
            arr = np.full((h, w, 3), 40, dtype=np.uint8)
            x = int(i / max(n - 1, 1) * (w - 20))
            arr[:, x : x + 20] = (220, 180, 60)
            for packet in vs.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
        if ast is not None:
            samples = round(audio_seconds * 44100)
            tone = (0.2 * np.sin(2 * np.pi * 330 * np.arange(samples) / 44100)).astype(np.float32)
            for start in range(0, samples, 1024):
                chunk = tone[start : start + 1024].reshape(1, -1)
                frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
                frame.sample_rate = 44100
                for packet in ast.encode(frame):
                    out.mux(packet)
            for packet in ast.encode():
                out.mux(packet)
    return path
