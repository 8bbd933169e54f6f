"""Video files: streamed batch by batch (never the whole clip in memory), H.264 out, the audio kept; phone
video (sideways with a display rotation, variable frame rate) and camera containers (.mts, .ts ...) too."""
import logging
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")

from stylemamba.video import OUTPUT_SUFFIXES, VIDEO_SUFFIXES, stylize_video  # noqa: E402
from video_clip import make_clip  # noqa: E402


def test_frames_are_streamed_in_batches_and_audio_is_kept(tmp_path):
    clip = make_clip(tmp_path / "in.mp4", frames=22, audio="aac")
    batches = []

    def invert(x):
        batches.append(x.shape[0])
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 48, 64) and 0 <= float(x.min()) <= float(x.max()) <= 1
        return 1 - x

    info = stylize_video(clip, tmp_path / "out.mp4", invert, batch_size=4)
    assert batches == [4, 4, 4, 4, 4, 2]  # at most one batch of frames at a time
    assert info["frames"] == 22 and info["audio"] == "aac (copied)" and info["size"] == "64x48"
    with av.open(str(clip)) as a, av.open(str(tmp_path / "out.mp4")) as b:
        src = [f.to_ndarray(format="rgb24").astype(float) for f in a.decode(video=0)]
        out = [f.to_ndarray(format="rgb24").astype(float) for f in b.decode(video=0)]
        assert b.streams.video[0].codec_context.name == "h264" and b.streams.audio[0].codec_context.name == "aac"
    assert len(out) == 22
    # the function was applied (inverted), up to H.264 losses
    assert abs((255 - src[5]) - out[5]).mean() < 12 and abs(src[5] - out[5]).mean() > 60


def test_max_frames_and_audio_that_mp4_cannot_hold(tmp_path):
    clip = make_clip(tmp_path / "in.mkv", frames=20, audio="pcm_s16le")  # PCM is not allowed in .mp4
    info = stylize_video(clip, tmp_path / "out.mp4", lambda x: x, batch_size=3, max_frames=7)
    assert info["frames"] == 7 and info["audio"] == "pcm_s16le re-encoded to aac"
    with av.open(str(tmp_path / "out.mp4")) as out:
        assert len(list(out.decode(video=0))) == 7 and out.streams.audio[0].codec_context.name == "aac"


def test_a_failure_leaves_no_half_file(tmp_path):
    clip = make_clip(tmp_path / "in.mp4", frames=8, audio=None)

    def broken(x):
        raise RuntimeError("out of luck")

    with pytest.raises(RuntimeError, match="out of luck"):
        stylize_video(clip, tmp_path / "out.mp4", broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="could not open video bad.mp4"):
        stylize_video(tmp_path / "bad.mp4", tmp_path / "o.mp4", lambda x: x)


# ------------------------------------------------------------------------------------------ clips made here
def write_clip(path, times_ms=None, codec="libx264", rotation=None, audio=None, fps=30):
    """Ten frames (or one at each of ``times_ms``), each distinct, with a green left half and a blue bottom
    half (so a turn shows); optionally a display rotation (as phones store portrait video) and a 0.5 s tone."""
    path = Path(path)
    with av.open(str(path), "w") as out:
        video = out.add_stream(codec, rate=fps)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        if times_ms is not None:  # a variable frame rate: a clock finer than 1/fps
            video.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            if not hasattr(video, "set_display_rotation"):
                pytest.skip(f"PyAV {av.__version__} cannot write a display rotation")
            video.set_display_rotation(rotation)
        sound = out.add_stream(audio, rate=48000) if audio else None
        if sound is not None:
            sound.codec_context.bit_rate = 64000  # the WMA encoder has no default
        for i, t in enumerate(times_ms if times_ms is not None else range(10)):
            arr = np.zeros((48, 64, 3), np.uint8)
            arr[..., 0] = i * 20
            arr[:, :32, 1] = 200
            arr[24:, :, 2] = 255
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            frame.pts, frame.time_base = t, (Fraction(1, 1000) if times_ms is not None else Fraction(1, fps))
            out.mux(video.encode(frame))
        out.mux(video.encode())
        if sound is not None:
            step = sound.codec_context.frame_size or 1024
            tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(24000) / 48000)).astype(np.float32)[None]
            for start in range(0, tone.shape[1] - step + 1, step):
                frame = av.AudioFrame.from_ndarray(tone[:, start:start + step], format="fltp", layout="mono")
                frame.sample_rate, frame.pts = 48000, start
                out.mux(sound.encode(frame))
            out.mux(sound.encode())
    return path


def shown(path):
    """Each frame of a video as a player shows it: turned by its display rotation."""
    with av.open(str(path)) as c:
        return [np.rot90(f.to_ndarray(format="rgb24"), round((f.rotation or 0) / 90)).astype(float)
                for f in c.decode(video=0)]


def frame_times(path):
    with av.open(str(path)) as c:
        return [round(float(f.time), 3) for f in c.decode(video=0)]


# ------------------------------------------------------------------------------------------ rotation
@pytest.mark.parametrize("rotation", [-90, 90, 180])
def test_a_phone_video_stored_sideways_is_stylised_and_written_upright(tmp_path, rotation):
    clip = write_clip(tmp_path / "phone.mp4", rotation=rotation)
    seen = []

    def model(x):
        seen.append(tuple(x.shape[-2:]))
        return x

    info = stylize_video(clip, tmp_path / "out.mp4", model, batch_size=4)
    upright = (64, 48) if rotation % 180 else (48, 64)
    src, out = shown(clip), shown(tmp_path / "out.mp4")
    assert len(out) == len(src) == 10 and src[0].shape[:2] == upright
    assert out[0].shape[:2] == upright and max(abs(a - b).mean() for a, b in zip(src, out)) < 12  # as shown
    assert set(seen) == {upright}  # the model sees the picture the right way up
    assert info["size"] == f"{upright[1]}x{upright[0]}"
    with av.open(str(tmp_path / "out.mp4")) as c:
        assert next(c.decode(video=0)).rotation == 0  # upright pixels: right even where rotation is ignored


# ------------------------------------------------------------------------------------------ variable frame rate
@pytest.mark.parametrize("times_ms", [(0, 10, 20, 40, 200),  # made the muxer refuse the file
                                      (0, 33, 67, 100, 200, 233, 300, 400, 433, 467)])  # lost its timing
@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_a_variable_frame_rate_keeps_each_frames_time(tmp_path, times_ms, suffix):
    clip = write_clip(tmp_path / "phone.mp4", times_ms=times_ms)
    assert frame_times(clip) == [t / 1000 for t in times_ms]
    info = stylize_video(clip, tmp_path / f"out{suffix}", lambda x: 1 - x, batch_size=3)
    assert info["frames"] == len(times_ms)
    assert frame_times(tmp_path / f"out{suffix}") == [t / 1000 for t in times_ms]


def test_timestamps_only_ever_go_forward():
    from stylemamba.video import _output_pts

    class Frame:
        def __init__(self, pts, time_base=Fraction(1, 1000)):
            self.pts, self.time_base = pts, time_base

    last, got = None, []
    for frame in [Frame(0), Frame(10), Frame(10), Frame(5), Frame(None), Frame(50), Frame(100, Fraction(1, 1001))]:
        last = _output_pts(frame, Fraction(1, 90000), last, step=3000)
        got.append(last)
    assert got == [0, 900, 901, 902, 3902, 4500, 8991]  # repeated, going back, missing: still forward


# ------------------------------------------------------------------------------------------ camera containers
@pytest.mark.parametrize("name, codec, audio, audio_note", [
    ("camera.MTS", "libx264", "ac3", "ac3 (copied)"),  # AVCHD camcorders
    ("camera.m2ts", "libx264", "ac3", "ac3 (copied)"),
    ("broadcast.ts", "libx264", "mp2", "mp2 re-encoded to aac"),
    ("dvd.mpg", "mpeg2video", "mp2", "mp2 re-encoded to aac"),
    ("phone.3gp", "libx264", "aac", "aac (copied)"),
    ("old.wmv", "wmv2", "wmav2", "wmav2 re-encoded to aac"),
    ("web.flv", "flv", "aac", "aac (copied)"),
])
def test_camera_phone_and_web_containers_are_stylised_as_videos(tmp_path, name, codec, audio, audio_note):
    clip = write_clip(tmp_path / name, codec=codec, audio=audio)
    assert clip.suffix.lower() in VIDEO_SUFFIXES  # what the CLI asks before it reads a file as a video
    info = stylize_video(clip, tmp_path / "out.mp4", lambda x: 1 - x)
    assert info["frames"] == 10 and info["audio"] == audio_note
    src, out = shown(clip), shown(tmp_path / "out.mp4")
    assert len(out) == 10 and abs((255 - src[3]) - out[3]).mean() < 12


def test_every_input_container_is_one_ffmpeg_reads_and_outputs_stay_h264_containers():
    for suffix in (".mts", ".m2ts", ".ts", ".mpg", ".mpeg", ".3gp", ".wmv", ".flv", ".ogv", ".avi", ".webm", ".m4v"):
        assert suffix in VIDEO_SUFFIXES, suffix
    assert OUTPUT_SUFFIXES == {".mp4", ".mov", ".mkv", ".m4v"} and OUTPUT_SUFFIXES <= VIDEO_SUFFIXES


def test_opus_and_flac_audio_are_re_encoded_for_a_mov(tmp_path):
    """FFmpeg's mov muxer refuses Opus and FLAC (MP4 and Matroska take them as they are)."""
    for audio in ("libopus", "flac"):
        clip = write_clip(tmp_path / f"{audio}.mkv", audio=audio)
        info = stylize_video(clip, tmp_path / f"{audio}.mov", lambda x: x)
        assert info["audio"] == f"{audio.removeprefix('lib')} re-encoded to aac"
        assert stylize_video(clip, tmp_path / f"{audio}.mp4", lambda x: x)["audio"].endswith("(copied)")


def test_mp3_audio_is_copied_into_an_mp4_as_it_is(tmp_path):
    """FFmpeg decodes MP3 with 'mp3float': that decoder's name was checked against the codecs an .mp4 holds, so every
    MP3 soundtrack was re-encoded to AAC (a generation lost) and the note said 'mp3float'."""
    av = pytest.importorskip("av")
    if "libmp3lame" not in av.codecs_available:
        pytest.skip("this FFmpeg has no MP3 encoder to make the input")
    clip = write_clip(tmp_path / "in.mkv", audio="libmp3lame")
    info = stylize_video(clip, tmp_path / "out.mp4", lambda x: x)
    assert info["audio"] == "mp3 (copied)", info
    with av.open(str(tmp_path / "out.mp4")) as out:
        assert out.streams.audio[0].codec_context.codec.canonical_name == "mp3"


def test_a_muxer_refusal_names_the_file_the_stream_and_a_fix(tmp_path, monkeypatch):
    from stylemamba import video

    clip = write_clip(tmp_path / "in.mkv", audio="libopus")
    monkeypatch.setattr(video, "_copies_audio", lambda codec, dst: True, raising=False)  # Opus into .mov: refused
    with pytest.raises(ValueError, match=r"could not write the audio of in.mkv into out.mov .* \.mkv --output"):
        stylize_video(clip, tmp_path / "out.mov", lambda x: x)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mkv"]


# ------------------------------------------------------------------------------------------ outputs that cannot be
def test_an_output_that_cannot_be_written_is_refused_before_any_frame(tmp_path):
    clip = write_clip(tmp_path / "in.mp4")
    (tmp_path / "notes").write_text("the user's notes")
    (tmp_path / "folder").mkdir()
    calls = []

    def model(x):
        calls.append(x.shape[0])
        return x

    with pytest.raises(ValueError, match="notes is a file, not a folder"):
        stylize_video(clip, tmp_path / "notes" / "out.mp4", model)
    with pytest.raises(ValueError, match="is a folder; give a video file name"):
        stylize_video(clip, tmp_path / "folder", model)
    before = clip.read_bytes()
    with pytest.raises(ValueError, match="is the input video: StyleMamba never overwrites its inputs"):
        stylize_video(clip, tmp_path / "." / "in.mp4", model)
    assert calls == [] and clip.read_bytes() == before and (tmp_path / "notes").read_text() == "the user's notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "in.mp4", "notes"]


def test_a_file_in_the_way_of_the_temporary_output_is_kept(tmp_path):
    clip = write_clip(tmp_path / "in.mp4")
    (tmp_path / ".out.mp4.partial.mp4").write_bytes(b"the user's file")
    stylize_video(clip, tmp_path / "out.mp4", lambda x: x)
    assert (tmp_path / ".out.mp4.partial.mp4").read_bytes() == b"the user's file"
    assert len(frame_times(tmp_path / "out.mp4")) == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.mp4.partial.mp4", "in.mp4", "out.mp4"]


def test_a_failed_cleanup_never_hides_the_error_that_stopped_the_video(tmp_path, caplog):
    clip = write_clip(tmp_path / "in.mp4")

    def broken(x):
        partial = tmp_path / ".out.mp4.partial.mp4"  # something else takes the unfinished file's place
        partial.unlink(missing_ok=True)
        (partial / "kept").mkdir(parents=True)
        raise RuntimeError("out of luck")

    with caplog.at_level(logging.WARNING, logger="stylemamba"), pytest.raises(RuntimeError, match="out of luck"):
        stylize_video(clip, tmp_path / "out.mp4", broken)
    assert "could not delete the unfinished output" in caplog.text and "delete it by hand" in caplog.text
