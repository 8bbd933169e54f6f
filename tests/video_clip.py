"""A small real video file (H.264 + an audio track) made with PyAV, for the video tests."""
from pathlib import Path

import numpy as np


def make_clip(path, frames: int = 20, width: int = 64, height: int = 48, fps: int = 24, audio: str | None = "aac",
              rate: int = 16000) -> Path:
    """Moving colour bars and a 440 Hz tone; ``audio`` is an FFmpeg encoder name (aac, pcm_s16le ...) or None."""
    import av

    path = Path(path)
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        sound = out.add_stream(audio, rate=rate) if audio else None
        for i in range(frames):
            arr = np.zeros((height, width, 3), np.uint8)
            arr[..., 0] = (i * 12) % 256
            arr[:, : width // 2, 1] = 200
            arr[height // 2:, :, 2] = 255 - (i * 12) % 256
            for packet in video.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        if sound is not None:
            n = rate * frames // fps
            tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / rate)).astype(np.float32)[None]
            step = sound.codec_context.frame_size or 1024
            for start in range(0, n, step):
                frame = av.AudioFrame.from_ndarray(tone[:, start:start + step], format="fltp", layout="mono")
                frame.sample_rate, frame.pts = rate, start
                for packet in sound.encode(frame):
                    out.mux(packet)
            for packet in sound.encode():
                out.mux(packet)
    return path
