#!/usr/bin/env python3
"""Extra checks of the StyleMamba nodes in the real ComfyUI server (CPU): progress/preview/text events over
the websocket, Cancel (POST /interrupt) during training, a second queue afterwards, caching on re-queue,
the offline hf_id message, a corrupt style file's message.

    /opt/comfy-venv/bin/python extra_checks.py
"""
import asyncio
import copy
import json
import struct
import sys
import threading
import time
import uuid

sys.path.insert(0, "/work/shared/tools/comfy-acceptance")
sys.dont_write_bytecode = True
import aiohttp  # noqa: E402  (ComfyUI's venv has it)
import comfy_harness as H  # noqa: E402

PACK = "/tmp/sm-accept/ComfyUI-StyleMamba"
SMALL = "/tmp/sm-accept/small"


class Events:
    """Collects websocket events of one client in a background thread."""

    def __init__(self, url):
        self.url, self.json, self.previews, self.texts = url, [], 0, []
        self.stop = False
        self.thread = threading.Thread(target=lambda: asyncio.run(self.run()), daemon=True)
        self.thread.start()

    async def run(self):
        async with aiohttp.ClientSession() as s, s.ws_connect(self.url) as ws:
            while not self.stop:
                try:
                    msg = await asyncio.wait_for(ws.receive(), 0.5)
                except asyncio.TimeoutError:
                    continue
                if msg.type == aiohttp.WSMsgType.TEXT:
                    self.json.append(json.loads(msg.data))
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    kind = struct.unpack(">I", msg.data[:4])[0]
                    if kind in (1, 4):
                        self.previews += 1
                    elif kind == 3:
                        n = struct.unpack(">I", msg.data[4:8])[0]
                        self.texts.append(msg.data[8 + n:].decode("utf-8", "replace"))
                elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    break


def api_of(srv, name, changes=None):
    wf = json.load(open(f"{SMALL}/{name}.json"))
    api, _ = H.ui_to_api_python(wf, srv.object_info)
    for nid, node in api.items():
        for k, v in (changes or {}).get(node["class_type"], {}).items():
            node["inputs"][k] = v
    return api, wf


def submit(srv, api, client_id):
    st, resp = H.http("POST", srv.base_url + "/prompt", {"prompt": api, "client_id": client_id}, timeout=60)
    assert st == 200 and not resp.get("node_errors"), resp
    return resp["prompt_id"]


def wait(srv, pid, timeout=900):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        st, hist = H.http("GET", f"{srv.base_url}/history/{pid}", timeout=30)
        if st == 200 and pid in hist and (hist[pid].get("status") or {}).get("status_str") in ("success", "error"):
            return hist[pid], time.monotonic() - t0
        time.sleep(0.25)
    raise RuntimeError("timeout")


def messages(entry):
    return [m[0] for m in (entry.get("status") or {}).get("messages", [])]


def main():
    results = {}
    inputs = ["/tmp/sm-accept/input/example.png"]
    with H.ComfyServer(PACK, models_dir="/tmp/sm-models", input_files=inputs) as srv:
        srv.check_pack_imported()
        cid = str(uuid.uuid4())
        ev = Events(f"ws://127.0.0.1:{srv.port}/ws?clientId={cid}")
        time.sleep(1.0)

        # 1. Cancel during training: 40 epochs, interrupt once a few steps are done
        api, _ = api_of(srv, "train_and_stylize", {"StyleMambaTrain": {"epochs": 40, "seed": 1}})
        train_id = next(k for k, v in api.items() if v["class_type"] == "StyleMambaTrain")
        pid = submit(srv, api, cid)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 600:
            steps = [e for e in ev.json if e.get("type") == "progress" and e["data"].get("node") == train_id]
            if steps and steps[-1]["data"]["value"] >= 3:
                break
            time.sleep(0.25)
        t_int = time.monotonic()
        H.http("POST", srv.base_url + "/interrupt", {}, timeout=30)
        entry, _ = wait(srv, pid)
        stop_s = time.monotonic() - t_int
        progress = [e["data"]["value"] for e in ev.json if e.get("type") == "progress" and e["data"].get("node") == train_id]
        results["cancel"] = {"status": entry["status"]["status_str"], "messages": messages(entry),
                             "seconds_from_interrupt_to_stop": round(stop_s, 1), "progress_values": progress,
                             "preview_images": ev.previews, "text_lines": ev.texts[-2:]}

        # 2. A second queue right after the cancel (small run) succeeds
        api2, _ = api_of(srv, "train_and_stylize", {"StyleMambaTrain": {"seed": 2}})
        entry2, secs2 = wait(srv, submit(srv, api2, cid))
        results["second_queue"] = {"status": entry2["status"]["status_str"], "seconds": round(secs2, 1)}

        # 3. The same prompt again: Train is cached, nothing retrains
        entry3, secs3 = wait(srv, submit(srv, copy.deepcopy(api2), cid))
        cached = [m[1].get("nodes") for m in entry3["status"]["messages"] if m[0] == "execution_cached"]
        results["requeue"] = {"status": entry3["status"]["status_str"], "seconds": round(secs3, 1),
                              "cached_nodes": cached, "train_node": train_id}

        # 4. hf_id while offline: a clear message
        api4, _ = api_of(srv, "train_and_stylize", {"StyleMambaLoadTextModel": {
            "model_name": "siglip-base-patch16-224", "hf_id": "google/siglip-base-patch16-224"}})
        entry4, _ = wait(srv, submit(srv, api4, cid))
        err = [m[1] for m in entry4["status"]["messages"] if m[0] == "execution_error"]
        results["offline_hf_id"] = {"status": entry4["status"]["status_str"],
                                    "error": err and f"{err[0]['node_type']}: {err[0]['exception_message']}"}

        # 5. A corrupt style file: a clear message
        with open("/tmp/sm-models/stylemamba/broken.safetensors", "wb") as fh:
            fh.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
        try:
            api5, _ = api_of(srv, "mix_two_styles", {"StyleMambaLoadStyle": {"style_name": "broken.safetensors"}})
            st, resp = H.http("POST", srv.base_url + "/prompt", {"prompt": api5, "client_id": cid}, timeout=60)
            if st == 200 and not resp.get("node_errors"):
                entry5, _ = wait(srv, resp["prompt_id"])
                err = [m[1] for m in entry5["status"]["messages"] if m[0] == "execution_error"]
                results["corrupt_style"] = {"status": entry5["status"]["status_str"],
                                            "error": err and f"{err[0]['node_type']}: {err[0]['exception_type']}: "
                                                             f"{err[0]['exception_message']}"}
            else:
                results["corrupt_style"] = {"rejected": resp}
        finally:
            import os
            os.remove("/tmp/sm-models/stylemamba/broken.safetensors")
        ev.stop = True
        log = srv.read_log()
    results["log_lines"] = [l for l in log.splitlines() if "StyleMamba" in l or "Interrupt" in l or "interrupt" in l][:20]
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
