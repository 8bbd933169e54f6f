"""Memory plans: the plan function and its calibration, the option, and that a saving plan trains like the fast one."""
import logging

import numpy as np
import pytest
import torch

from small import small_config
from stylemamba import memory_plan as mp
from stylemamba.encoders import load_text_image_encoder
from stylemamba.memory_plan import GB, MemoryPlan, Recipe, choose_plan, estimate_bytes, parse_plan
from stylemamba.perceptual import LPIPSLoss, VGGFeatures
from stylemamba.train import StyleTrainer, TrainConfig, train_style
from stylemamba.vae import load_vae

SAVING = "micro_batch=1,view_chunk=4,checkpointing=on"
SAVING_TOWER = "micro_batch=1,checkpointing=on,tower_checkpointing=on"  # the tower's layers recomputed instead
KEY_BIASES = ("to_k.bias", "k.bias", "key.bias")  # decoder attention key biases, in the style's (LDM) layout


@pytest.fixture(scope="module")
def parts(tiny_models):
    vae = load_vae(tiny_models["vae"])
    text = load_text_image_encoder(tiny_models["siglip"])
    vgg = VGGFeatures.from_safetensors(tiny_models["vgg19"])
    torch.manual_seed(0)
    lp = LPIPSLoss(net="vgg")
    return vae, text, vgg, lp


@pytest.fixture(scope="module")
def three_photos(photo_batch):
    return torch.cat([photo_batch, photo_batch[:1].flip(-1)])


def recipe_config(plan: str, epochs: int = 3, **loss) -> TrainConfig:
    # every loss on, the second-order gate open on epoch 2 (so the whole-batch gate pass runs)
    return small_config(epochs=epochs, memory_plan=plan, loss=dict(so_interval=2, so_theta=2.0, lpips=10.0, **loss))


# the VGG term as small_config has it (raw mean) and in the relative units (per image: micro-batches must agree)
@pytest.mark.parametrize("saving, vgg", [
    (SAVING, {}), (SAVING, dict(vgg_reduction="relative", vgg_weight_start=1e4, vgg_weight_end=200.0)),
    (SAVING_TOWER, {})], ids=["chunks-vgg-mean", "chunks-vgg-relative", "tower-layers"])
def test_saving_plan_takes_the_whole_batch_gradient(parts, three_photos, saving, vgg):
    """Micro-batches of 1 + decoder checkpointing + tower chunks of 4 views (or the tower's layers recomputed):
    the accumulated gradient of every step, from the same parameters, equals the full batch's (fp32: relative
    difference of the gradient's global norm < 1e-4; measured up to 6e-6 with AVX-512 and AVX2 kernels; terms and
    Y within 1e-4). With tower_checkpointing each tower layer runs twice per
    tower call (forward, and again in backward) and is restored after the step."""
    vae, text, vgg_net, lp = parts
    trainers = [StyleTrainer(vae, text, three_photos, "pop art", recipe_config(p, **vgg), vgg=vgg_net, lpips=lp)
                for p in ("fast", saving)]
    plan = trainers[1].plan
    expect = (1, 4, True, False) if saving == SAVING else (1, 0, True, True)
    assert (plan.micro_batch, plan.view_chunk, plan.checkpointing, plan.tower_checkpointing) == expect
    layer = text.image_layers()[0]
    calls = []  # the layer's MLP starting: inside the layer's forward, so also when backward recomputes it
    hook = layer.mlp.register_forward_pre_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    for epoch in range(3):
        # the same parameters before each step: Adam turns rounding noise of near-zero gradients into steps of lr,
        # which AVX-512 kernels made a 0.2-0.6 % gradient difference by step 2 (AVX2: 1.5e-5), not the plan's
        trainers[1].model.load_state_dict(trainers[0].model.state_dict())
        steps = [trainers[0].step(epoch)]
        calls.clear()
        steps.append(trainers[1].step(epoch))
        if plan.tower_checkpointing:  # 3 micro-batches: forward + recomputation each (+ the gate's no-grad pass)
            assert calls.count(True) == 6 and "forward" not in layer.__dict__, (epoch, calls)
        grads = [{n: p.grad for n, p in t.model.named_parameters() if p.grad is not None} for t in trainers]
        assert grads[0].keys() == grads[1].keys()
        diff = sum(float((grads[0][n] - grads[1][n]).pow(2).sum()) for n in grads[0]) ** 0.5
        norm = sum(float(g.pow(2).sum()) for g in grads[0].values()) ** 0.5
        assert norm > 0 and diff / norm < 1e-4, (epoch, diff / norm)
        (terms_a, y_a), (terms_b, y_b) = steps
        assert terms_a.keys() == terms_b.keys()
        for k in terms_a:
            torch.testing.assert_close(terms_b[k], terms_a[k], rtol=1e-4, atol=1e-6, msg=f"term {k}, epoch {epoch}")
        torch.testing.assert_close(y_b, y_a, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(trainers[1].last_emb, trainers[0].last_emb, rtol=1e-4, atol=1e-5)
        for t in trainers:
            t.end_epoch()
    hook.remove()
    assert terms_a["so"] > 0  # the second-order term ran (gated open) on epoch 2


def test_saving_plan_trains_the_same_style(parts, three_photos):
    """Whole runs: losses within 1e-4 relative (measured up to 1.5e-5); parameters within 1 % of how far training moved
    them (global norms), attention key biases left out: softmax ignores a shift of all keys, so their gradient is
    zero in theory and rounding noise in practice, which Adam turns into lr-sized steps of either sign (with
    them the two runs' decoders differ by 1.8 % of the distance trained)."""
    vae, text, vgg, lp = parts
    runs = [train_style(vae, text, three_photos, "pop art", recipe_config(p, epochs=5), vgg=vgg, lpips=lp)
            for p in ("fast", "micro_batch=2,view_chunk=5")]
    for ha, hb in zip(runs[0].history, runs[1].history):
        assert ha.keys() == hb.keys()
        for k in ha:
            assert abs(ha[k] - hb[k]) <= 1e-4 * abs(ha[k]) + 1e-7, (k, ha[k], hb[k])
    da, db = (r.style.decoder_delta for r in runs)
    fair = [k for k in da if not k.endswith(KEY_BIASES)]
    assert len(fair) < len(da)
    moved = sum(float(da[k].float().pow(2).sum()) for k in fair) ** 0.5
    apart = sum(float((da[k].float() - db[k].float()).pow(2).sum()) for k in fair) ** 0.5
    assert moved > 0 and apart / moved < 1e-2, apart / moved
    fa, fb = (r.style.fusion_state for r in runs)
    for k in fa:
        torch.testing.assert_close(fb[k], fa[k], rtol=1e-3, atol=1e-4)
    assert runs[1].style.metadata["memory_plan"]["micro_batch"] == 2
    assert runs[0].style.metadata["memory_plan"]["micro_batch"] == 3


def test_default_plan_on_cpu_is_the_fast_one_and_is_logged(parts, photo, caplog):
    vae, text, _, _ = parts
    with caplog.at_level(logging.INFO, logger="stylemamba"):
        trainer = StyleTrainer(vae, text, photo, "pop art", small_config())
    assert trainer.plan.micro_batch == 1 and trainer.plan.view_chunk == 0 and not trainer.plan.checkpointing
    assert "memory plan: micro_batch=1, view_chunk=all, checkpointing=off (training on the CPU: no GPU memory to save)" in caplog.text
    # a host's own free-memory count (the node passes ComfyUI's) drives "auto"
    small = StyleTrainer(vae, text, photo, "pop art", small_config(resolution=512), free_memory=4 * GB)
    assert small.plan.checkpointing and "4.0 GB are free" in small.plan.reason  # 7 views: chunks would not pay


def test_explicit_plans_and_bad_options():
    assert parse_plan("auto") == "auto" and parse_plan(" FAST ") == "fast"
    plan = parse_plan("micro_batch=1, view_chunk=16, checkpointing=on")
    assert (plan.micro_batch, plan.view_chunk, plan.checkpointing, plan.tower_checkpointing) == (1, 16, True, False)
    plan = parse_plan({"checkpointing": True, "tower_checkpointing": "on"})
    assert (plan.micro_batch, plan.view_chunk, plan.checkpointing, plan.tower_checkpointing) == (0, 0, True, True)
    stored = TrainConfig(memory_plan="tower_checkpointing=on").memory_plan
    assert stored["tower_checkpointing"] is True and parse_plan(stored).tower_checkpointing
    cfg = TrainConfig(memory_plan={"micro_batch": 2})
    assert cfg.memory_plan == {"micro_batch": 2, "view_chunk": 0, "checkpointing": False}
    assert TrainConfig.from_dict(cfg.to_dict()).memory_plan == cfg.memory_plan  # recipes round-trip
    for bad, words in [("small", "is not understood"), ("micro_batch=x", "is not understood"),
                       ("chunk=3", "unknown keys"), ("micro_batch=-1", ">= 0"), (7, "is not understood"),
                       ("view_chunk=8,tower_checkpointing=on", "use one of them"),
                       ("tower_checkpointing=maybe", "is not understood")]:
        with pytest.raises(ValueError, match=words) as info:
            TrainConfig(memory_plan=bad)
        assert "TrainConfig.memory_plan" in str(info.value) and ("micro_batch=1,view_chunk=16" in str(info.value)
                                                                 or "use one of them" in str(info.value))


def test_batch_wide_total_variation_refuses_micro_batches(parts, photo_batch):
    vae, text, _, _ = parts
    cfg = small_config(memory_plan="micro_batch=1", loss=dict(tv=1.0))
    with pytest.raises(ValueError, match="tv_form='l1'"):
        StyleTrainer(vae, text, photo_batch, "pop art", cfg)
    auto = StyleTrainer(vae, text, photo_batch, "pop art", small_config(resolution=512, loss=dict(tv=1.0)),
                        free_memory=6 * GB)
    assert auto.plan.micro_batch == 2  # "auto" keeps the whole batch and saves elsewhere


# ------------------------------------------------------------------ the plan function and its calibration
def test_estimate_reproduces_the_h200_figures_it_was_calibrated_on():
    """Explicit plans on an H200 (experiments/plan_sweep.py, bench/results/defaults_h200/): working memory in GB
    (peak allocated minus the frozen networks), default recipe at 512 px, measured before LPIPS kept the content
    features (so the recipe without that term; the term itself: the next test)."""
    measured = [((1, 0, False), 1, 8.41), ((1, 32, False), 1, 5.89), ((1, 8, False), 1, 5.21),
                ((1, 0, True), 1, 5.86), ((1, 32, True), 1, 3.22), ((4, 0, False), 4, 30.91),
                ((2, 0, False), 4, 16.27), ((1, 0, False), 4, 8.78), ((4, 0, True), 4, 20.32),
                ((2, 0, True), 4, 11.0), ((1, 0, True), 4, 6.22), ((1, 32, True), 4, 3.59),
                # the tower's layers recomputed (callD)
                ((1, 0, False, True), 1, 5.80), ((1, 0, True, True), 1, 3.24), ((1, 0, False, True), 4, 6.17),
                ((1, 0, True, True), 4, 3.61)]
    for plan, images, gb in measured:
        estimate = estimate_bytes(MemoryPlan(*plan), Recipe(images, lpips=False)) / GB
        assert abs(estimate - gb) < 0.5, (plan, images, gb, estimate)


def test_the_kept_lpips_features_count_for_every_image_whatever_the_plan():
    """LPIPS's content features are kept for all images for the whole run (micro-batches slice them): 32 M bf16
    values per 512 px image, a quarter of that at 256 px; nothing without the LPIPS term."""
    for plan in (MemoryPlan(4), MemoryPlan(1, 32, True), MemoryPlan(1, 0, True, True)):
        for images, resolution in ((1, 512), (4, 512), (4, 256)):
            extra = (estimate_bytes(plan, Recipe(images, resolution)) -
                     estimate_bytes(plan, Recipe(images, resolution, lpips=False)))
            assert extra == pytest.approx(images * 2 * 31_981_568 * (resolution / 512) ** 2), (plan, images)
    no_lpips = small_config(loss=dict(lpips=0.0))
    assert not Recipe.of(1, no_lpips).lpips and Recipe.of(1, small_config(loss=dict(lpips=10.0))).lpips
    assert not Recipe.of(1, small_config(loss=dict(lpips=10.0)), has_lpips=False).lpips  # no network: skipped


def test_time_model_orders_the_measured_plans_as_the_h200_did():
    """Seconds per style measured with the same plans: the model only has to rank them."""
    measured = {(1, 0, False): 2.0, (1, 0, True): 2.64, (1, 32, False): 4.30, (1, 32, True): 5.17, (1, 8, False): 9.16}
    order = sorted(measured, key=measured.get)
    assert sorted(measured, key=lambda p: mp.relative_time(MemoryPlan(*p), Recipe(1))) == order
    # recomputing the tower's layers instead of splitting its views (callD: 1 image 3.98 s with the decoder
    # checkpointed too, against 5.17 s for chunks of 32 + decoder checkpointing in callB)
    assert mp.relative_time(MemoryPlan(1, 0, True, True), Recipe(1)) < mp.relative_time(MemoryPlan(1, 32, True),
                                                                                         Recipe(1))
    # 4 images: each way of saving memory on its own, in the measured order (checkpointing the whole batch,
    # 6.73 s, and two micro-batches, 7.88 s, are within the model's error of each other)
    for chain in ([(4, 0, False), (4, 0, True), (2, 0, True), (1, 0, True), (1, 32, True)],
                  [(4, 0, False), (2, 0, False), (1, 0, False), (1, 0, True)]):
        times = [mp.relative_time(MemoryPlan(*p), Recipe(4)) for p in chain]
        assert times == sorted(times), (chain, times)


@pytest.mark.parametrize("card_gb, images, expect", [
    (80, 1, (1, 0, False)), (80, 4, (4, 0, False)),  # big GPU: the fast plan, results unchanged
    (12, 1, (1, 0, False)), (12, 4, (1, 0, False)),
    (8, 1, (1, 0, True)),  # decoder checkpointing (x1.25) before tower chunks (x2 for chunks of 32)
    (8, 4, (2, 0, True, True)), (16, 4, (2, 0, True)),
    (6, 1, (1, 0, True, True)),  # both checkpointed (x1.6) before chunks (x1.9 for chunks of 32)
])
def test_choose_plan_picks_the_fastest_that_fits(card_gb, images, expect):
    recipe = Recipe(images)
    free = card_gb * GB - mp.RESIDENT
    plan = choose_plan(free, recipe)
    expect = (*expect, False) if len(expect) == 3 else expect
    assert (plan.micro_batch, plan.view_chunk, plan.checkpointing, plan.tower_checkpointing) == expect, plan
    assert estimate_bytes(plan, recipe) <= mp.SAFETY * free
    faster = [p for p in mp.candidate_plans(recipe) if mp.relative_time(p, recipe) < mp.relative_time(plan, recipe)]
    assert all(estimate_bytes(p, recipe) > mp.SAFETY * free for p in faster)


def test_choose_plan_without_a_limit_or_without_room():
    assert choose_plan(None, Recipe(4)) == MemoryPlan(4, 0, False, reason="no GPU memory limit known: no saving")
    tiny = choose_plan(1 * GB, Recipe(4))
    assert (tiny.micro_batch, tiny.view_chunk, tiny.checkpointing) == (1, 16, True)  # smaller chunks save nothing
    assert tiny.reason.startswith("nothing fits")
    assert choose_plan(6 * GB, Recipe(4), micro_batching=False).micro_batch == 4
    # a tower that names no layers (the known-meaning test models): no plan recomputes them
    assert not any(p.tower_checkpointing for p in mp.candidate_plans(Recipe(4), tower_layers=False))
    assert not choose_plan(5 * GB, Recipe(1), tower_layers=False).tower_checkpointing


def test_an_auto_plan_that_runs_out_of_memory_retries_the_step_with_a_smaller_plan(parts, three_photos, monkeypatch,
                                                                                   caplog):
    """On an H200 capped at 8 GB, 4 images ran out of memory under the plan chosen from the estimates; "auto"
    now retries the failed step with a plan estimated at most 3/4 of it (here: the first step's first try
    fails as a CUDA allocation would). An explicit plan is the user's: it fails with the error."""
    vae, text, vgg, lp = parts
    real_step = StyleTrainer.step
    failures = []

    def failing_once(self, epoch, *args):
        if not failures:
            failures.append(self.plan)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_step(self, epoch, *args)

    monkeypatch.setattr(StyleTrainer, "step", failing_once)
    with caplog.at_level(logging.WARNING, logger="stylemamba"):
        result = train_style(vae, text, three_photos, "pop art", recipe_config("auto", epochs=2), vgg=vgg, lpips=lp,
                             free_memory=100 * GB)
    first, recipe = failures[0], Recipe(3, small_config().resolution, 66)
    after = MemoryPlan(**{k: v for k, v in result.style.metadata["memory_plan"].items() if k != "reason"})
    assert (first.micro_batch, first.view_chunk, first.checkpointing) == (3, 0, False)  # 100 GB: the fast plan
    assert estimate_bytes(after, recipe) - mp.BASE <= 0.75 * (estimate_bytes(first, recipe) - mp.BASE)
    assert result.steps == 2 and len(result.history) == 2 and all(torch.isfinite(torch.tensor(v))
                                                                 for v in result.history[-1].values())
    assert "ran out of memory: retrying the step" in caplog.text
    failures.clear()
    with pytest.raises(torch.cuda.OutOfMemoryError):
        train_style(vae, text, three_photos, "pop art", recipe_config(SAVING, epochs=1), vgg=vgg, lpips=lp)
    assert mp.smaller_plan(MemoryPlan(1, 8, True), Recipe(1)) is None  # nothing is smaller than the smallest


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_saving_plan_matches_the_fast_plan_on_gpu_and_free_memory_honours_the_cap(tiny_models, photo_batch):
    vae = load_vae(tiny_models["vae"], device="cuda")
    text = load_text_image_encoder(tiny_models["siglip"], device="cuda")
    runs = {}
    for plan in ("fast", SAVING, SAVING_TOWER):
        trainer = StyleTrainer(vae, text, photo_batch, "pop art", small_config(memory_plan=plan, precision="fp32"))
        runs[plan] = [trainer.step(e)[0] for e in range(3) if trainer.end_epoch() is None]
    for a, b, c in zip(*runs.values()):
        for k in a:  # measured on an H200: up to 1.6e-4 relative (cuDNN picks other kernels under checkpointing)
            torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-4)
            torch.testing.assert_close(c[k], a[k], rtol=1e-3, atol=1e-4)
    device = torch.device("cuda", torch.cuda.current_device())  # the memory fraction needs an index
    total = torch.cuda.get_device_properties(device).total_memory
    try:
        torch.cuda.set_per_process_memory_fraction(4e9 / total, device)
        free = mp.free_training_memory(device)
        assert mp.free_training_memory(torch.device("cuda")) == pytest.approx(free, rel=0.01)  # no index: same card
        assert 0 < free <= 4e9 - torch.cuda.memory_allocated(device) + 1
        plan = choose_plan(free, Recipe(1))  # a 4 GB card: must save memory
        assert plan.checkpointing and (plan.view_chunk or plan.tower_checkpointing)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)


def test_an_explicit_plan_without_micro_batch_is_estimated_as_the_whole_batch():
    """parse_plan("checkpointing=on") has micro_batch 0 ("whole batch"): estimate_bytes counted no image at all (1.7
    GB for 4 images at 512 px) and relative_time divided by zero."""
    recipe = Recipe(4)
    whole, parsed = MemoryPlan(4, 0, True), parse_plan("checkpointing=on")
    assert estimate_bytes(parsed, recipe) == estimate_bytes(whole, recipe) > 2 * GB
    assert mp.relative_time(parsed, recipe) == mp.relative_time(whole, recipe)


@pytest.mark.parametrize("bad", ["micro_batch=1,micro_batch=2", {"micro_batch": 1.5}, {"micro_batch": True},
                                 {"view_chunk": 8.5}])
def test_a_plan_number_that_is_not_whole_or_given_twice_is_refused(bad):
    """{"micro_batch": 1.5} ran micro-batches of 1, True ran 1, and a key given twice took the last one."""
    with pytest.raises(ValueError, match="memory_plan"):
        parse_plan(bad)
    assert parse_plan({"micro_batch": 2.0, "view_chunk": "16"}).view_chunk == 16


@pytest.mark.parametrize("bad", [{"micro_batch": np.float32(2.5)}, {"checkpointing": 2}, {"checkpointing": None},
                                 {"tower_checkpointing": 0.5}])
def test_plan_entries_follow_the_rule_of_the_recipe_options(bad):
    """numpy's 2.5 ran micro-batches of 2, a switch of 2 turned checkpointing on and None off, without a word, where
    the recipe's own options (check_kinds) take only whole numbers and true / false / 0 / 1."""
    with pytest.raises(ValueError, match="memory_plan"):
        parse_plan(bad)
    taken = parse_plan({"micro_batch": np.int64(2), "view_chunk": torch.tensor(4), "checkpointing": np.bool_(True),
                        "tower_checkpointing": 0})
    assert (taken.micro_batch, taken.view_chunk, taken.checkpointing, taken.tower_checkpointing) == (2, 4, True, False)
    assert type(taken.micro_batch) is int and type(taken.checkpointing) is bool
