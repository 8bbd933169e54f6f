"""Our Triton kernels inside CUDA graphs captured under torch's cudaMallocAsync allocator, ComfyUI's default
(stylemamba/triton_addresses.py): tensors become typed device addresses only while such a capture records; when
graphs may be captured under that allocator; on a GPU, the graph tests run again in a process using it."""
import copy
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import stylemamba.cuda_graphs as cuda_graphs
from stylemamba.memory_plan import MemoryPlan
from stylemamba.train import why_steps_run_eagerly

HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
HERE = Path(__file__).resolve().parent


@needs_triton
def test_an_address_keeps_the_tensors_dtype_and_triton_types_it_as_that_pointer():
    import pickle

    from stylemamba.triton_addresses import DeviceAddress

    try:  # how Triton types a launch argument (Triton >= 3.4; older ones type an int subclass as an integer, which
        # addresses_work() finds on the device)
        from triton._C.libtriton import native_specialize_impl
    except ImportError:
        pytest.skip("this Triton has no native specialisation to ask")

    class Backend:  # the value specialisation reads the pointer's alignment itself
        supports_native_tensor_specialization = True

    for dtype, name in ((torch.bfloat16, "*bf16"), (torch.float32, "*fp32")):
        t = torch.zeros(64, dtype=dtype)
        address = DeviceAddress.of(t)
        assert int(address) == address.data_ptr() == t.data_ptr() and address.dtype == dtype
        # what Triton compiles from: the same type as for the tensor, and the same 16-byte alignment key
        for arg in (address, t):
            assert native_specialize_impl(object(), arg, False, False, True)[0] == name
        for view in (t, t[1:]):  # aligned, then not
            assert (native_specialize_impl(Backend(), DeviceAddress.of(view), False, True, True)
                    == native_specialize_impl(Backend(), view, False, True, True))
        # a copy or a pickled one is the same address of the same dtype (Triton's launch hooks may copy arguments)
        for again in (copy.copy(address), copy.deepcopy(address), pickle.loads(pickle.dumps(address))):
            assert type(again) is DeviceAddress and again == address and again.dtype == dtype
    assert not native_specialize_impl(object(), int(address), False, False, True)[0].startswith("*")  # an int is not


@needs_triton
def test_kernels_get_addresses_only_while_a_capture_under_the_async_allocator_records(monkeypatch):
    import stylemamba.triton_addresses as ta

    launched = []

    class Kernel:
        fn = "the kernel's function"

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launched.append((grid, args, kwargs))

    kernel = ta.address_safe(Kernel())
    assert kernel.fn == copy.deepcopy(kernel).fn == Kernel.fn  # the JITFunction's attributes, also on a copy
    x, y = torch.ones(3), torch.zeros(2, dtype=torch.bfloat16)
    monkeypatch.setattr(ta, "capturing_under_async_allocator", lambda: False)
    kernel[(2,)](x, 7, out=y, BLOCK=16)
    monkeypatch.setattr(ta, "capturing_under_async_allocator", lambda: True)
    kernel[(2,)](x, 7, out=y, BLOCK=16)
    (g0, args0, kw0), (g1, args1, kw1) = launched
    assert g0 == g1 == (2,)
    assert args0[0] is x and kw0["out"] is y  # unchanged outside such a capture
    assert type(args1[0]) is ta.DeviceAddress and args1[0] == x.data_ptr() and args1[0].dtype == torch.float32
    assert type(kw1["out"]) is ta.DeviceAddress and kw1["out"].dtype == torch.bfloat16
    assert args1[1] == 7 and type(args1[1]) is int and kw1["BLOCK"] == 16  # other arguments untouched


def test_the_async_allocator_allows_graphs_where_triton_takes_addresses(monkeypatch):
    # ComfyUI's default allocator: Triton refused the capture's memory and the failed capture crashed the
    # server (bench/results/steady_h200/callK); our kernels take addresses there, torch.compile's do not
    monkeypatch.setattr(torch.cuda, "get_allocator_backend", lambda: "cudaMallocAsync")
    if HAS_TRITON:
        import stylemamba.triton_addresses as ta

        monkeypatch.setattr(ta, "addresses_work", lambda device=None: None)
        assert why_steps_run_eagerly(MemoryPlan(1), 1, torch.device("cuda"), "bf16") is None
        monkeypatch.setattr(ta, "addresses_work", lambda device=None: "Triton does not take device addresses")
        why = why_steps_run_eagerly(MemoryPlan(1), 1, torch.device("cuda"), "bf16")
        assert "cudaMallocAsync" in why and "device addresses" in why and "--disable-cuda-malloc" in why
    why = why_steps_run_eagerly(MemoryPlan(1), 1, torch.device("cuda"), "bf16", compiled=True)
    assert "torch.compile" in why and "--disable-cuda-malloc" in why
    monkeypatch.setattr(torch.cuda, "get_allocator_backend", lambda: "native")
    assert why_steps_run_eagerly(MemoryPlan(1), 1, torch.device("cuda"), "bf16", compiled=True) is None
    assert cuda_graphs.why_the_allocator_forbids_graphs() is None


needs_cuda = pytest.mark.skipif(not (HAS_TRITON and torch.cuda.is_available()), reason="needs a CUDA GPU and triton")


@needs_cuda
def test_triton_on_this_gpu_takes_addresses():
    from stylemamba.triton_addresses import addresses_work

    assert addresses_work("cuda") is None


@needs_cuda
def test_graph_tests_pass_under_the_async_allocator():
    """The graphed-versus-eager training and video tests, and the Triton kernels captured on their own, in a process
    whose allocator is cudaMallocAsync (the allocator is chosen when torch starts: hence the subprocess)."""
    env = dict(os.environ, PYTORCH_CUDA_ALLOC_CONF="backend:cudaMallocAsync")
    tests = ["test_cuda_graphs.py::test_graphed_training_steps_match_eager_on_gpu",
             "test_cuda_graphs.py::test_graphed_video_batches_match_eager_on_gpu",
             "test_workspace.py::test_a_restarted_trainer_replays_its_graphs_for_the_next_style_on_gpu",
             "test_workspace.py::test_the_workspace_says_what_it_holds_and_gives_it_all_back_on_gpu",
             "test_workspace.py::test_the_next_styles_first_step_is_recorded_only_when_kept_and_a_failed_run_of_it_"
             "falls_back_on_gpu",
             "test_triton_addresses.py::test_triton_kernels_replay_allocations_made_in_the_capture"]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *(str(HERE / t) for t in tests)], env=env, cwd=HERE.parent, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0 and " passed" in proc.stdout and "skipped" not in proc.stdout, (
        proc.stdout[-4000:] + proc.stderr[-2000:])
    # restarting and releasing trainers, and stylising, drop graph-allocated tensors without a Python warning per
    # tensor (pytest's summary lists each test's warnings under its id). Frees outside any torch call are printed by
    # torch on stderr instead, which pytest shows for failing tests only: not checked here
    summary = proc.stdout.split("warnings summary", 1)[-1].split("short test summary", 1)[0]
    blocks = re.split(r"^(tests/\S+::\S+)$", summary, flags=re.M)
    warned = {test.split("[")[0] for test, text in zip(blocks[1::2], blocks[2::2])
              if cuda_graphs.CAPTURED_FREE_WARNING in text}
    assert not warned, f"torch warned about dropped graph allocations in {sorted(warned)}"


def test_only_the_warning_for_dropping_graph_allocations_is_ignored():
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        warnings.warn(f"{cuda_graphs.CAPTURED_FREE_WARNING} with address 0x7f00", UserWarning)
        cuda_graphs.ignore_captured_free_warnings()
        cuda_graphs.ignore_captured_free_warnings()  # once: one filter
        warnings.warn(f"{cuda_graphs.CAPTURED_FREE_WARNING} with address 0x7f00", UserWarning)
        warnings.warn("another warning", UserWarning)
        filters = [f for f in warnings.filters if f[1] is not None and f[1].pattern == cuda_graphs.CAPTURED_FREE_WARNING]
    assert [str(w.message)[:20] for w in seen] == ["Attempting uncapture", "another warning"]
    assert len(filters) == 1


@needs_cuda
def test_triton_kernels_replay_allocations_made_in_the_capture():
    """The scan (forward and backward) and the GroupNorm kernels (NCHW and channels_last) on tensors the capture
    itself allocates, replayed with new inputs: equal to the same calls run eagerly. Under either allocator (the
    test above runs it under cudaMallocAsync)."""
    from stylemamba import group_norm_triton as gn
    from stylemamba.scan_triton import selective_scan_triton

    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    b, d, n, length = 2, 64, 16, 600
    src = {"u": (b, d, length), "delta": (b, d, length), "B": (b, n, length), "C": (b, n, length),
           "z": (b, d, length), "img": (2, 64, 16, 16)}
    static = {k: torch.empty(s, device=dev) for k, s in src.items()}
    A = -torch.rand(d, n, device=dev, generator=g) - 0.1
    w, bias = torch.randn(64, device=dev, generator=g), torch.randn(64, device=dev, generator=g)

    def body():
        # inputs derived inside the body, so every kernel argument is memory the capture allocates
        u, delta, B, C, z = (static[k] * 1.0 for k in ("u", "delta", "B", "C", "z"))
        leaves = [t.requires_grad_() for t in (u, delta, B, C)]
        y = selective_scan_triton(*leaves[:2], A, *leaves[2:], z=z, delta_softplus=True)
        grads = torch.autograd.grad(y, leaves, torch.cos(y.detach()))
        img = static["img"] * 1.0
        outs = [y.detach(), *grads]
        img_cl = img.contiguous(memory_format=torch.channels_last)
        for x, run, back in ((img, gn.forward, gn.backward),
                             (img_cl, gn.forward_channels_last, gn.backward_channels_last)):
            out, mean, rstd = run(x, w, bias, 8, 1e-5)
            dx, dw, db = back(torch.sin(out), x, w, mean, rstd, 8, True)
            outs += [out, dx, dw, db]
        return outs

    def fill():
        for k, s in src.items():
            static[k].copy_(torch.randn(s, device=dev, generator=g) * (0.5 if k == "delta" else 1.0))

    fill()
    body()  # warm-up: compiles the kernels outside the capture
    cuda_graphs.ignore_captured_free_warnings()  # the capture's tensors are dropped outside it on purpose
    _capture_and_compare(body, fill)


def _capture_and_compare(body, fill):
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        graph.capture_begin()
        captured = body()
        graph.capture_end()
    torch.cuda.current_stream().wait_stream(stream)
    for _ in range(2):
        fill()
        graph.replay()
        expected = body()
        for i, (a, e) in enumerate(zip(captured, expected)):
            torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4, msg=f"output {i}")
