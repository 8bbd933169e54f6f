"""Checkpoints: optimizer state round-trips through safetensors (no pickle) and training continues identically."""
from __future__ import annotations

import json

import pytest
import torch

from stylemamba.checkpoint import (CheckpointError, latest_checkpoint, list_checkpoints, load_checkpoint,
                                   optimizer_from_tensors, save_checkpoint)


def _net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.SiLU(), torch.nn.Linear(8, 2))


def _steps(net, opt, n, start=0):
    for i in range(start, start + n):
        g = torch.Generator().manual_seed(i)
        x = torch.randn(5, 4, generator=g)
        opt.zero_grad()
        net(x).pow(2).mean().backward()
        opt.step()


def test_adam_state_round_trips_and_training_continues_bit_identically(tmp_path):
    net, ref = _net(), _net()
    opt, opt_ref = (torch.optim.Adam(m.parameters(), lr=1e-2, betas=(0.8, 0.95)) for m in (net, ref))
    _steps(net, opt, 3)
    _steps(ref, opt_ref, 3)
    names = [n for n, _ in net.named_parameters()]
    path = save_checkpoint(tmp_path, 3, net.state_dict(), opt, names, {"note": "x"})
    assert path.name == "step-00000003" and sorted(p.name for p in path.iterdir()) == [
        "model.safetensors", "optimizer.safetensors", "trainer.json"]
    ck = load_checkpoint(path)
    assert ck.step == 3 and ck.state["note"] == "x"
    resumed = _net(seed=1)  # different initial weights: everything must come from the checkpoint
    resumed.load_state_dict(ck.tensors)
    opt2 = torch.optim.Adam(resumed.parameters(), lr=0.5)
    optimizer_from_tensors(opt2, names, ck.optimizer_tensors, ck.optimizer_meta)
    assert opt2.param_groups[0]["lr"] == 1e-2 and tuple(opt2.param_groups[0]["betas"]) == (0.8, 0.95)
    _steps(resumed, opt2, 4, start=3)
    _steps(ref, opt_ref, 4, start=3)
    for a, b in zip(resumed.parameters(), ref.parameters()):
        assert torch.equal(a, b)


def test_partial_folders_are_ignored_old_ones_pruned_and_mismatches_named(tmp_path):
    net = _net()
    opt = torch.optim.Adam(net.parameters())
    _steps(net, opt, 1)
    names = [n for n, _ in net.named_parameters()]
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, net.state_dict(), opt, names, {}, keep=2)
    (tmp_path / "step-00000009.partial").mkdir()  # a write killed half-way
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002", "step-00000003"]
    assert latest_checkpoint(tmp_path).name == "step-00000003"
    ck = load_checkpoint(latest_checkpoint(tmp_path))
    with pytest.raises(CheckpointError, match="parameters differ"):
        optimizer_from_tensors(opt, ["a", "b", "c", "d"], ck.optimizer_tensors, ck.optimizer_meta)
    with pytest.raises(CheckpointError, match="optimizer is Adam"):
        optimizer_from_tensors(torch.optim.SGD(net.parameters(), lr=1), names, ck.optimizer_tensors,
                               ck.optimizer_meta)
    (latest_checkpoint(tmp_path) / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(latest_checkpoint(tmp_path))
    assert json.loads((tmp_path / "step-00000002" / "trainer.json").read_text())["step"] == 2


@pytest.mark.parametrize("state", ["[1, 2]", "{}", '{"step": "ten"}', "null"])
def test_a_foreign_or_edited_trainer_state_is_named_not_a_traceback(tmp_path, state):
    net = _net()
    opt = torch.optim.Adam(net.parameters())
    path = save_checkpoint(tmp_path, 1, net.state_dict(), opt, [n for n, _ in net.named_parameters()], {})
    (path / "trainer.json").write_text(state)
    with pytest.raises(CheckpointError, match="trainer.json holds no step number.*delete that folder"):
        load_checkpoint(path)


def test_a_write_that_fails_leaves_no_half_checkpoint_and_names_the_last_good_one(tmp_path, monkeypatch):
    """A full disk while writing: the run stopped with safetensors' own error and a traceback, and the half-written
    step-N.partial kept the space the next write needed; now nothing of it is left and the error names the last
    complete checkpoint."""
    import errno

    import safetensors.torch

    net = _net()
    opt = torch.optim.Adam(net.parameters())
    _steps(net, opt, 1)
    names = [n for n, _ in net.named_parameters()]
    save_checkpoint(tmp_path, 1, net.state_dict(), opt, names, {})
    real = safetensors.torch.save_file

    def full_disk(tensors, filename, metadata=None):
        if filename.endswith("optimizer.safetensors"):  # the weights went in, the optimizer state does not
            raise OSError(errno.ENOSPC, "No space left on device")
        real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(CheckpointError, match=r"step-00000002 could not be written .*No space left on device.*"
                                              r"step-00000001, is intact"):
        save_checkpoint(tmp_path, 2, net.state_dict(), opt, names, {})
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000001"]
    assert load_checkpoint(latest_checkpoint(tmp_path)).step == 1


def test_a_second_ctrl_c_while_writing_leaves_no_half_checkpoint(tmp_path, monkeypatch):
    """Ctrl-C twice (abort) while a checkpoint was written left step-N.partial behind, though the CLI then says
    "nothing half-written is left"."""
    import safetensors.torch

    net = _net()
    opt = torch.optim.Adam(net.parameters())
    _steps(net, opt, 1)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 1, net.state_dict(), opt, [n for n, _ in net.named_parameters()], {})
    assert list(tmp_path.iterdir()) == []


def test_folders_left_by_a_kill_are_removed_with_the_next_checkpoint(tmp_path):
    """A run killed while writing its last checkpoint (step 5, not a multiple of checkpoint_every: the Ctrl-C one)
    or while pruning an old one left step-5.partial and a step folder without its weights on the disk for good: no
    later write had their name. Each holds up to a checkpoint's size."""
    net = _net()
    opt = torch.optim.Adam(net.parameters())
    _steps(net, opt, 1)
    names = [n for n, _ in net.named_parameters()]
    save_checkpoint(tmp_path, 4, net.state_dict(), opt, names, {})
    for left in ("step-00000001", "step-00000005.partial", "step-00000009.partial"):
        (tmp_path / left).mkdir()
        (tmp_path / left / "trainer.json").write_text('{"step": 1}')
    save_checkpoint(tmp_path, 6, net.state_dict(), opt, names, {}, keep=2)
    # a later step's partial folder is left to the write of that step (it replaces it)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000004", "step-00000006", "step-00000009.partial"]


def test_a_kill_while_the_same_step_is_written_again_keeps_a_checkpoint_of_it(tmp_path, monkeypatch):
    """A resumed run stopped at once writes its step again: the old folder was deleted before the new one was renamed
    into place, so a kill between the two left no checkpoint of that step (with keep=1, none at all)."""
    import stylemamba.checkpoint as ck

    net = _net()
    opt = torch.optim.Adam(net.parameters())
    _steps(net, opt, 1)
    names = [n for n, _ in net.named_parameters()]
    save_checkpoint(tmp_path, 3, net.state_dict(), opt, names, {"run": "first"}, keep=1)

    def killed(*args, **kwargs):
        raise SystemExit("killed before the rename")

    monkeypatch.setattr(ck, "replace_durably", killed)
    with pytest.raises(SystemExit):
        save_checkpoint(tmp_path, 3, net.state_dict(), opt, names, {"run": "second"}, keep=1)
    kept = latest_checkpoint(tmp_path)
    assert kept is not None and load_checkpoint(kept).step == 3 and load_checkpoint(kept).state["run"] == "first"
    monkeypatch.undo()
    save_checkpoint(tmp_path, 3, net.state_dict(), opt, names, {"run": "third"}, keep=1)  # the next write tidies
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000003"]
    assert load_checkpoint(latest_checkpoint(tmp_path)).state["run"] == "third"
    save_checkpoint(tmp_path, 3, net.state_dict(), opt, names, {"run": "fourth"}, keep=1)  # replaced when all goes well
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000003"]


def test_weights_that_do_not_fit_the_model_are_named_with_the_checkpoint(tmp_path):
    """A tensor missing or of another shape in model.safetensors was torch's RuntimeError traceback from
    load_state_dict, naming neither the checkpoint nor the fix; the model is left as it was."""
    from stylemamba.checkpoint import weights_from_tensors

    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    tensors = {k: v.clone() + 1 for k, v in net.state_dict().items()}
    tensors.pop("2.bias")
    tensors["0.weight"] = torch.zeros(3, 4)
    with pytest.raises(CheckpointError, match=r"checkpoint .*step-00000001: its model.safetensors does not fit this "
                                              r"model \(missing 2.bias; of another shape 0.weight \(3x4 in the file, "
                                              r"8x4 here\)\).*delete that folder to resume from the one before it"):
        weights_from_tensors(net, tensors, tmp_path / "step-00000001")
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    good = {k: v.clone() + 1 for k, v in net.state_dict().items()}
    weights_from_tensors(net, good, tmp_path / "step-00000001")
    assert all(torch.equal(good[k], v) for k, v in net.state_dict().items())
