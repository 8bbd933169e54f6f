"""bench-universal on the tiny models (CPU): every figure the GPU run reports is produced and consistent."""
import json

import pytest

from stylemamba.cli import main
from stylemamba.experiments.universal_bench import scaling_estimate, strong_scaling


def test_scaling_estimates_follow_ring_allreduce():
    est = scaling_estimate(100.0, 200_000_000, 400.0)
    assert est["1"] == {"allreduce_ms": 0.0, "efficiency": 1.0, "speedup": 1.0}
    assert est["2"]["allreduce_ms"] == pytest.approx(0.5 * 2 * 200e6 / 400e9 * 1e3, rel=1e-3)  # 0.5 ms
    assert est["8"]["allreduce_ms"] > est["2"]["allreduce_ms"] and 7 < est["8"]["speedup"] < 8
    runs = [{"batch_size": b, "step_ms": ms, "allreduce_world_1": {"bytes": 200_000_000}} for b, ms in
            ((4, 60.0), (8, 100.0), (16, 180.0))]
    rows = {(r["global_batch"], r["processes"]): r for r in strong_scaling(runs, 400.0)}
    assert set(rows) == {(8, 2), (16, 2), (16, 4)}
    assert rows[(16, 4)]["step_ms"] == pytest.approx(60.0 + 0.75, abs=0.01)
    assert rows[(16, 4)]["speedup"] == pytest.approx(180.0 / 60.75, rel=1e-3)


@pytest.mark.slow
def test_bench_universal_tiny_runs_and_reports(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench-universal", "--tiny", "--device", "cpu", "--batch-size", "2", "4", "--steps", "1",
                 "--warmup", "0", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["bank_size"] > 250 and len(report["runs"]) == 2
    for run in report["runs"]:
        assert set(run["phases_ms"]) == {"inputs", "forward", "views+tower", "losses", "backward", "optimizer"}
        assert sum(run["phases_ms"].values()) <= run["step_ms"] * 1.05 and run["pairs_per_s"] > 0
        assert run["allreduce_world_1"]["backend"] == "gloo"
        assert run["allreduce_world_1"]["bytes"] == 4 * run["trained_parameters"]
    assert report["strong_scaling"][0]["global_batch"] == 4 and report["strong_scaling"][0]["processes"] == 2


def test_bad_options_and_outputs_are_refused_before_any_model_is_built(tmp_path, capsys, monkeypatch):
    """A mistake found after the timing (a folder as --out, --bus-gbps 0) lost the whole run; an existing report was
    replaced without --overwrite."""
    import stylemamba.experiments.universal_bench as ub

    def built(*args, **kwargs):
        raise AssertionError("the models were built before the options were checked")

    monkeypatch.setattr(ub, "build_tiny_bench_models", built)
    existing = tmp_path / "old.json"
    existing.write_text("{}")
    base = ["bench-universal", "--tiny", "--device", "cpu", "--steps", "1", "--warmup", "0"]
    for extra, message in ((["--steps", "0"], "--steps 0 is too small"), (["--warmup", "-1"], "--warmup -1"),
                           (["--batch-size", "2", "0"], "--batch-size 0 is too small"),
                           (["--bus-gbps", "0"], "--bus-gbps 0.0"), (["--resolution", "100"], "--resolution 100"),
                           (["--out", str(tmp_path)], "is a folder"),
                           (["--out", str(existing / "r.json")], "is a file, not a folder"),
                           (["--out", str(existing)], "pass --overwrite")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert message in err, (extra, err)
    assert existing.read_text() == "{}"
