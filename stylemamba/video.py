"""Stylising a video file frame batch by frame batch: decode, stylise, encode H.264, keep the audio.

Frames are STREAMED: at most one batch of frames is in memory at a time (a minute of 1080p as one
float32 tensor would need tens of GB). PyAV (FFmpeg's libraries, the ``video`` extra) decodes any
format FFmpeg reads and writes H.264 (libx264, yuv420p) into .mp4/.mov/.mkv. The input's audio is
copied as it is when the output container can hold it, else re-encoded to AAC; it is cut where
the video stops (``max_frames``).
"""
from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np
import torch

log = logging.getLogger("stylemamba")

VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v"}
OUTPUT_SUFFIXES = {".mp4", ".mov", ".mkv", ".m4v"}  # containers that hold H.264 and common audio codecs
# audio codecs the mp4/mov muxer accepts as they are (anything else is re-encoded to AAC)
_MP4_AUDIO = {"aac", "mp3", "ac3", "eac3", "alac", "opus", "flac"}

INSTALL_HINT = "pip install 'stylemamba[video]' (or: pip install av)"


def require_av():
    """PyAV, or an ImportError that says how to install it."""
    try:
        import av
    except ImportError as exc:
        raise ImportError(f"video needs PyAV, which is not installed: {INSTALL_HINT}") from exc
    return av


def stylize_video(src: str | Path, dst: str | Path, fn: Callable[[torch.Tensor], torch.Tensor],
                  batch_size: int = 4, max_frames: int | None = None, crf: int = 18,
                  on_frames: Callable[[int, int | None], None] | None = None) -> dict:
    """Decode ``src``, apply ``fn`` ((B,3,H,W) in [0,1] -> same) to batches of frames, write ``dst`` (H.264).

    ``on_frames(done, total_or_None)`` reports progress. Returns {'path', 'frames', 'fps', 'size', 'audio'}.
    The output is written to a temporary name and renamed at the end, so a failure leaves no half file.
    """
    av = require_av()
    src, dst = Path(src), Path(dst)
    try:
        inp = av.open(str(src))
    except (av.error.FFmpegError, OSError) as exc:
        raise ValueError(f"could not open video {src.name} ({exc}); is it a complete video file?") from exc
    tmp = dst.with_name(dst.name + ".partial" + dst.suffix)
    written, audio_note, width, height = 0, "none", 0, 0
    try:
        if not inp.streams.video:
            raise ValueError(f"{src.name} has no video stream")
        vin = inp.streams.video[0]
        vin.thread_type = "AUTO"
        ain = inp.streams.audio[0] if inp.streams.audio else None
        total = vin.frames or None
        if max_frames is not None:
            total = min(total, max_frames) if total else max_frames
        fps = vin.average_rate or vin.guessed_rate or Fraction(24)
        width, height = vin.codec_context.width, vin.codec_context.height
        dst.parent.mkdir(parents=True, exist_ok=True)
        out = av.open(str(tmp), "w", format=_container_format(dst))
        try:
            vout = _video_stream(out, fps, width, height, crf)
            aout, transcode = None, False
            if ain is not None:
                if ain.codec_context.name in _MP4_AUDIO or dst.suffix.lower() == ".mkv":
                    aout = out.add_stream_from_template(ain)
                    audio_note = f"{ain.codec_context.name} (copied)"
                else:
                    aout = out.add_stream("aac", rate=ain.codec_context.sample_rate or 48000)
                    transcode = True
                    audio_note = f"{ain.codec_context.name} re-encoded to aac"
            batch: list = []

            def flush() -> None:
                nonlocal written
                if not batch:
                    return
                x = torch.from_numpy(np.stack([f.to_ndarray(format="rgb24") for f in batch]))
                y = fn(x.permute(0, 3, 1, 2).float().div_(255.0))
                if tuple(y.shape[-2:]) != (height, width):
                    raise ValueError(f"stylised frames are {y.shape[-1]}x{y.shape[-2]}, the video {width}x{height}")
                arr = (y.detach().float().clamp(0, 1).mul(255.0).add_(0.5).to(torch.uint8)
                       .permute(0, 2, 3, 1).cpu().numpy())
                for frame_in, rgb in zip(batch, arr):
                    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(_even(rgb)), format="rgb24")
                    frame.pts, frame.time_base = frame_in.pts, frame_in.time_base
                    for packet in vout.encode(frame):
                        out.mux(packet)
                written += len(batch)
                batch.clear()
                if on_frames is not None:
                    on_frames(written, total)

            def full() -> bool:
                return max_frames is not None and written + len(batch) >= max_frames

            streams = [vin] + ([ain] if ain is not None else [])
            for packet in inp.demux(*streams):
                if packet.stream.type == "audio":
                    _mux_audio(out, packet, aout, transcode)
                    continue
                for frame in packet.decode():
                    if full():
                        break
                    batch.append(frame)
                    if len(batch) >= batch_size:
                        flush()
                if full():
                    break
            flush()
            if written == 0:
                raise ValueError(f"video {src.name} has no readable frames")
            for packet in vout.encode():
                out.mux(packet)
            if transcode:
                for packet in aout.encode():
                    out.mux(packet)
        finally:
            out.close()
        tmp.replace(dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        inp.close()
    return {"path": str(dst), "frames": written, "fps": round(float(fps), 3), "size": f"{width}x{height}",
            "audio": audio_note}


def _container_format(dst: Path) -> str:
    return {".mkv": "matroska", ".mov": "mov"}.get(dst.suffix.lower(), "mp4")


def _video_stream(out, fps: Fraction, width: int, height: int, crf: int):
    stream = out.add_stream("libx264", rate=fps)
    stream.width, stream.height = width + width % 2, height + height % 2  # yuv420p needs even sides
    stream.pix_fmt = "yuv420p"
    stream.options = {"crf": str(crf), "preset": "medium"}
    if (width % 2, height % 2) != (0, 0):
        log.info("video: %dx%d padded to %dx%d (H.264 in yuv420p needs even sides)", width, height,
                 stream.width, stream.height)
    return stream


def _even(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    if h % 2 or w % 2:
        rgb = np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return rgb


def _mux_audio(out, packet, aout, transcode: bool) -> None:
    """Copy one audio packet into the output, or decode and re-encode it to AAC."""
    if packet.dts is None:  # the demuxer's flush packet
        return
    if transcode:
        for frame in packet.decode():
            frame.pts = None
            for p in aout.encode(frame):
                out.mux(p)
    else:
        packet.stream = aout
        out.mux(packet)
