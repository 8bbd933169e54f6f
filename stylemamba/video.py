"""Stylising a video file frame batch by frame batch: decode, stylise, encode H.264, keep the audio.

Frames are STREAMED: at most one batch of frames is in memory at a time (a minute of 1080p as one
float32 tensor would need tens of GB). PyAV (FFmpeg's libraries, the ``video`` extra) decodes any
format FFmpeg reads and writes H.264 (libx264, yuv420p) into .mp4/.mov/.mkv. The input's audio is
copied as it is when the output container can hold it, else re-encoded to AAC; it is cut where
the video stops (``max_frames``). Each frame keeps its own timestamp (a phone's variable frame rate
plays as shot), and a video stored sideways with a display rotation is turned upright before it is
stylised, so the output plays the same way round in every player.
"""
from __future__ import annotations

import json
import logging
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .image_io import partial_file, replace_durably

log = logging.getLogger("stylemamba")

# containers FFmpeg reads that cameras, phones and the web write (inputs); outputs are OUTPUT_SUFFIXES only
VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mts", ".m2ts", ".ts", ".mpg", ".mpeg", ".m2v",
                  ".vob", ".3gp", ".3g2", ".wmv", ".asf", ".flv", ".f4v", ".ogv", ".mxf", ".dv"}
OUTPUT_SUFFIXES = {".mp4", ".mov", ".mkv", ".m4v"}  # containers that hold H.264 and common audio codecs
# audio codecs the mp4 and mov muxers accept as they are (anything else is re-encoded to AAC; Matroska takes all):
# FFmpeg writes Opus and FLAC into MP4 only
_COPIED_AUDIO = {"mp4": {"aac", "mp3", "ac3", "eac3", "alac", "opus", "flac"},
                 "mov": {"aac", "mp3", "ac3", "eac3", "alac"}}

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
                  on_frames: Callable[[int, int | None], None] | None = None, note: dict | None = None) -> dict:
    """Decode ``src``, apply ``fn`` ((B,3,H,W) in [0,1] -> same) to batches of frames, write ``dst`` (H.264).

    ``on_frames(done, total_or_None)`` reports progress. ``note``: what made the video, kept as JSON in the
    container's comment (:func:`read_video_note`). Returns {'path', 'frames', 'fps', 'size', 'audio'}
    ('size': as the video is shown, after its display rotation).
    The output is written to a temporary name and renamed at the end, so a failure leaves no half file.
    """
    av = require_av()
    src, dst = Path(src), Path(dst)
    check_destination(src, dst)
    inp = _open_video(av, src)
    tmp = None
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
        time_base = vin.time_base or 1 / fps
        step = max(1, round(1 / (fps * time_base)))  # one frame, in time_base ticks
        turns = _display_turns(av, src)
        width, height = vin.codec_context.width, vin.codec_context.height
        if turns % 2:
            width, height = height, width
            log.info("video: %s is stored sideways; its frames are turned upright (%dx%d) before stylising",
                     src.name, width, height)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = partial_file(dst)
        out = av.open(str(tmp), "w", format=_container_format(dst))
        try:
            if note is not None:
                out.metadata["comment"] = json.dumps(note, default=str)
            vout = _video_stream(out, fps, time_base, width, height, crf)
            aout, transcode = None, False
            if ain is not None:
                codec = _audio_codec(ain)
                if _copies_audio(codec, dst):
                    aout = out.add_stream_from_template(ain)
                    audio_note = f"{codec} (copied)"
                else:
                    aout = out.add_stream("aac", rate=ain.codec_context.sample_rate or 48000)
                    transcode = True
                    audio_note = f"{codec} re-encoded to aac"
            batch: list = []
            last_pts = None

            def flush() -> None:
                nonlocal written, last_pts
                if not batch:
                    return
                x = torch.from_numpy(np.stack([np.rot90(f.to_ndarray(format="rgb24"), turns) for f in batch]))
                y = fn(x.permute(0, 3, 1, 2).float().div_(255.0))
                if tuple(y.shape[-2:]) != (height, width):
                    raise ValueError(f"stylised frames are {y.shape[-1]}x{y.shape[-2]}, the video {width}x{height}")
                arr = (y.detach().float().clamp(0, 1).mul(255.0).add_(0.5).to(torch.uint8)
                       .permute(0, 2, 3, 1).cpu().numpy())
                for frame_in, rgb in zip(batch, arr):
                    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(_even(rgb)), format="rgb24")
                    frame.pts = last_pts = _output_pts(frame_in, time_base, last_pts, step)
                    frame.time_base = time_base
                    _mux(out, vout.encode(frame), src, dst)
                written += len(batch)
                batch.clear()
                if on_frames is not None:
                    on_frames(written, total)

            def full() -> bool:
                return max_frames is not None and written + len(batch) >= max_frames

            streams = [vin] + ([ain] if ain is not None else [])
            for packet in inp.demux(*streams):
                if packet.stream.type == "audio":
                    _mux_audio(out, packet, aout, transcode, src, dst)
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
            _mux(out, vout.encode(), src, dst)
            if transcode:
                _mux(out, aout.encode(), src, dst)
        finally:
            out.close()
        replace_durably(tmp, dst)
    except BaseException:
        if tmp is not None:
            _remove_partial(tmp)
        raise
    finally:
        inp.close()
    return {"path": str(dst), "frames": written, "fps": round(float(fps), 3), "size": f"{width}x{height}",
            "audio": audio_note}


def read_video_note(path: str | Path) -> dict | None:
    """What made a stylised video, as :func:`stylize_video` noted it; None for a video without our note."""
    with _open_video(require_av(), Path(path)) as container:
        meta = {k.lower(): v for k, v in container.metadata.items()}
    try:
        note = json.loads(meta.get("comment") or "null")
    except ValueError:
        return None
    return note if isinstance(note, dict) and str(note.get("made_by", "")).startswith("stylemamba") else None


def _open_video(av, src: Path):
    """``av.open(src)`` for reading, with an error that names the file when FFmpeg cannot open it."""
    try:
        return av.open(str(src))
    except (av.error.FFmpegError, OSError) as exc:
        raise ValueError(f"could not open video {src.name} ({exc}); is it a complete video file?") from exc


def check_destination(src: Path, dst: Path) -> None:
    """Refuse, before any frame is decoded, an output that cannot be written or would replace the input."""
    if dst.is_dir():
        raise ValueError(f"output {dst} is a folder; give a video file name, e.g. {dst / (src.stem + '_styled.mp4')}")
    if dst.exists() and dst.resolve() == src.resolve():
        raise ValueError(f"output {dst} is the input video: StyleMamba never overwrites its inputs; "
                         "choose another output name")
    folder = next(p for p in dst.parents if p.exists())
    if not folder.is_dir():
        raise ValueError(f"output {dst} cannot be written: {folder} is a file, not a folder; choose an output "
                         "inside a folder (nothing was changed)")


def _remove_partial(tmp: Path) -> None:
    """Delete the unfinished output; a failure here is only logged, so that it never hides the error that
    stopped the writing."""
    try:
        tmp.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not delete the unfinished output %s (%s); delete it by hand", tmp, exc)


def _display_turns(av, src: Path) -> int:
    """Counter-clockwise quarter turns that show ``src`` upright. Phones store portrait video sideways with a
    display rotation; turning the pixels (rather than copying the rotation) gives the model the picture as
    seen and an output that plays upright even in players that ignore the rotation. PyAV reports it on
    decoded frames only, so the first frame is decoded here (0 with a PyAV without ``VideoFrame.rotation``)."""
    try:
        with av.open(str(src)) as probe:
            frame = next(probe.decode(video=0), None)
    except (av.error.FFmpegError, OSError):
        return 0
    degrees = float(getattr(frame, "rotation", 0) or 0)
    if degrees % 90:
        log.warning("video: %s has a display rotation of %g degrees; turned by the nearest quarter turn",
                    src.name, degrees)
    return round(degrees / 90) % 4


def _output_pts(frame, time_base: Fraction, last: int | None, step: int) -> int:
    """The frame's own time in ``time_base``, so that a variable frame rate plays as shot; always after
    ``last`` (a missing or repeated source timestamp would make the muxer refuse the file)."""
    if frame.pts is None or frame.time_base is None:
        return 0 if last is None else last + step
    pts = round(frame.pts * Fraction(frame.time_base) / time_base)
    return pts if last is None or pts > last else last + 1


def _mux(out, packets, src: Path, dst: Path) -> None:
    """Write packets; FFmpeg's bare 'Invalid argument ... returned 22' becomes a message naming the cause."""
    import av

    for packet in packets:
        try:
            out.mux(packet)
        except av.error.FFmpegError as exc:
            kind = getattr(packet.stream, "type", "video")
            at = float(packet.pts * packet.time_base) if packet.pts is not None and packet.time_base else 0.0
            raise ValueError(
                f"could not write the {kind} of {src.name} into {dst.name} at {at:.3f} s: FFmpeg's muxer refused "
                f"it ({exc}); the input's {kind} timestamps or codec do not fit the {dst.suffix} container. Re-mux "
                f"the input first (ffmpeg -i {src.name} -c copy -fflags +genpts fixed.mkv) and stylise fixed.mkv, "
                "or write an .mkv --output") from exc


def _container_format(dst: Path) -> str:
    return {".mkv": "matroska", ".mov": "mov"}.get(dst.suffix.lower(), "mp4")


def _audio_codec(stream) -> str:
    """The audio stream's codec (mp3), not FFmpeg's decoder for it (mp3float), which no container list names: MP3
    soundtracks were re-encoded to AAC for want of 'mp3float' in the list of codecs copied as they are."""
    codec = stream.codec_context.codec
    return getattr(codec, "canonical_name", None) or codec.name


def _copies_audio(codec: str, dst: Path) -> bool:
    """Whether ``dst``'s container holds this audio codec as it is (no generation loss), else it is re-encoded."""
    container = _container_format(dst)
    return container == "matroska" or codec in _COPIED_AUDIO[container]


def _video_stream(out, fps: Fraction, time_base: Fraction, width: int, height: int, crf: int):
    stream = out.add_stream("libx264", rate=fps)
    # the input's clock, not 1/fps: rounding a variable frame rate to 1/fps repeats or reorders timestamps
    stream.codec_context.time_base = stream.time_base = time_base
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


def _mux_audio(out, packet, aout, transcode: bool, src: Path, dst: Path) -> None:
    """Copy one audio packet into the output, or decode and re-encode it to AAC."""
    if packet.dts is None:  # the demuxer's flush packet
        return
    if transcode:
        for frame in packet.decode():
            frame.pts = None
            _mux(out, aout.encode(frame), src, dst)
    else:
        packet.stream = aout
        _mux(out, [packet], src, dst)
