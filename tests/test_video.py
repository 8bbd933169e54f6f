"""Video files: streamed batch by batch (never the whole clip in memory), H.264 out, the audio kept."""
import pytest
import torch

av = pytest.importorskip("av")

from stylemamba.video import stylize_video  # noqa: E402
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
