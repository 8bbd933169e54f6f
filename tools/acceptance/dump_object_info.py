import json, sys
sys.path.insert(0, "/work/shared/tools/comfy-acceptance"); sys.dont_write_bytecode = True
import comfy_harness as H
with H.ComfyServer("/work/main", models_dir="/tmp/sm-models", input_files=["/tmp/sm-accept/input/astronaut.png"]) as srv:
    srv.check_pack_imported()
    info = json.loads(H.http("GET", f"http://127.0.0.1:{srv.port}/object_info")[1]) if False else None
    import urllib.request
    info = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/object_info").read())
    json.dump(info, open("/tmp/sm-accept/object_info.json", "w"), indent=1)
    print(len(info), "node types")
    log = srv.read_log()
print("\n".join(l for l in log.splitlines() if "StyleMamba" in l or "stylemamba" in l.lower())[:3000])
