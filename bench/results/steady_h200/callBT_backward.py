"""call BT: callBS's plain `backward` capture (eager warm-up on the default stream, gradients kept) did NOT slow the
first graph, where callBP's bwd_small (warm-up on a side stream, gradients set to None) did. Which difference is it?
argv[1] names the variant; one per process; a 1,600-node graph captured first is timed before and after."""
import statistics, sys, torch

x = torch.randn(64, 256, device="cuda")
outs = [torch.empty_like(x) for _ in range(1600)]


def chain():
    h = x
    for i, o in enumerate(outs):
        torch.add(h, 0.5, out=o) if i % 2 == 0 else torch.mul(h, 1.0001, out=o)
        h = o


def replay_us(graph):
    times = []
    for _ in range(100):
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); graph.replay(); b.record(); b.synchronize()
        times.append(a.elapsed_time(b) * 1e3)
    return round(statistics.median(times), 1)


chain()
torch.cuda.synchronize()
probe = torch.cuda.CUDAGraph()
with torch.cuda.graph(probe):
    chain()
before = replay_us(probe)
v = sys.argv[1]
layer = (torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Tanh()) if "tanh" in v
         else torch.nn.Linear(256, 256)).cuda()
inp = torch.randn(64, 256, device="cuda", requires_grad="input" in v)


def fwd_bwd():
    loss = layer(inp).float().square().mean()
    if "input" in v:
        return torch.autograd.grad(loss, [inp])
    loss.backward()


side = torch.cuda.Stream()
side.wait_stream(torch.cuda.current_stream())
with torch.cuda.stream(side if "side" in v else torch.cuda.current_stream()):
    for _ in range(3 if "warm3" in v else 1):
        fwd_bwd()
torch.cuda.current_stream().wait_stream(side)
torch.cuda.synchronize()
if "none" in v:
    layer.zero_grad(set_to_none=True)
graph = torch.cuda.CUDAGraph()
with torch.cuda.graph(graph):
    fwd_bwd()
torch.cuda.synchronize()
print(f"{v}: the first graph replays in {before} us before, {replay_us(probe)} us after", flush=True)
