"""bench/scan_bench.py (the selective-scan micro-benchmark) runs and reports on the CPU at tiny sizes."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("scan_bench", ROOT / "bench" / "scan_bench.py")
scan_bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(scan_bench)


def test_fusion_shapes_follow_the_default_config():
    s512, s1024 = scan_bench.fusion_shapes([512, 1024], [1])
    assert s512 == {"size": 512, "images": 1, "batch": 2, "channels": 512, "state": 16, "length": 4096}
    assert s1024["length"] == 16384
    assert scan_bench.fusion_shapes([512], [4])[0]["batch"] == 8


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_sweep_tiles_are_valid_and_every_backward_chunk_has_a_forward_tile():
    from stylemamba.scan_triton import KernelConfig  # imports triton (installed with torch on Linux)

    tasks = scan_bench.sweep_configs()
    assert len(set(tasks)) == len(tasks) and {k for k, _ in tasks} == {"fwd", "bwd"}
    for kind, tile in tasks:
        KernelConfig(*tile)  # powers of two, valid warps
        if kind == "bwd":
            assert scan_bench._fwd_tile_for(tile[1])[1] == tile[1]


def test_cpu_run_writes_json_and_table(tmp_path, capsys):
    out = tmp_path / "scan.json"
    assert scan_bench.main(["--device", "cpu", "--sizes", "32", "--images", "1", "--repeat", "2", "--warmup", "1",
                            "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    res = report["results"]["32px_x1"]
    assert res["shape"]["length"] == 16
    chunked = res["chunked"]
    assert chunked["fwd_ms"]["median"] > 0 and chunked["fwd_bwd_ms"]["n"] == 2
    assert chunked["grad_rel_err_vs_chunked"] == {k: 0.0 for k in scan_bench.NAMES}
    assert "| 32px_x1 (2, 512, 16, 16) | chunked |" in capsys.readouterr().out
