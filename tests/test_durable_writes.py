"""Every file the package writes whole reaches the disk before its rename: a power cut or a killed VM after a save
must not leave an empty or truncated style, checkpoint or report under the final name.

A power cut cannot be simulated here, so the tests record what os.fsync flushed (each descriptor's file by inode,
with its size at that moment) and check that every saved file, at its final size, and (on POSIX) the folder that
holds it were flushed.
"""
from __future__ import annotations

import os
import stat

import pytest
import torch

from stylemamba.checkpoint import save_checkpoint
from stylemamba.image_io import save_image, write_text_whole
from stylemamba.style_file import Style, UniversalModel, load_style, save_style, save_universal


@pytest.fixture
def flushed(monkeypatch):
    """The (device, inode) -> size at the flush, of every file and folder os.fsync was called on."""
    seen: dict[tuple[int, int], int | None] = {}
    real = os.fsync

    def record(fd):
        st = os.fstat(fd)
        seen[(st.st_dev, st.st_ino)] = None if stat.S_ISDIR(st.st_mode) else st.st_size
        return real(fd)

    monkeypatch.setattr(os, "fsync", record)
    return seen


def assert_durable(flushed, path):
    st = os.stat(path)
    if not path.is_dir():
        assert flushed.get((st.st_dev, st.st_ino), -1) == st.st_size, f"{path.name} was renamed before it was flushed"
    if os.name != "nt":  # a folder cannot be flushed on Windows (NTFS journals the rename)
        assert not path.is_dir() or (st.st_dev, st.st_ino) in flushed, f"{path.name}'s entries were never flushed"
        folder = os.stat(path.parent)
        assert (folder.st_dev, folder.st_ino) in flushed, f"the rename into {path.parent} was never flushed"


def _style():
    return Style({"width": 8}, {"w": torch.ones(3)}, {"d": torch.zeros(4)}, torch.ones(5), {"name": "durable"})


def test_a_saved_style_and_universal_model_are_on_the_disk_before_their_names(tmp_path, flushed):
    info = save_style(_style(), tmp_path / "red.safetensors")
    style = _style()
    universal = UniversalModel(style.fusion_config, style.fusion_state, style.decoder_delta, torch.ones(5),
                               torch.zeros(5), {"name": "u"})
    info_u = save_universal(universal, tmp_path / "any.safetensors")
    for saved in (info["path"], info_u["path"]):
        assert_durable(flushed, tmp_path / os.path.basename(saved))
    assert torch.equal(load_style(info["path"]).embedding, torch.ones(5))


def test_a_checkpoint_folder_and_each_of_its_files_are_on_the_disk_before_its_name(tmp_path, flushed):
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters())
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    path = save_checkpoint(tmp_path, 7, net.state_dict(), opt, ["weight", "bias"], {"note": "x"})
    for f in sorted(path.iterdir()):
        assert_durable(flushed, f)
    assert_durable(flushed, path)


def test_reports_and_images_are_on_the_disk_before_their_names(tmp_path, flushed):
    assert_durable(flushed, write_text_whole(tmp_path / "report.json", '{"ok": true}'))
    assert_durable(flushed, save_image(torch.zeros(3, 8, 8), tmp_path / "out.png"))


def test_a_stylised_video_is_on_the_disk_before_its_name(tmp_path, flushed):
    pytest.importorskip("av")
    from video_clip import make_clip

    from stylemamba.video import stylize_video

    clip = make_clip(tmp_path / "in.mp4", frames=4, audio=None)
    flushed.clear()
    info = stylize_video(clip, tmp_path / "out.mp4", lambda x: 1 - x, batch_size=4)
    assert_durable(flushed, tmp_path / os.path.basename(info["path"]))


@pytest.mark.parametrize("code", ["EINVAL", "EIO"])
def test_a_filesystem_that_cannot_flush_still_saves_but_a_failed_flush_is_an_error(tmp_path, monkeypatch, code):
    """Some network and FUSE mounts refuse fsync (EINVAL): a style saved there before the flush was added must still
    save; EIO means the bytes did not reach the disk, and the old file is kept."""
    import errno

    def refuse(fd):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    target = tmp_path / "report.json"
    target.write_text("old")
    monkeypatch.setattr(os, "fsync", refuse)
    if code == "EINVAL":
        write_text_whole(target, "new")
        assert target.read_text() == "new"
    else:
        with pytest.raises(OSError):
            write_text_whole(target, "new")
        assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary file left beside it


def test_a_folder_that_refuses_chmod_still_gets_the_file(tmp_path, monkeypatch):
    """write_whole gave every file the umask's mode with os.chmod: on a FAT stick or a network mount that refuses
    chmod (EPERM), every stylised PNG, report and style failed with 'Operation not permitted' after it was written."""
    import errno

    def refused(path, mode, *args, **kwargs):
        raise PermissionError(errno.EPERM, "Operation not permitted", str(path))

    monkeypatch.setattr(os, "chmod", refused)
    save_image(torch.rand(3, 8, 8), tmp_path / "out.png")
    write_text_whole(tmp_path / "report.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png", "report.json"]
    assert (tmp_path / "report.json").read_text() == "{}"


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the umask from Linux's /proc")
def test_writing_a_file_never_changes_the_process_umask(tmp_path, monkeypatch):
    """write_whole read the umask by setting it to 0 and back: for that moment the files and folders other threads
    created (a ComfyUI server's, while a node saved a style) were world-writable."""
    set_to = []
    real = os.umask
    monkeypatch.setattr(os, "umask", lambda mask: set_to.append(mask) or real(mask))
    write_text_whole(tmp_path / "report.json", "{}")
    assert set_to == []
    mask = real(0o022)
    real(mask)
    assert stat.S_IMODE((tmp_path / "report.json").stat().st_mode) == 0o666 & ~mask
