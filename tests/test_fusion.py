"""Style Fusion Module: identity at init, 2D scan orders, style conditioning, config round-trip."""
import json

import pytest
import torch

from stylemamba.experiments.metrics import count_parameters
from stylemamba.fusion import SCANS, FusionConfig, ScanMambaMixer, build_fusion, scan_permutations
from stylemamba.ssm import MambaMixer


def tiny(**kw):
    base = dict(text_dim=8, width=16, depth=2, d_state=4, heads=4, n_style_tokens=3)
    base.update(kw)
    return FusionConfig(**base)


CONFIGS = [tiny(kind="mamba", scan=s) for s in SCANS] + [
    tiny(kind="mamba", mlp_ratio=2.0), tiny(kind="cross_attention"), tiny(kind="cross_attention", mlp_ratio=1.5)]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.kind}-{c.scan}-mlp{c.mlp_ratio}")
@pytest.mark.parametrize("shape", [(2, 4, 8, 8), (1, 4, 7, 13), (3, 4, 1, 5)])
def test_identity_at_init(cfg, shape):
    torch.manual_seed(0)
    f = build_fusion(cfg)
    z = torch.randn(*shape)
    style = torch.randn(shape[0], cfg.text_dim)
    out = f(z, style)
    assert out.shape == z.shape
    assert torch.equal(out, z)


def test_identity_at_init_under_bf16_autocast():
    f = build_fusion(tiny())
    z = torch.randn(2, 4, 6, 9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = f(z, torch.randn(2, 8))
    assert out.dtype == z.dtype and torch.equal(out, z)


@pytest.mark.parametrize("scan,count", [("forward", 1), ("bidirectional", 2), ("cross", 4)])
@pytest.mark.parametrize("hw", [(1, 1), (3, 5), (7, 13), (4, 4)])
def test_scan_orders_are_permutations(scan, count, hw):
    h, w = hw
    perms = scan_permutations(h, w, scan)
    assert len(perms) == count
    tokens = torch.randn(2, h * w, 3)
    for p in perms:
        assert torch.equal(torch.sort(p).values, torch.arange(h * w))
        inv = torch.argsort(p)
        assert torch.equal(tokens[:, p][:, inv], tokens)
    assert torch.equal(perms[0], torch.arange(h * w))  # raster first (the mixer relies on it)
    if count > 1:
        assert torch.equal(perms[1], perms[0].flip(0))


def test_cross_scan_column_order():
    perms = scan_permutations(2, 3, "cross")
    # grid [[0,1,2],[3,4,5]]: rows, rows reversed, columns, columns reversed
    assert [p.tolist() for p in perms] == [[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0],
                                          [0, 3, 1, 4, 2, 5], [5, 2, 4, 1, 3, 0]]
    with pytest.raises(ValueError):
        scan_permutations(2, 3, "zigzag")


@pytest.mark.parametrize("scan", SCANS)
def test_scan_mixer_context(scan):
    """forward scan: token 0 sees nothing after it; bidirectional/cross: every token sees the whole grid."""
    torch.manual_seed(0)
    mixer = ScanMambaMixer(8, d_state=4, expand=2, scan=scan, backend="chunked")
    x = torch.randn(1, 4 * 5, 8)
    x2 = x.clone()
    x2[:, -1] += 1.0  # change the last raster token only
    y, y2 = mixer(x, None, (4, 5)), mixer(x2, None, (4, 5))
    first_changed = not torch.allclose(y[:, 0], y2[:, 0], atol=1e-6)
    assert first_changed == (scan != "forward")


def test_directions_are_batched_and_share_the_mixer():
    mixer = ScanMambaMixer(8, d_state=4, expand=2, scan="cross", backend="chunked")
    assert sum(isinstance(m, MambaMixer) for m in mixer.modules()) == 1
    seen = []
    handle = mixer.mamba.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    mixer(torch.randn(3, 6, 8), None, (2, 3))
    handle.remove()
    assert seen == [torch.Size([12, 6, 8])]  # one call, 4 directions x batch 3


def _mods(f):
    return [blk.modulation[1] for blk in f.blocks]


@pytest.mark.parametrize("cfg", [tiny(kind="mamba"), tiny(kind="mamba", scan="cross", mlp_ratio=2.0),
                                 tiny(kind="cross_attention")], ids=lambda c: f"{c.kind}-{c.scan}")
def test_one_step_learns_a_style_dependent_change(cfg):
    torch.manual_seed(0)
    f = build_fusion(cfg)
    z = torch.randn(2, 4, 5, 6)
    s1, s2 = torch.randn(1, 8).expand(2, 8), torch.randn(1, 8).expand(2, 8)
    target = torch.randn_like(z)
    opt = torch.optim.Adam(f.parameters(), lr=1e-2)

    loss = torch.nn.functional.mse_loss(f(z, s1), target)
    loss.backward()
    # adaLN-Zero: only the gates get a gradient at init (the mixer outputs are multiplied by 0)
    W = cfg.width
    for lin in _mods(f):
        assert lin.weight.grad[2 * W:3 * W].abs().sum() > 0
    opt.step()
    opt.zero_grad()

    with torch.no_grad():
        o1, o2 = f(z, s1), f(z, s2)
    assert not torch.allclose(o1, z, atol=1e-4)  # the module changed
    assert (o1 - o2).abs().max() > 1e-4  # and its output depends on the style embedding
    assert torch.nn.functional.mse_loss(o1, target) < loss  # in the right direction

    torch.nn.functional.mse_loss(f(z, s1), target).backward()
    # after a step, every modulation (scale, shift, gate; and the MLP's) and the mixers get gradients
    for lin in _mods(f):
        per_chunk = lin.weight.grad.view(-1, W, lin.weight.shape[1]).abs().sum(dim=(1, 2))
        assert (per_chunk > 0).all(), per_chunk
        assert lin.bias.grad.abs().sum() > 0
    for blk in f.blocks:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in blk.mixer.parameters())


def test_style_broadcast_and_checks():
    f = build_fusion(tiny())
    z = torch.randn(3, 4, 4, 4)
    assert f(z, torch.randn(8)).shape == z.shape
    assert f(z, torch.randn(1, 8)).shape == z.shape
    with pytest.raises(ValueError):
        f(z, torch.randn(3, 9))
    with pytest.raises(ValueError):
        f(torch.randn(3, 5, 4, 4), torch.randn(3, 8))


def test_config_round_trip_and_validation():
    cfg = FusionConfig(kind="cross_attention", width=64, depth=3, scan="cross", mlp_ratio=4.0, heads=4,
                       n_style_tokens=5, text_dim=512, backend="chunked")
    d = json.loads(json.dumps(cfg.to_dict()))
    assert FusionConfig.from_dict(d) == cfg
    assert FusionConfig.from_dict({}) == FusionConfig()
    with pytest.raises(ValueError, match="unknown FusionConfig option"):
        FusionConfig.from_dict(dict(d, colour="red"))
    for bad in (dict(kind="transformer"), dict(scan="zigzag"), dict(backend="cuda_graph"), dict(width=0),
                dict(kind="cross_attention", width=30, heads=8)):
        with pytest.raises(ValueError):
            FusionConfig(**bad)
    f = build_fusion(cfg)
    assert f.config == cfg
    assert build_fusion(cfg.to_dict()).config == cfg


def test_count_parameters_and_backend_switch():
    f = build_fusion(tiny(depth=3))
    n = count_parameters(f)
    assert n == sum(p.numel() for p in f.parameters()) and n > 0
    f.blocks[0].requires_grad_(False)
    assert count_parameters(f, trainable_only=True) < n
    # the defaults: width 256, depth 4, SigLIP-base text dim 768
    assert count_parameters(build_fusion(FusionConfig())) > count_parameters(build_fusion(FusionConfig(depth=2)))
    f.set_backend("sequential")
    assert all(m.backend == "sequential" for m in f.modules() if isinstance(m, MambaMixer))
    with pytest.raises(ValueError):
        f.set_backend("nope")


def test_state_dict_round_trip_rebuilds_the_same_function():
    torch.manual_seed(0)
    cfg = tiny(scan="cross")
    f = build_fusion(cfg)
    with torch.no_grad():
        for p in f.parameters():
            p.add_(0.05 * torch.randn_like(p))
    g = build_fusion(FusionConfig.from_dict(f.config.to_dict()))
    g.load_state_dict(f.state_dict())
    z, s = torch.randn(1, 4, 3, 7), torch.randn(1, 8)
    assert torch.equal(f(z, s), g(z, s))
    assert not torch.equal(f(z, s), z)
