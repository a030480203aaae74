"""Makes the example manifest's media (portraits, speech, a source video) under examples/media/.

Generated rather than committed: espeak-ng speaks the lines, Pillow draws the portraits, PyAV encodes the video.
"""

from __future__ import annotations

from pathlib import Path

from tests.fixtures.synth import make_portrait, make_speech, make_video

HERE = Path(__file__).resolve().parent


def main() -> None:
    media = HERE / "media"
    media.mkdir(exist_ok=True)
    make_portrait(media / "anna.png", size=(480, 640))
    make_portrait(media / "duo.png", size=(832, 480), colour="#a07858")
    make_speech(media / "anna_en.wav", "Welcome back. Today we look at how dubbing works at scale.")
    make_speech(media / "ben_en.wav", "And I will answer every question you send us.", voice="en-us")
    make_video(media / "studio.mp4", seconds=3.0, fps=30, size=(640, 360))
    print(f"example media in {media}")


if __name__ == "__main__":
    main()
