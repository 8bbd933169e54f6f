"""A trainer kept between styles (train.TrainingWorkspace): the next style of the same kind trains in the last
one's decoder copy, optimizer and CUDA graphs, and must come out exactly as a fresh trainer's."""
import weakref

import pytest
import torch

from small import small_config
from stylemamba.encoders import load_text_image_encoder
from stylemamba.perceptual import LPIPSLoss, VGGFeatures
from stylemamba.train import StyleTrainer, TrainingCancelled, TrainingWorkspace, train_style
from stylemamba.vae import load_vae


@pytest.fixture(scope="module")
def parts(tiny_models):
    vae = load_vae(tiny_models["vae"])
    text = load_text_image_encoder(tiny_models["siglip"])
    vgg = VGGFeatures.from_safetensors(tiny_models["vgg19"])
    return vae, text, vgg, LPIPSLoss(net="vgg")


def _same_style(a, b):
    assert [sorted(h) for h in a.history] == [sorted(h) for h in b.history]
    for ha, hb in zip(a.history, b.history):
        for k in ha:
            assert ha[k] == pytest.approx(hb[k], rel=1e-5, abs=1e-7), k
    for da, db in ((a.style.decoder_delta, b.style.decoder_delta), (a.style.fusion_state, b.style.fusion_state)):
        assert da.keys() == db.keys()
        for k in da:
            torch.testing.assert_close(da[k], db[k], rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
    torch.testing.assert_close(a.style.embedding, b.style.embedding)


def test_a_restarted_trainer_trains_the_next_style_as_a_fresh_one(parts, photo, photo_loader, caplog):
    vae, text, vgg, lp = parts
    other = photo_loader("coffee", 64)
    # the second style differs in everything a restart sets: prompt, content, seed, learning rate, step count
    first_cfg = small_config(epochs=3, seed=1, loss=dict(so_interval=2, so_theta=2.0))
    second_cfg = small_config(epochs=4, seed=7, lr=1e-3, loss=dict(so_interval=2, so_theta=2.0))
    workspace = TrainingWorkspace()
    first = train_style(vae, text, photo, "oil painting", first_cfg, vgg=vgg, lpips=lp, workspace=workspace)
    assert workspace.holds
    kept = workspace._trainer
    with caplog.at_level("INFO", logger="stylemamba"):
        second = train_style(vae, text, other, "pencil sketch", second_cfg, vgg=vgg, lpips=lp, workspace=workspace)
    assert workspace._trainer is kept, "the same trainer trained the second style"
    assert "training in the last style's workspace" in caplog.text
    fresh = train_style(vae, text, other, "pencil sketch", second_cfg, vgg=vgg, lpips=lp)
    _same_style(second, fresh)
    assert second.style.metadata["prompts"] == ["pencil sketch"] and second.steps == 4
    assert second.style.metadata["recipe"]["seed"] == 7
    # and the first style is what a fresh trainer makes of it too (the workspace changed nothing of it)
    _same_style(first, train_style(vae, text, photo, "oil painting", first_cfg, vgg=vgg, lpips=lp))


def test_another_kind_of_style_gets_a_new_trainer(parts, photo, photo_batch):
    vae, text, vgg, lp = parts
    workspace = TrainingWorkspace()
    train_style(vae, text, photo, "oil painting", small_config(epochs=2), vgg=vgg, workspace=workspace)
    kept = workspace._trainer
    # more content images: another kind (the steps' shapes differ)
    train_style(vae, text, photo_batch, "oil painting", small_config(epochs=2), vgg=vgg, workspace=workspace)
    assert workspace._trainer is not kept and workspace._trainer.x.shape[0] == photo_batch.shape[0]
    kept = workspace._trainer
    # another loss recipe: another kind
    train_style(vae, text, photo_batch, "oil painting", small_config(epochs=2, loss=dict(patch=0.0)), vgg=vgg,
                workspace=workspace)
    assert workspace._trainer is not kept
    kept = workspace._trainer
    # another network (LPIPS given): another kind
    train_style(vae, text, photo_batch, "oil painting", small_config(epochs=2, loss=dict(patch=0.0)), vgg=vgg,
                lpips=lp, workspace=workspace)
    assert workspace._trainer is not kept
    workspace.release()
    assert not workspace.holds


def test_a_network_moved_away_and_back_is_not_reused(parts, photo):
    """A CUDA graph reads the networks' weights where they were: after a move to another device and back they
    are elsewhere, so the kept trainer must not be restarted (on the CPU a copy to fp64 and back stands in)."""
    vae, text, vgg, lp = parts
    workspace = TrainingWorkspace()
    train_style(vae, text, photo, "oil painting", small_config(epochs=2), vgg=vgg, workspace=workspace)
    kept = workspace._trainer
    vgg.to(torch.float64).to(torch.float32)  # new storages for every weight
    train_style(vae, text, photo, "oil painting", small_config(epochs=2), vgg=vgg, workspace=workspace)
    assert workspace._trainer is not kept


def test_a_failed_style_leaves_nothing_kept_and_a_cancelled_one_is_reused(parts, photo):
    vae, text, vgg, lp = parts  # without the VGG loss: no content features to copy in
    workspace = TrainingWorkspace()
    cfg = small_config(epochs=3)
    train_style(vae, text, photo, "oil painting", cfg, workspace=workspace)

    def boom(info):
        raise RuntimeError("a progress callback that fails")

    with pytest.raises(RuntimeError, match="progress callback"):
        train_style(vae, text, photo, "watercolor", cfg, on_step=boom, workspace=workspace)
    assert not workspace.holds, "a trainer that failed mid-run must not train the next style"

    calls = []
    with pytest.raises(TrainingCancelled) as cancelled:
        train_style(vae, text, photo, "watercolor", cfg, workspace=workspace,
                    should_stop=lambda: calls.append(1) or len(calls) > 2)
    assert cancelled.value.partial.steps == 2 and workspace.holds
    after_cancel = train_style(vae, text, photo, "pencil sketch", cfg, workspace=workspace)
    _same_style(after_cancel, train_style(vae, text, photo, "pencil sketch", cfg))


def test_restart_refuses_another_kind_of_recipe_and_changes_nothing(parts, photo, photo_batch):
    """A restart reuses the buffers the steps read (the LPIPS and VGG content features among them), so only what
    :func:`workspace_kind` lets change may change; anything else is refused before the trainer is touched."""
    vae, text, vgg, lp = parts
    trainer = StyleTrainer(vae, text, photo, "oil painting", small_config(epochs=1, loss=dict(lpips=10.0)), lpips=lp)
    before = [t.clone() for t in (trainer.x, *trainer.lpips_x)]
    with pytest.raises(ValueError, match="another kind"):
        trainer.restart(photo.flip(-1), "pop art", small_config(epochs=1, loss=dict(lpips=0.0)))
    with pytest.raises(ValueError, match="2 content image"):
        trainer.restart(photo_batch, "pop art", small_config(epochs=1, loss=dict(lpips=10.0)))
    for a, b in zip(before, (trainer.x, *trainer.lpips_x)):
        assert torch.equal(a, b)
    trainer.restart(photo.flip(-1), "pop art", small_config(epochs=1, seed=3, lr=1e-3, loss=dict(lpips=10.0)))
    assert not torch.equal(before[0], trainer.x)  # the new content, in the same buffer


def test_a_fine_tuning_is_never_restarted(parts, photo):
    vae, text, vgg, lp = parts
    workspace = TrainingWorkspace()
    base = train_style(vae, text, photo, "oil painting", small_config(epochs=2), workspace=workspace)
    kept = workspace._trainer
    tuned = train_style(vae, text, photo, "oil painting", small_config(epochs=2), start=base.style,
                        workspace=workspace)
    assert workspace._trainer is not kept and not workspace.holds  # a fine-tuning is not kept either
    assert tuned.style.metadata["started_from"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_restarted_trainer_replays_its_graphs_for_the_next_style_on_gpu(tiny_models, photo, photo_loader, caplog):
    """On the GPU the kept trainer's CUDA graphs replay the next style from its first step (no eager step and no
    capture: the first step's graph, which the first style ran eagerly, is recorded when the trainer is kept),
    with the losses of a fresh graphed trainer."""
    vae = load_vae(tiny_models["vae"], device="cuda")
    text = load_text_image_encoder(tiny_models["siglip"], device="cuda")
    other = photo_loader("coffee", 64)
    cfg = dict(cuda_graphs="on", precision="fp32", loss=dict(so_interval=2, so_theta=2.0))
    workspace = TrainingWorkspace()
    train_style(vae, text, photo, "oil painting", small_config(epochs=4, seed=1, **cfg), workspace=workspace)
    graphs = workspace._trainer.graphs
    # epochs 1-3: L_so off / on; epoch 0 ran eagerly, and a restart's first step (no previous image) was recorded
    assert graphs is not None and len(graphs) == 3 and (False, False) in graphs
    assert not workspace._trainer.record_restart_step()  # once
    second = train_style(vae, text, other, "pencil sketch", small_config(epochs=5, seed=2, **cfg), workspace=workspace)
    assert workspace._trainer.graphs is graphs and len(graphs) == 3  # nothing captured for the second style
    fresh = train_style(vae, text, other, "pencil sketch", small_config(epochs=5, seed=2, **cfg))
    # first-order terms as in test_cuda_graphs (fp32, rtol 1e-3); L_so and the total amplify rounding
    for step, (a, b) in enumerate(zip(fresh.history, second.history)):
        assert a.keys() == b.keys()
        for k in a.keys() - {"so", "total"}:
            assert b[k] == pytest.approx(a[k], rel=1e-3, abs=1e-4), f"step {step} term {k}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_next_styles_first_step_is_recorded_only_when_kept_and_a_failed_run_of_it_falls_back_on_gpu(
        tiny_models, photo, photo_loader, monkeypatch):
    """A trainer the workspace will not keep (over max_share) records nothing. Under cudaMallocAsync the recorded
    graph runs once when recorded; when that run fails (simulated here, under either allocator) the trainer is still
    kept and trains the next styles eagerly, with a fresh trainer's losses; nothing the unrun graph allocated is
    freed (under cudaMallocAsync that aborted the process)."""
    from stylemamba import train as train_module
    from stylemamba.cuda_graphs import CapturedCalls

    vae = load_vae(tiny_models["vae"], device="cuda")
    text = load_text_image_encoder(tiny_models["siglip"], device="cuda")
    cfg = dict(cuda_graphs="on", precision="fp32", loss=dict(so_interval=2, so_theta=2.0))
    recorded = []
    real_record = StyleTrainer.record_restart_step
    monkeypatch.setattr(StyleTrainer, "record_restart_step", lambda self: recorded.append(self) or real_record(self))
    small = TrainingWorkspace(max_share=1e-6)
    train_style(vae, text, photo, "oil painting", small_config(epochs=3, **cfg), workspace=small)
    assert not small.holds and recorded == []

    monkeypatch.setattr(train_module, "uses_async_allocator", lambda: True)  # the recorded graph runs at once
    real_call = CapturedCalls.__call__

    def launch_fails(self, key, body):
        if key == (False, False):
            self.record(key, body)  # recorded, never run
            raise RuntimeError("CUDA error: out of memory (simulated launch failure)")
        return real_call(self, key, body)

    monkeypatch.setattr(CapturedCalls, "__call__", launch_fails)
    workspace = TrainingWorkspace()
    train_style(vae, text, photo, "oil painting", small_config(epochs=3, seed=1, **cfg), workspace=workspace)
    assert recorded and workspace.holds and workspace._trainer.graphs is None  # kept, eager from now on
    other = photo_loader("coffee", 64)
    second = train_style(vae, text, other, "pencil sketch", small_config(epochs=3, seed=2, **cfg), workspace=workspace)
    assert workspace._trainer.graphs is None
    fresh = train_style(vae, text, other, "pencil sketch", small_config(epochs=3, seed=2, **{**cfg, "cuda_graphs": "off"}))
    for step, (a, b) in enumerate(zip(fresh.history, second.history)):
        for k in a.keys() - {"so", "total"}:
            assert b[k] == pytest.approx(a[k], rel=1e-3, abs=1e-4), f"step {step} term {k}"
    workspace.release()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_workspace_says_what_it_holds_and_gives_it_all_back_on_gpu(tiny_models, photo, monkeypatch):
    import gc

    vae = load_vae(tiny_models["vae"], device="cuda")
    text = load_text_image_encoder(tiny_models["siglip"], device="cuda")
    kind_a = small_config(epochs=3, cuda_graphs="on")
    kind_b = small_config(epochs=2, cuda_graphs="on", loss=dict(patch=0.0))

    trainers = []  # weak references to every trainer a workspace kept: none may outlive its release

    def keep(workspace):
        trainers.append(weakref.ref(workspace._trainer))

    def styles_in_workspaces():  # a kind, a new kind in the same workspace, a workspace that may keep nothing
        workspace, small = TrainingWorkspace(), TrainingWorkspace(max_share=1e-6)
        train_style(vae, text, photo, "oil painting", kind_a, workspace=workspace)
        keep(workspace)
        train_style(vae, text, photo, "oil painting", kind_b, free_memory=1e9, workspace=workspace)
        keep(workspace)
        train_style(vae, text, photo, "oil painting", kind_a, workspace=small)
        workspace.release()

    # once before measuring: what torch allocates once per process for a kind of step it has not run before
    # (2 MiB in calls X and Y, the same after a second round) is not counted below; a trainer kept alive
    # anywhere (which a second round would replace, not add to) is caught by the weak references
    async_allocator = torch.cuda.get_allocator_backend() == "cudaMallocAsync"  # (test_triton_addresses runs it so)

    def in_use():  # with the caching allocator the graphs' pools are reserved, not allocated; under cudaMallocAsync
        # they are the driver's, and torch (and ComfyUI) see only the device's free memory shrink
        if async_allocator:
            free, total = torch.cuda.mem_get_info()
            return total - free, total - free
        return torch.cuda.memory_reserved(), torch.cuda.memory_allocated()

    styles_in_workspaces()
    gc.collect()
    torch.cuda.empty_cache()
    start_held, start = in_use()
    workspace = TrainingWorkspace()
    train_style(vae, text, photo, "oil painting", kind_a, workspace=workspace)
    keep(workspace)
    torch.cuda.empty_cache()
    now_held, now = in_use()
    held, counted = now_held - start_held, now - start  # counted: what torch (and ComfyUI) count as used
    assert workspace.held_bytes == pytest.approx(held, rel=0.05) and (held > counted or async_allocator)
    assert workspace.counted_bytes == pytest.approx(counted, rel=0.05)
    # a new kind of style: the caller's free-memory count gets back what it counted as used (the graphs' pool
    # it already counted as free)
    seen = []
    real_plan = StyleTrainer._plan
    monkeypatch.setattr(StyleTrainer, "_plan", lambda self, free: seen.append(free) or real_plan(self, free))
    train_style(vae, text, photo, "oil painting", kind_b, free_memory=1e9, workspace=workspace)
    keep(workspace)
    assert seen == [pytest.approx(1e9 + counted, rel=0.05)]
    # a workspace that may keep only a sliver of the card keeps nothing
    small = TrainingWorkspace(max_share=1e-6)
    train_style(vae, text, photo, "oil painting", kind_a, workspace=small)
    assert not small.holds
    workspace.release()
    gc.collect()
    torch.cuda.empty_cache()
    assert len(trainers) == 4 and not any(ref() is not None for ref in trainers)
    # the device gets the memory back (under cudaMallocAsync the graphs' memory is the driver's, trimmed on release)
    left = in_use()[0] - start_held
    assert left < 64 * 2**20, f"{left / 2**20:.0f} MiB still in use after the release (held {held / 2**20:.0f} MiB)"
    assert torch.cuda.memory_allocated() - start < 2**20


def test_a_restart_that_fails_frees_the_kept_trainer(parts, photo):
    vae, text, vgg, lp = parts
    workspace = TrainingWorkspace()
    train_style(vae, text, photo, "oil painting", small_config(epochs=2), workspace=workspace)
    kept = workspace._trainer
    with pytest.raises(ValueError, match="(?i)prompt"):
        train_style(vae, text, photo, "   ", small_config(epochs=2), workspace=workspace)  # an empty prompt
    assert not workspace.holds and kept.model is None and kept.graphs is None
    assert workspace.held_bytes == workspace.counted_bytes == 0
    # and the next style builds a new trainer
    train_style(vae, text, photo, "oil painting", small_config(epochs=2), workspace=workspace)
    assert workspace.holds and workspace._trainer is not kept


def test_a_replaced_or_released_trainer_is_freed(parts, photo):
    """Nothing outside the workspace keeps a trainer alive: the one a new kind of style replaces and the one a
    release lets go are garbage once collected (their networks, optimizer state and any graphs with them)."""
    import gc

    vae, text, vgg, lp = parts
    workspace = TrainingWorkspace()
    train_style(vae, text, photo, "oil painting", small_config(epochs=2), workspace=workspace)
    first = weakref.ref(workspace._trainer)
    train_style(vae, text, photo, "oil painting", small_config(epochs=3, loss=dict(patch=0.0)), workspace=workspace)
    second = weakref.ref(workspace._trainer)
    gc.collect()
    assert first() is None and second() is not None  # a new kind replaced the first
    workspace.release()
    gc.collect()
    assert second() is None


def test_a_released_trainer_lets_go_of_its_tensors_while_still_referred_to(parts, photo):
    """release() empties the cache right after letting the trainer go, while its own local still refers to it (as a
    traceback or a caller may): everything it held on the device must be dropped by then, the content's LPIPS
    features (64 MB per 512 px image) included."""
    vae, text, vgg, lp = parts
    workspace = TrainingWorkspace()
    train_style(vae, text, photo, "oil painting", small_config(epochs=2, loss=dict(lpips=10.0)), lpips=lp,
                workspace=workspace)
    trainer = workspace._trainer
    assert trainer.lpips_x is not None and trainer.model is not None
    workspace.release()
    held = {k: v for k, v in vars(trainer).items()
            if isinstance(v, torch.Tensor) or (isinstance(v, list) and any(isinstance(t, torch.Tensor) for t in v))}
    assert not held, sorted(held)
    assert trainer.model is None and trainer.opt is None and trainer.graphs is None
