"""What version 0.1.0 released must keep working: its style files (same pixels) and its CLI flags.

``tests/data/v0_1_0`` was written by 0.1.0 itself (tools/make_v010_fixture.py at commit c9d4e33): a style
trained on the tiny VAE with two weighted prompts, that VAE, and the pixels 0.1.0 produced with it. Node ids
and input names are pinned in test_nodes.py (CONTRACT).
"""
import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stylemamba.cli import build_parser
from stylemamba.style_file import describe_style, load_style
from stylemamba.stylize import stylize_images
from stylemamba.vae import load_vae

DATA = Path(__file__).resolve().parent / "data" / "v0_1_0"


@pytest.fixture(scope="module")
def released():
    vae = load_vae(DATA / "vae_ldm.safetensors", device="cpu")
    return vae, load_style(DATA / "style_v0_1_0.safetensors"), load_file(str(DATA / "expected_pixels.safetensors"))


def test_a_0_1_0_style_file_loads_with_its_metadata(released):
    _, style, _ = released
    info = describe_style(DATA / "style_v0_1_0.safetensors")
    assert info["prompts"] == ["Van Gogh's starry night", "a pencil sketch"]
    assert style.metadata["prompt_weights"] == [0.7, 0.3] and style.embedding.dim() == 1


@pytest.mark.parametrize("case, kwargs", [("strength_1", {}), ("strength_0_6", {"strength": 0.6}),
                                          ("masked", {"mask": "mask"})])
def test_a_0_1_0_style_gives_the_pixels_0_1_0_gave(released, case, kwargs):
    vae, style, expected = released
    kwargs = {k: expected[v] if v == "mask" else v for k, v in kwargs.items()}
    out = stylize_images(expected["input"], vae, style, **kwargs)
    # the same CPU arithmetic: only float reassociation may differ
    assert (out - expected[case]).abs().max().item() < 1e-5
    # and the style is not a no-op, so the comparison above can fail
    assert (expected[case] - expected["input"]).abs().mean().item() > 0.01


def test_every_0_1_0_cli_flag_is_still_accepted():
    released_flags = json.loads((DATA / "cli_flags.json").read_text())
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command, flags in released_flags.items():
        assert command in sub.choices, f"CLI command '{command}' of 0.1.0 is gone"
        now = {o for a in sub.choices[command]._actions for o in a.option_strings}
        missing = sorted(set(flags) - now)
        assert not missing, f"'{command}' lost the 0.1.0 flags {missing}"
