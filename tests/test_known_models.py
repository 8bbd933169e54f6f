"""The known-meaning image-text models: their embeddings are the written-down functions of the picture."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stylemamba.testing import UnknownPrompt, chroma, colour_model, combined_model, known_model, texture_model
from stylemamba.testing.known_models import high_frequency_share


def _axis(model, emb, name):
    return emb[..., model.axes.index(name)]


def test_text_embeddings_are_the_known_unit_vectors():
    m = combined_model()
    e = m.encode_text(["red", "a plain photo", "a pencil sketch", "  Red. "])
    assert e.shape == (4, m.embed_dim) and torch.allclose(e.norm(dim=-1), torch.ones(4))
    assert torch.equal(e[0], e[3])  # case, spaces and a final full stop do not matter
    d = m.direction("red")
    assert d[m.axes.index("red")] > 0 > d[m.axes.index("blue")] and d[m.axes.index("texture")] == 0
    # opposite words point in opposite directions (apart from the shared photo component)
    assert torch.allclose(m.direction("cyan")[1:], -m.direction("red")[1:])
    assert torch.allclose(m.direction("cool")[1:], -m.direction("warm")[1:])
    sketch, smooth = m.direction("a pencil sketch"), m.direction("a smooth painting")
    assert sketch[m.axes.index("texture")] > 0 > smooth[m.axes.index("texture")]


def test_unknown_prompts_and_empty_prompts_are_refused_with_the_vocabulary():
    with pytest.raises(UnknownPrompt, match="'oil painting'.*a plain photo"):
        colour_model().encode_text(["oil painting"])
    with pytest.raises(UnknownPrompt):
        texture_model().encode_text(["red"])  # a texture model has no colour words
    with pytest.raises(ValueError, match="empty"):
        colour_model().encode_text([" "])
    with pytest.raises(ValueError, match="family"):
        known_model("shape")


def test_image_embedding_follows_colour_not_brightness(photo):
    m = colour_model()
    red = photo.clone()
    red[:, 0] = (red[:, 0] + 0.2).clamp(0, 1)
    base, moved = m.features(photo), m.features(red)
    assert float(_axis(m, moved - base, "red")) > 0.1
    # brightness and a grey offset leave the colour axes alone (only the nuisance axis 'bright' moves)
    grey = torch.full_like(photo, 0.5)
    assert torch.allclose(chroma(grey), torch.zeros(1, 3), atol=1e-6)
    darker = m.features(photo * 0.0 + photo.mean(1, keepdim=True) * 0.5)  # a dark grey version: no chroma
    assert abs(float(_axis(m, darker, "red"))) < 1e-6 and float(_axis(m, darker, "bright")) < float(_axis(m, base, "bright"))


def test_image_embedding_follows_texture(photo):
    m = texture_model()
    blurred = torch.nn.functional.avg_pool2d(photo, 3, stride=1, padding=1, count_include_pad=False)
    noisy = (photo + 0.1 * torch.randn_like(photo)).clamp(0, 1)
    t = [float(_axis(m, m.features(x), "texture")) for x in (blurred, photo, noisy)]
    assert t[0] < t[1] < t[2], t
    # contrast-free: halving the contrast keeps the high-frequency share
    flat = 0.5 + 0.5 * (photo - 0.5)
    assert torch.allclose(high_frequency_share(flat), high_frequency_share(photo), rtol=0.05)


def test_image_embedding_is_differentiable_normalised_and_follows_to(photo):
    m = combined_model()
    x = photo.clone().requires_grad_(True)
    e = m.encode_image(x)
    assert e.shape == (1, 7) and torch.allclose(e.norm(dim=-1), torch.ones(1))
    (e @ m.direction("a red pencil sketch")).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    m64 = m.to(torch.float64)
    assert m64.device.type == "cpu" and m64.encode_text(["red"]).device.type == "cpu"


def test_the_core_library_never_imports_the_testing_package():
    root = Path(__file__).resolve().parents[1] / "stylemamba"
    offenders = [p.name for p in root.glob("*.py") if p.name != "cli.py" and "testing" in
                 "".join(line for line in p.read_text().splitlines(True) if "import" in line)]
    assert offenders == []
    code = ("import sys, stylemamba.train, stylemamba.stylize, stylemamba.cli; "
            "print(any(k.startswith('stylemamba.testing') for k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=root.parent).stdout.strip()
    assert out == "False"
