#!/usr/bin/env python3
"""Run train_and_stylize.json in ONE real ComfyUI server (GPU by default) and report ComfyUI's own times.

    python comfy_gpu_run.py --harness DIR --comfy DIR --pack DIR --models DIR --input FILE... \
        --workflow wf.json --out DIR [--cpu] [--tiny] [--run-dir DIR]

Uses the shared acceptance harness (comfy_harness.py: server lifecycle, import check, UI->API conversion, history
polling) with this interpreter instead of its venv, and without its --cpu/--deterministic flags unless --cpu.
Four prompts, one server:
  1. the workflow as shipped (paper recipe): load models, train, save the style, stylise;
  2. the same graph with the Stylize node fed another photo: ComfyUI's cache keeps the trained style and the pack's
     cache the built decoder, so only Load Image, Stylize and the image outputs run;
  3. the same graph with another style prompt: a second training in a warm process, then stylise;
  4. the same graph with a third style prompt: one more training in the warm process (a second warm measurement;
     what the process learnt in prompts 1 and 3, e.g. the CUDA graph decision, applies here too).
Writes OUT/summary.json (per prompt: status, seconds from ComfyUI's "Prompt executed in" line and from polling,
each node's seconds (websocket messages stamped on arrival), cached nodes, errors, the pack's log lines: every line of the 'stylemamba' logger, which ComfyUI prints with the
"StyleMamba:" prefix, INFO included) and prints a short summary. Exit code 0 only when every prompt succeeded.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import sys
import threading
import time
import types
import uuid

TINY_TRAIN = {"epochs": 2, "lr_decay_epoch": 1, "resolution": 64, "n_crops": 4, "so_interval": 1,
              "vgg_weight_switch_epoch": 1}
SECOND_PROMPT = "ukiyo-e woodblock print, flat colours, bold black outlines"
THIRD_PROMPT = "charcoal sketch, rough grey hatching on white paper"
# The pack's lines in ComfyUI's log: the 'stylemamba' logger's records (INFO too) carry the "StyleMamba:" prefix
# (stylemamba/logs.py, installed by nodes/__init__.py); the other words catch a record without it (CUDA graph
# decisions, memory plan, ...).
PACK_LINE = re.compile(r"stylemamba|memory plan|Train:|Stylize:|scan backend|compil|CUDA graph|launch-bound|GPU-bound|replay",
                       re.I)
PACK_LOG_MAX = 80  # lines kept per prompt


class NodeTimes(threading.Thread):
    """ComfyUI's websocket messages for our client id, stamped on arrival: each node's wall time inside a prompt
    (ComfyUI logs only the whole prompt's). Runs aiohttp, which ComfyUI itself needs, in a daemon thread."""

    def __init__(self, ws_url: str):
        super().__init__(daemon=True)
        self.url, self.events, self.ready, self.error = ws_url, [], threading.Event(), None

    def run(self):
        import asyncio
        import aiohttp

        async def listen():
            async with aiohttp.ClientSession() as session, session.ws_connect(self.url, heartbeat=30) as ws:
                self.ready.set()
                async for msg in ws:
                    now = time.monotonic()
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        d = json.loads(msg.data)
                        self.events.append((now, d.get("type"), d.get("data") or {}))
                    elif msg.type == aiohttp.WSMsgType.BINARY:
                        self.events.append((now, "binary", {}))
        try:
            asyncio.run(listen())
        except Exception as exc:  # reported in the summary; the run goes on without node times
            self.error = f"{type(exc).__name__}: {exc}"
            self.ready.set()

    def node_seconds(self, since: int, api: dict) -> tuple[list, int]:
        """[(node id, class, seconds)] in execution order for the events after index ``since``, and how many
        binary messages (preview images) came; a node's time runs to the next node's start or the prompt's end."""
        evs = self.events[since:]
        starts = [(t, d.get("node")) for t, kind, d in evs if kind == "executing"]
        ends = [t for t, kind, _ in evs if kind in ("execution_success", "execution_error", "execution_interrupted")]
        out = []
        for i, (t, node) in enumerate(starts):
            if node is None:
                continue
            stop = starts[i + 1][0] if i + 1 < len(starts) else (ends[0] if ends else None)
            if stop is not None:
                out.append((node, api.get(str(node), {}).get("class_type", "?"), round(stop - t, 3)))
        return out, sum(1 for _, kind, _ in evs if kind == "binary")


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--harness", required=True, help="folder with comfy_harness.py")
    ap.add_argument("--comfy", required=True, help="ComfyUI source folder (main.py)")
    ap.add_argument("--pack", required=True, help="the pack folder (repo root)")
    ap.add_argument("--models", required=True, help="models folder (symlinked as ComfyUI's models/)")
    ap.add_argument("--input", action="append", default=[], help="photo copied into ComfyUI's input/ (repeatable)")
    ap.add_argument("--second-photo", default="cat.png", help="input photo that prompt 2 re-stylises")
    ap.add_argument("--workflow", required=True, help="UI-format workflow (train_and_stylize.json, names patched)")
    ap.add_argument("--out", required=True, help="folder for summary.json and copies of the logs")
    ap.add_argument("--run-dir", help="ComfyUI base dir + logs (default: a new /tmp/comfy-accept-*)")
    ap.add_argument("--cpu", action="store_true", help="start ComfyUI with --cpu (rehearsal)")
    ap.add_argument("--tiny", action="store_true", help="shrink the Train recipe: " + json.dumps(TINY_TRAIN))
    ap.add_argument("--timeout", type=float, default=300, help="seconds allowed per prompt")
    ap.add_argument("--budget", type=float, default=360,
                    help="seconds for all prompts together (a prompt never gets more than what is left)")
    ap.add_argument("--start-timeout", type=float, default=150)
    ap.add_argument("--comfy-arg", action="append", default=[],
                    help="extra ComfyUI command-line argument, e.g. --comfy-arg=--disable-cuda-malloc (repeatable)")
    ap.add_argument("--prompts", default="1,2,3,4", help="which of the four prompts to run, e.g. 1,3,4")
    return ap.parse_args()


def main() -> int:
    args = parse_args()
    os.environ["COMFY_SRC"] = os.path.abspath(args.comfy)  # read by comfy_harness at import
    sys.path.insert(0, os.path.abspath(args.harness))
    sys.dont_write_bytecode = True
    import comfy_harness as H

    front_end = os.path.abspath(os.path.join(args.run_dir or "/tmp", "empty-frontend"))
    os.makedirs(front_end, exist_ok=True)

    class Server(H.ComfyServer):
        """The harness's server, run by this interpreter, on the GPU unless --cpu, with no web frontend package."""

        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.python = sys.executable

        def command(self):
            cmd = [c for c in super().command() if c != "--deterministic" and (args.cpu or c != "--cpu")]
            return cmd + ["--front-end-root", front_end] + args.comfy_arg

    os.makedirs(args.out, exist_ok=True)
    summary = {"mode": ("cpu" if args.cpu else "gpu") + (" tiny" if args.tiny else " full"), "prompts": [],
               "python": sys.version.split()[0]}
    server = Server(args.pack, models_dir=args.models, input_files=args.input, run_dir=args.run_dir,
                    start_timeout=args.start_timeout)
    ok_all = False
    try:
        H.banner("starting ComfyUI")
        server.start()
        summary["server_start_s"] = round(server.start_seconds, 1)
        server.check_pack_imported()
        summary["builtin_import_failures"] = server.import_report()["builtin_failed"]

        wf = H.load_workflow(args.workflow)
        api, warns = H.ui_to_api_python(wf, server.object_info)
        for w in warns:
            H.log(f"[convert] warning: {w}")
        ids = {}
        for nid, node in api.items():
            ids.setdefault(node["class_type"], []).append(nid)
        train_id, = ids["StyleMambaTrain"]
        stylize_id, = ids["StyleMambaStylize"]
        cond_id, = ids["StyleMambaTextConditioning"]
        if args.tiny:
            api[train_id]["inputs"].update(TINY_TRAIN)
        H.log(f"[run] Train inputs: { {k: v for k, v in api[train_id]['inputs'].items() if not isinstance(v, list)} }")

        second = copy.deepcopy(api)  # same style, another photo into Stylize only
        second["900"] = {"class_type": "LoadImage", "inputs": {"image": args.second_photo}}
        second[stylize_id]["inputs"]["images"] = ["900", 0]
        third = copy.deepcopy(api)   # another style prompt: trains again in the warm process
        third[cond_id]["inputs"]["style_prompt"] = SECOND_PROMPT
        fourth = copy.deepcopy(api)  # a third style prompt: trains once more in the warm process
        fourth[cond_id]["inputs"]["style_prompt"] = THIRD_PROMPT
        assert len({api[cond_id]["inputs"]["style_prompt"], SECOND_PROMPT, THIRD_PROMPT}) == 3
        prompts = [("1 train + stylise (paper recipe, cold process)", api, wf),
                   ("2 re-stylise another photo with the same style (cached)", second, None),
                   ("3 new style prompt: train + stylise (warm process)", third, None),
                   ("4 another new style prompt: train + stylise (warm process, second measurement)", fourth, None)]
        chosen = {int(n) for n in args.prompts.split(",")}
        prompts = [p for i, p in enumerate(prompts, 1) if i in chosen]
        summary["comfy_args"] = args.comfy_arg
        with open(os.path.join(server.run_dir, "api_prompt1.json"), "w") as fh:
            json.dump(api, fh, indent=1)

        client_id = str(uuid.uuid4())  # the harness submits with a fresh id: ours, so the messages reach us
        H.uuid = types.SimpleNamespace(uuid4=lambda: client_id)
        times = NodeTimes(server.base_url.replace("http://", "ws://") + f"/ws?clientId={client_id}")
        times.start()
        times.ready.wait(20)
        ok_all = True
        deadline = time.monotonic() + args.budget
        for title, prompt, ui in prompts:
            H.banner(f"prompt {title}")
            rec = {"prompt": title}
            if time.monotonic() > deadline - 10:
                H.log(f"!!! skipped: the --budget of {args.budget:.0f} s is spent")
                rec.update(ok=False, errors=["skipped: --budget spent"])
                summary["prompts"].append(rec)
                ok_all = False
                continue
            mark = len(server.read_log())
            ws_mark = len(times.events)
            try:
                entry = H.submit_and_wait(server, prompt, ui, min(args.timeout, deadline - time.monotonic()))
                rec["ok"] = H.report_history(entry, prompt)
                rec["poll_s"] = round(entry.get("_seconds", 0), 2)
                msgs = (entry.get("status") or {}).get("messages") or []
                rec["cached_nodes"] = [n for ev, d in msgs if ev == "execution_cached" for n in d.get("nodes", [])]
                rec["errors"] = [{k: d.get(k) for k in ("node_id", "node_type", "exception_type", "exception_message")}
                                 for ev, d in msgs if ev == "execution_error"]
                files = H.collect_outputs(server, entry, prompt)
                rec["outputs"] = [f"{f['class_type']}: {f['filename']} {f.get('image')}" for f in files]
            except H.HarnessError as exc:
                H.log(f"!!! prompt failed: {exc}")
                rec.update(ok=False, errors=[str(exc)])
                if server.alive():  # a timed-out prompt would still hold the queue
                    H.http("POST", server.base_url + "/interrupt", {}, timeout=20)
            time.sleep(0.5)  # let the "Prompt executed" line reach the log
            rec["node_seconds"], rec["preview_messages"] = times.node_seconds(ws_mark, prompt)
            if times.error:
                rec["node_seconds_error"] = times.error
            text = server.read_log()[mark:]
            executed = re.findall(r"Prompt executed in ([\d.]+) seconds", text)
            rec["comfy_executed_s"] = float(executed[-1]) if executed else None
            rec["pack_log"] = [line for line in text.splitlines() if PACK_LINE.search(line)][:PACK_LOG_MAX]
            st, stats = H.http("GET", server.base_url + "/system_stats", timeout=20)
            if st == 200 and isinstance(stats, dict):
                rec["devices"] = [{k: d.get(k) for k in ("name", "vram_total", "vram_free", "torch_vram_total",
                                                          "torch_vram_free")} for d in stats.get("devices", [])]
            summary["prompts"].append(rec)
            ok_all = ok_all and bool(rec.get("ok"))
    except H.HarnessError as exc:
        H.log(f"!!! FAILED: {exc}")
        summary["failure"] = str(exc)
        ok_all = False
    finally:
        server.stop()
        summary["run_dir"] = server.run_dir
        text = server.read_log()
        summary["startup_pack_log"] = [line for line in text.split("got prompt")[0].splitlines()
                                       if PACK_LINE.search(line)][:20]
        summary["tracebacks"] = len(re.findall(r"^Traceback", text, re.M))
        if os.path.exists(server.log_path):
            shutil.copy(server.log_path, os.path.join(args.out, "comfyui.log"))
        summary["ok"] = ok_all
        with open(os.path.join(args.out, "summary.json"), "w") as fh:
            json.dump(summary, fh, indent=1)

    H.banner("summary")
    H.log(f"mode {summary['mode']}; server start {summary.get('server_start_s')} s; "
          f"built-in modules that failed to import: {summary.get('builtin_import_failures')}")
    for rec in summary["prompts"]:
        H.log(f"  {'OK  ' if rec.get('ok') else 'FAIL'} {rec['prompt']}: ComfyUI 'Prompt executed in' "
              f"{rec.get('comfy_executed_s')} s (polled {rec.get('poll_s')} s); cached nodes {rec.get('cached_nodes')}")
        if rec.get("node_seconds"):
            H.log("       nodes (s): " + ", ".join(f"{c} {sec}" for _, c, sec in rec["node_seconds"])
                  + f"; {rec.get('preview_messages')} preview images sent")
        for e in rec.get("errors") or []:
            H.log(f"       error: {e}")
        for o in rec.get("outputs") or []:
            H.log(f"       output {o}")
        for d in rec.get("devices") or []:
            if d.get("vram_total"):
                H.log(f"       after it: {d['name'][:40]} {(d['vram_total'] - d['vram_free']) / 2**30:.1f} GiB used, torch "
                      f"reserved {d['torch_vram_total'] / 2**30:.1f} GiB ({d['torch_vram_free'] / 2**30:.1f} GiB of it free)")
        for line in rec.get("pack_log", []):
            H.log(f"       | {line[:220]}")
    trained = [rec for rec in summary["prompts"] if rec.get("ok") and "train" in rec["prompt"]]
    if trained and not any("memory plan" in line for rec in trained for line in rec.get("pack_log", [])):
        H.log("!!! note: no INFO line of the 'stylemamba' logger (memory plan: ...) reached ComfyUI's log")
    H.log("RESULT: PASS" if ok_all else "RESULT: FAIL")
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
