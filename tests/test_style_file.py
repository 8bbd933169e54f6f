"""Style files: round trip, metadata, and every bad file gives a clear error."""
import dataclasses
import json
from pathlib import Path

import pytest
from conftest import load_photo
import torch
from safetensors.torch import save_file

from small import small_config
from stylemamba.encoders import load_text_image_encoder
from stylemamba.style_file import (StyleFileError, describe_style, load_style, read_style_metadata,
                                   safe_style_filename, save_style)
from stylemamba.stylize import stylize
from stylemamba.train import train_style
from stylemamba.vae import load_vae, weights_id


@pytest.fixture(scope="module")
def trained(tiny_models):
    photo = load_photo()
    vae = load_vae(tiny_models["vae"])
    text = load_text_image_encoder(tiny_models["siglip"])
    return vae, train_style(vae, text, photo, "Van Gogh's starry night", small_config(epochs=3)).style


def test_save_load_gives_identical_outputs(tmp_path, trained, photo):
    vae, style = trained
    info = save_style(style, tmp_path / "starry", delta_dtype=torch.float32)
    assert info["path"].endswith("starry.safetensors") and info["bytes"] > 0
    import os
    import stat
    assert stat.S_IMODE(os.stat(info["path"]).st_mode) & 0o044, "style files are meant to be shared (readable)"
    loaded = load_style(info["path"])
    assert torch.equal(stylize(photo, vae, loaded), stylize(photo, vae, style))


def test_saving_a_style_keeps_a_file_that_has_its_temporary_name_and_leaves_nothing_when_it_fails(
        tmp_path, trained, monkeypatch):
    """A style is written under a temporary name, then renamed: a file that already has that name (the user's,
    or another run's saving the same style) is not taken, and a failed write leaves neither file behind."""
    import safetensors.torch

    _, style = trained
    (tmp_path / "starry.safetensors.partial").write_bytes(b"the user's file")
    (tmp_path / ".starry.safetensors.partial").write_bytes(b"another run's")
    save_style(style, tmp_path / "starry")
    assert (tmp_path / "starry.safetensors.partial").read_bytes() == b"the user's file"
    assert (tmp_path / ".starry.safetensors.partial").read_bytes() == b"another run's"
    assert load_style(tmp_path / "starry.safetensors").digest() == style.digest()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_style(style, tmp_path / "other")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".starry.safetensors.partial", "starry.safetensors",
                                                         "starry.safetensors.partial"]


def test_weights_damaged_after_saving_are_said_when_loaded(tmp_path, trained, caplog):
    """safetensors checks no data: a byte changed in a copy or download loaded silently. The checksum saved with
    the file is compared on load and a difference is said (not refused: a style merged by a script is the user's)."""
    _, style = trained
    path = Path(save_style(style, tmp_path / "starry")["path"])
    with caplog.at_level("WARNING", logger="stylemamba"):
        load_style(path)
    assert "checksum" not in caplog.text
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40  # a bit of the last tensor's data
    path.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="stylemamba"):
        load_style(path)
    assert "starry.safetensors: its weights are not the ones it was saved with (checksum differs)" in caplog.text


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_a_style_with_nan_or_infinite_weights_is_refused_not_stylised_black(tmp_path, trained, bad):
    """One inf in an fp16 decoder delta made every output pixel NaN (black once saved), with only the checksum's
    warning in the console."""
    from safetensors import safe_open

    _, style = trained
    path = Path(save_style(style, tmp_path / "starry")["path"])
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    name = next(k for k in tensors if k.startswith("decoder_delta."))
    tensors[name].view(-1)[0] = bad
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(StyleFileError, match=r"starry.safetensors: NaN or infinite values in 1 of its style "
                                             r"tensors \(e\.g\. decoder_delta\..*\(get it again\)"):
        load_style(path)


def test_fp16_delta_is_close_and_smaller(tmp_path, trained, photo):
    vae, style = trained
    full = save_style(style, tmp_path / "a", delta_dtype=torch.float32)
    half = save_style(style, tmp_path / "b")
    assert half["bytes"] < full["bytes"]
    ref = stylize(photo, vae, style)
    err = (stylize(photo, vae, load_style(half["path"])) - ref).abs().max()
    assert err < 2e-3, err


def test_metadata_says_what_the_style_is(tmp_path, trained):
    vae, style = trained
    path = save_style(style, tmp_path / "s.safetensors")["path"]
    meta = read_style_metadata(path)
    assert meta["prompts"] == ["Van Gogh's starry night"]
    assert meta["source_prompt"] == "a plain photo"
    assert meta["fusion"]["kind"] == "mamba" and meta["recipe"]["epochs"] == 3
    assert meta["base_vae"]["arch"] == vae.identity["arch"]
    assert meta["library_version"] and meta["created_at"] and meta["format_version"] == 1
    info = describe_style(path)
    assert info["bytes"] > 0 and info["parameters"]["decoder_delta"] > 0 and info["parameters"]["fusion"] > 0
    json.dumps(info, default=str)


def test_foreign_truncated_and_other_vae_files_are_refused(tmp_path, trained, tiny_models, photo):
    vae, style = trained
    good = save_style(style, tmp_path / "good")["path"]
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(open(good, "rb").read()[:5000])
    with pytest.raises(StyleFileError, match="truncated or corrupt"):
        load_style(cut)
    with pytest.raises(StyleFileError, match="not a StyleMamba style file.*a VAE"):
        load_style(tiny_models["vae_ldm"])
    lora = tmp_path / "lora.safetensors"
    save_file({"unet.lora_down.weight": torch.zeros(2)}, str(lora))
    with pytest.raises(StyleFileError, match="looks like a LoRA"):
        load_style(lora)
    odd = tmp_path / "odd.safetensors"
    save_file({"embedding": torch.zeros(2)}, str(odd), metadata={"stylemamba": json.dumps({"format": "x"})})
    with pytest.raises(StyleFileError, match="not a StyleMamba style"):
        load_style(odd)
    save_file({"embedding": torch.zeros(2)}, str(odd),
              metadata={"stylemamba": json.dumps({"format": "stylemamba.style", "format_version": "one"})})
    with pytest.raises(StyleFileError, match="damaged"):
        load_style(odd)
    save_file({"embedding": torch.zeros(2)}, str(odd), metadata={"stylemamba": json.dumps([1, 2])})
    with pytest.raises(StyleFileError, match=r"metadata is damaged \(a JSON list, not an object\)"):
        load_style(odd)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_style(tmp_path / "missing.safetensors")
    other = load_vae(tiny_models["vae"])
    with torch.no_grad():
        for p in other.decoder.parameters():
            p.add_(0.5)
    other.name = "other-vae.safetensors"
    with pytest.raises(StyleFileError) as info:
        stylize(photo, other, load_style(good))
    message = str(info.value)
    # the message names both VAEs by file name and by a weight id that differs (the architecture hash does not)
    trained_id, connected_id = weights_id(vae.identity), weights_id(other.identity)
    assert trained_id != connected_id and vae.identity["arch"] == other.identity["arch"]
    assert f"'{vae.name}' (weights {trained_id})" in message
    assert f"'other-vae.safetensors' (weights {connected_id})" in message
    assert "Use the VAE the style was trained with" in message
    # a universal model's style of a prompt: the error names the model, which is what was trained on a VAE
    from_universal = dataclasses.replace(load_style(good), metadata={**load_style(good).metadata,
                                                                    "universal_model": "zero-shot", "steps": 0})
    with pytest.raises(StyleFileError, match="universal model 'zero-shot' was trained on the VAE .*Use the VAE "
                                             "the universal model was trained with"):
        stylize(photo, other, from_universal)


def test_pickled_files_are_refused_as_pickles(tmp_path):
    pickled = tmp_path / "style.ckpt"
    torch.save({"embedding": torch.zeros(2)}, pickled)
    renamed = tmp_path / "renamed.safetensors"  # a torch.save file given a safetensors name
    renamed.write_bytes(pickled.read_bytes())
    for path in (pickled, renamed):
        with pytest.raises(StyleFileError, match="pickled files are not loaded"):
            load_style(path)


def test_file_names_are_sanitised():
    assert safe_style_filename("../../etc/passwd") == "etc_passwd.safetensors"  # no escape, nothing typed dropped
    assert safe_style_filename("C:\\x\\my style.safetensors") == "C_x_my style.safetensors"
    assert safe_style_filename("monet/v1") == "monet_v1.safetensors"  # before: v1 (the tooltip promised '_')
    assert safe_style_filename("<|>") == "_.safetensors"
    assert safe_style_filename("") == "style.safetensors"
    assert "/" not in safe_style_filename("a/b/c")
    # letters of every script are kept; only unsafe characters are replaced
    assert safe_style_filename("évil ünïcode 名前") == "évil ünïcode 名前.safetensors"
    assert safe_style_filename('a<b>c:d"e|f?g*h') == "a_b_c_d_e_f_g_h.safetensors"
    assert safe_style_filename("tab\there\x00") == "tab_here_.safetensors"
    assert safe_style_filename("CON") == "_CON.safetensors"  # reserved on Windows


def test_a_long_non_latin_style_name_fits_a_file_name_with_the_save_nodes_counter(tmp_path):
    """'東京の夜景 ...' cut at 120 characters was 323 bytes: Save Style failed with 'File name too long' (Errno 36)."""
    name = safe_style_filename("東京の夜景 油絵風のスタイル 印象派の筆" * 10)
    stem = name[: -len(".safetensors")]
    assert len(f"{stem}_00001.safetensors".encode()) <= 255 and stem.startswith("東京の夜景 油絵風のスタイル")
    (tmp_path / f"{stem}_00001.safetensors").write_bytes(b"")  # the file system takes it
    assert safe_style_filename("é" * 150) == "é" * 90 + ".safetensors"  # cut at a character, never inside one
