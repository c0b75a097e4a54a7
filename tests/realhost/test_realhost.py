"""Real-host acceptance suite: the extension trained and used inside a running AUTOMATIC1111 WebUI 1.10.

Everything else under tests/ runs against a fake WebUI. This folder drives a *real* WebUI over HTTP and is
skipped unless TRAINER_REALHOST_WEBUI is set.

Environment
  TRAINER_REALHOST_WEBUI   the WebUI folder (the one holding models/Lora, embeddings, models/hypernetworks). Required.
  TRAINER_REALHOST_URL     the WebUI's server, already running with --api and this extension installed
                           (default http://127.0.0.1:7860). It must have an SD1.x checkpoint loaded.
  TRAINER_REALHOST_PID     the WebUI's process id, for its RSS. Default: found in /proc (the python process whose
                           working directory is TRAINER_REALHOST_WEBUI); else read through the probe's /realhost/v1/mem.
  TRAINER_REALHOST_SUMMARY optional file: the per-method summary as JSON (rewritten after each method).
  TRAINER_REALHOST_EMBEDDING_PT=1  the embedding is saved in the WebUI's .pt format instead of .safetensors, so
                           test_pt_file_passes_the_webuis_checked_loader checks it too (the hypernetwork is always .pt).

A host: the WebUI v1.10.1 (git clone https://github.com/AUTOMATIC1111/stable-diffusion-webui, tag v1.10.1) with this
repository cloned into <webui>/extensions/ (as Extensions -> Install from URL does), an SD1.x checkpoint in
models/Stable-diffusion, started with `--api` (on a CPU-only machine also `--use-cpu all --no-half --precision full
--skip-torch-cuda-test`). A random-weight test checkpoint needs a randomised final LayerNorm in its text encoder (or
the WebUI's "emphasis" option set to "None"), else the default emphasis turns a small text-encoder change into NaN.
The module-match check needs a small test-only extension in the WebUI: copy tests/realhost/webui_probe.py to
<webui>/extensions/realhost_probe/scripts/probe.py and restart the WebUI. It adds GET /realhost/v1/lora_keys?name=N,
which loads the file with the WebUI's own Lora support and reports the modules it matched.

Run (any python with pytest and Pillow, e.g. a test venv):
  TRAINER_REALHOST_WEBUI=/path/to/webui TRAINER_REALHOST_URL=http://127.0.0.1:7860 \
      python -m pytest tests/realhost -v -s
  ... -k "lora or locon"        one or several methods: lora locon loha lokr embedding hypernetwork

Per method it trains at 128 px for a few steps over POST /trainer/v1/train, then checks: the run ends "done"; the
file is in the WebUI's folder for it and listed by /sdapi/v1/{loras,embeddings,hypernetworks} without a refresh or
restart; every module in a LoRA-family file is matched by the WebUI's Lora support; txt2img with the network at
weights 0.5, 1.0 and 1.5 succeeds (no NansException, not black) and differs from the image without it (for the
embedding: from the same prompt made before the embedding existed, `(word:0.5)` etc.); the image without it is
byte-identical to the one made before any training; the WebUI's RSS while training stays within a
per-method bound of its size just before. Files are written as rhtest_<method>_<time> and left in place. With a
full-size SD1.5 checkpoint on a busy 2-core CPU a method takes 4-9 minutes (training 25-130 s, the rest is txt2img);
the WebUI then peaks near 9 GiB, as its Lora support keeps a CPU copy of every weight a LoRA touched.
"""
import base64
import io
import json
import os
import struct
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

WEBUI = os.environ.get("TRAINER_REALHOST_WEBUI", "")
if not WEBUI:
    pytest.skip("real-host suite: set TRAINER_REALHOST_WEBUI to a WebUI folder (and TRAINER_REALHOST_URL to its "
                "server) to run it", allow_module_level=True)

from PIL import Image, ImageChops, ImageDraw, ImageStat  # noqa: E402

URL = os.environ.get("TRAINER_REALHOST_URL", "http://127.0.0.1:7860").rstrip("/")
SUMMARY_FILE = os.environ.get("TRAINER_REALHOST_SUMMARY", "")

METHODS = ["lora", "locon", "loha", "lokr", "embedding", "hypernetwork"]
LORA_FAMILY = {"lora", "locon", "loha", "lokr"}
WEIGHTS = (0.5, 1.0, 1.5)
GIB = 2 ** 30
# RSS the WebUI may gain while training, above its size just before the run (GiB). The trainer reuses the WebUI's
# weights; what it adds is activations, the network and its optimizer state (LoHa/LoKr also rebuild each layer's
# full-size update in the forward pass).
RSS_BOUND_GIB = {"lora": 1.5, "locon": 1.5, "embedding": 1.5, "hypernetwork": 1.5, "loha": 1.5, "lokr": 3.0}
RES = 128
PROMPT = "a photo of a cat on a table"
STAMP = time.strftime("%H%M%S")
TRAIN_TIMEOUT_S = 1800
PROBE_HINT = ("needs the test probe in the WebUI: copy tests/realhost/webui_probe.py to "
              "<webui>/extensions/realhost_probe/scripts/probe.py and restart the WebUI")

SUMMARY = {}


# -- HTTP -------------------------------------------------------------------------------------------
def http(method, path, body=None, timeout=900):
    """(status code, parsed JSON or text) of a request to the WebUI; never raises on an HTTP error status."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(URL + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            code, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        code, raw = e.code, e.read()
    try:
        return code, json.loads(raw)
    except ValueError:
        return code, raw[:4000].decode("utf8", "replace")


def server_up():
    try:
        return http("GET", "/sdapi/v1/options", timeout=10)[0] == 200
    except OSError:
        return False


# -- memory of the WebUI process -----------------------------------------------------------------------
def find_pid():
    if os.environ.get("TRAINER_REALHOST_PID"):
        return int(os.environ["TRAINER_REALHOST_PID"])
    want, best = os.path.realpath(WEBUI), (0, None)
    for d in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not d.isdigit():
            continue
        try:
            if os.path.realpath(f"/proc/{d}/cwd") != want:
                continue
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode("utf8", "replace")
            if "python" not in cmd or not any(s in cmd for s in ("launch.py", "webui.py")):
                continue
            rss = read_proc_rss(int(d))
        except OSError:
            continue
        if rss and rss > best[0]:
            best = (rss, int(d))
    return best[1]


def read_proc_rss(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return None


def reset_peak(pid):
    """Reset the kernel's peak-RSS counter (VmHWM) of the process; False where that is not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class RssSampler:
    """The WebUI's RSS around a block, in bytes: .before, .after, and .rise = the largest growth above the lowest
    RSS seen so far (.floor, .peak = floor + rise), from samples every 0.2 s in a thread. Measured from the running
    minimum because a training first drops the CPU backups the WebUI's Lora support keeps after a <lora:...>
    generation (GiBs): growth from there is what the training itself adds. Where /proc allows, the kernel's VmHWM
    (reset on entry) also counts when no such drop happened, so spikes between samples are not missed."""

    def __init__(self, pid, interval=0.2):
        self.pid, self.interval = pid, interval if pid else 1.0
        self.before = self.after = self.floor = self.peak = None
        self.rise = self.top = 0   # top: the highest RSS seen
        self._low = None
        self._stop = threading.Event()

    def read(self):
        try:
            if self.pid:
                return read_proc_rss(self.pid)
            code, r = http("GET", "/realhost/v1/mem", timeout=30)
        except OSError:   # the process is gone
            return None
        return r.get("VmRSS") if code == 200 and isinstance(r, dict) else None

    def _add(self, v):
        if not v:
            return
        self.top = max(self.top, v)
        self._low = v if self._low is None else min(self._low, v)
        if self.floor is None or v - self._low > self.rise:
            self.rise, self.floor = v - self._low, self._low
        self.peak = self.floor + self.rise

    def _run(self):
        while not self._stop.wait(self.interval):
            self._add(self.read())

    def __enter__(self):
        self._hwm = bool(self.pid) and reset_peak(self.pid)
        self.before = self.read()
        self._add(self.before)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.after = self.read()
        self._add(self.after)
        if self._hwm and self.before and self._low and self._low > self.before - GIB // 4:
            try:
                hwm = read_proc_rss(self.pid, "VmHWM") or 0
            except OSError:
                hwm = 0
            self.top = max(self.top, hwm)
            if hwm - self.before > self.rise:
                self.rise, self.floor, self.peak = hwm - self.before, self.before, hwm


# -- images ------------------------------------------------------------------------------------------
def txt2img(prompt, seed=1234):
    """{"code", "png", "image", "error", "seconds"} of one 128 px, 2-step Euler generation."""
    body = {"prompt": prompt, "negative_prompt": "", "seed": seed, "steps": 2, "width": RES, "height": RES,
            "cfg_scale": 7, "sampler_name": "Euler", "batch_size": 1, "n_iter": 1, "send_images": True,
            "save_images": False}
    t0 = time.time()
    try:
        code, r = http("POST", "/sdapi/v1/txt2img", body)
    except OSError as e:
        code, r = None, f"{URL} stopped answering (killed? see the WebUI's log): {e!r}"
    out = {"prompt": prompt, "code": code, "seconds": round(time.time() - t0, 1), "png": None, "image": None,
           "error": None}
    if code == 200 and isinstance(r, dict) and r.get("images"):
        out["png"] = base64.b64decode(r["images"][0])
        out["image"] = Image.open(io.BytesIO(out["png"])).convert("RGB")
    else:
        out["error"] = json.dumps(r)[:2000] if isinstance(r, dict) else str(r)[:2000]
    return out


def verdict(img):
    """'finite', 'NaN' (NansException, or the black image --disable-nan-check gives) or 'error'."""
    if img["image"] is not None:
        return "NaN" if max(hi for _, hi in img["image"].getextrema()) == 0 else "finite"
    err = img["error"] or ""
    return "NaN" if img["code"] and ("NansException" in err or "NaN" in err) else "error"


def mean_abs_diff(a, b):
    return round(sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) / 3, 3)


# -- files -------------------------------------------------------------------------------------------
def safetensors_modules(path):
    """Module names (the part of each key before the first '.') in a safetensors file; stdlib only."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    return sorted({k.split(".", 1)[0] for k in header if k != "__metadata__"})


def make_dataset(folder):
    """Four 128 px pictures of a red shape on varied backgrounds, captioned, in <folder>/4_rhsubject."""
    sub = os.path.join(folder, "4_rhsubject")
    os.makedirs(sub, exist_ok=True)
    backgrounds = [(240, 230, 200), (90, 140, 200), (60, 160, 90), (200, 200, 210)]
    for i, bg in enumerate(backgrounds):
        img = Image.new("RGB", (RES, RES), bg)
        d = ImageDraw.Draw(img)
        for y in range(0, RES, 16):
            d.line([(0, y), (RES, y + 8 * i)], fill=tuple(max(0, c - 40) for c in bg), width=3)
        box = (20 + 6 * i, 24, 100 - 4 * i, 108)
        (d.ellipse if i % 2 else d.rectangle)(box, fill=(200, 40, 40), outline=(20, 20, 20), width=3)
        img.save(os.path.join(sub, f"{i:03d}.png"))
        with open(os.path.join(sub, f"{i:03d}.txt"), "w") as f:
            f.write(f"a photo of rhsubject, red {'circle' if i % 2 else 'box'}")
    return folder


def train_config(method, name, data_dir):
    steps, lr = {"lora": (10, 1e-3), "embedding": (8, 5e-3)}.get(method, (6, 1e-3))
    cfg = {"data": {"train_dir": data_dir, "resolution": RES, "min_bucket_reso": 64, "max_bucket_reso": 2 * RES},
           "network": {"method": method, "dim": 8, "alpha": 8, "conv_dim": 4, "conv_alpha": 4},
           "training": {"max_train_steps": steps, "learning_rate": lr, "seed": 7},
           "sample": {"prompts": []},
           "output": {"name": name, "trigger_words": "rhsubject"}}
    if method == "embedding":
        cfg["embedding"] = {"token": name, "init_text": "cat", "num_vectors": 2,
                            "save_pt": os.environ.get("TRAINER_REALHOST_EMBEDDING_PT") == "1"}
    return cfg


def prompt_at(method, name, weight):
    if method in LORA_FAMILY:
        return f"{PROMPT} <lora:{name}:{weight}>"
    if method == "hypernetwork":
        return f"{PROMPT} <hypernet:{name}:{weight}>"
    return f"{PROMPT}, {name}" if weight == 1.0 else f"{PROMPT}, ({name}:{weight})"   # embedding: attention weight


def write_summary():
    if SUMMARY_FILE:
        with open(SUMMARY_FILE, "w") as f:
            json.dump(SUMMARY, f, indent=1)


# -- fixtures ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def host(tmp_path_factory, pytestconfig):
    if not os.path.isdir(os.path.join(WEBUI, "models")):
        pytest.fail(f"TRAINER_REALHOST_WEBUI={WEBUI} is not a WebUI folder (no models/ in it)")
    if not server_up():
        pytest.fail(f"no WebUI answers at {URL} (TRAINER_REALHOST_URL); start it with --api")
    code, default = http("GET", "/trainer/v1/config/default")
    if code != 200:
        pytest.fail(f"GET {URL}/trainer/v1/config/default -> {code}: the extension is not installed in this WebUI "
                    f"or its API is off ({str(default)[:200]})")
    pid = find_pid()
    pytestconfig._realhost_summary = SUMMARY
    before = txt2img(PROMPT)
    assert before["code"] == 200, f"txt2img without any network failed: {before['error']}"
    repeat = txt2img(PROMPT)
    assert repeat["png"] == before["png"], \
        "two identical txt2img requests gave different PNGs: the byte-identical checks would mean nothing"
    idle = RssSampler(pid).read()
    SUMMARY["_host"] = {"url": URL, "pid": pid, "idle_rss_gib": round(idle / GIB, 2) if idle else None,
                        "baseline_seconds": before["seconds"]}
    write_summary()
    return {"pid": pid, "data": make_dataset(str(tmp_path_factory.mktemp("realhost_data"))), "before": before}


@pytest.fixture(scope="module", params=METHODS)
def run(request, host):
    """Train one method over REST (the fixture is shared by every check of that method)."""
    method = request.param
    if not server_up():
        pytest.fail(f"the WebUI at {URL} stopped answering (killed, e.g. for memory? see its log)")
    name = f"rhtest{STAMP}{method}" if method == "embedding" else f"rhtest_{method}_{STAMP}"
    rec = {"method": method, "name": name, "images": {}}
    s = SUMMARY[method] = {"name": name}
    if method == "embedding":   # the same prompts while the word is still plain text: what the embedding must change
        rec["reference"] = {w: txt2img(prompt_at(method, name, w)) for w in WEIGHTS}
    else:                       # the network's tag leaves the prompt: the image without it
        rec["reference"] = {w: host["before"] for w in WEIGHTS}
    t0 = time.time()
    with RssSampler(host["pid"]) as mem:
        try:
            code, r = http("POST", "/trainer/v1/train", train_config(method, name, host["data"]))
        except OSError as e:
            code, r = None, f"{URL} stopped answering: {e!r}"
        rec["post"] = (code, r)
        st, timeline, last = {}, [], None
        if code == 200:
            job_id = r["job_id"]
            while time.time() - t0 < TRAIN_TIMEOUT_S:
                try:
                    c, st = http("GET", "/trainer/v1/status?losses=false", timeout=60)
                except OSError as e:   # the WebUI went away (killed for memory, crashed)
                    st = {"state": "webui gone", "error": f"{URL} stopped answering: {e!r}"}
                    break
                now = (st.get("state"), st.get("step"))
                if now != last:   # RSS at each state / step change: where a peak happens
                    rss = mem.read()
                    timeline.append([round(time.time() - t0, 1), *now, round(rss / GIB, 2) if rss else None])
                    last = now
                if c == 200 and st.get("job_id") == job_id and st.get("state") in ("done", "stopped", "error"):
                    break
                time.sleep(1)
    rec["status"] = st
    rec["seconds"] = round(time.time() - t0, 1)
    rec["mem"] = mem
    s.update(state=st.get("state") if code == 200 else f"HTTP {code}", train_seconds=rec["seconds"],
             steps=st.get("step"), idle_rss_gib=round(mem.before / GIB, 2) if mem.before else None,
             floor_rss_gib=round(mem.floor / GIB, 2) if mem.floor else None,
             peak_rss_gib=round(mem.peak / GIB, 2) if mem.peak else None,
             extra_rss_gib=round(mem.rise / GIB, 2) if mem.peak else None,
             rss_after_gib=round(mem.after / GIB, 2) if mem.after else None, error=st.get("error"),
             rss_timeline_s_state_step_gib=timeline)
    write_summary()
    return rec


def require_trained(run):
    if not server_up():
        pytest.fail(f"the WebUI at {URL} stopped answering (killed, e.g. for memory? see its log)")
    st = run["status"]
    if run["post"][0] != 200 or st.get("state") != "done":
        pytest.fail(f"{run['method']} did not train (see test_trains), so this check cannot run")


# -- checks, in order per method ------------------------------------------------------------------------
def test_trains(run):
    code, r = run["post"]
    assert code == 200, f"POST /trainer/v1/train -> {code}: {r}"
    st = run["status"]
    assert st.get("state") == "done", (f"state {st.get('state')!r} after {run['seconds']} s, error: {st.get('error')}"
                                       f"\nlog tail: {(st.get('log') or [])[-15:]}")
    assert st.get("step") == st.get("total_steps"), st


def test_file_lands_in_webui_folder(run):
    require_trained(run)
    folder = {"embedding": "embeddings", "hypernetwork": os.path.join("models", "hypernetworks")}.get(
        run["method"], os.path.join("models", "Lora"))
    out = run["status"].get("output_path") or ""
    assert os.path.isfile(out), f"output_path {out!r} is not a file"
    assert os.path.dirname(os.path.realpath(out)) == os.path.realpath(os.path.join(WEBUI, folder)), \
        f"{out} is not in the WebUI's {folder}"
    assert os.path.basename(out).split(".")[0] == run["name"], out
    run["file"] = out
    SUMMARY[run["method"]]["file"] = os.path.relpath(out, WEBUI)


def test_listed_without_restart(run):
    require_trained(run)
    method, name = run["method"], run["name"]
    if method in LORA_FAMILY:
        code, items = http("GET", "/sdapi/v1/loras")
        listed = [x for x in items if x.get("name") == name] if code == 200 else []
    elif method == "embedding":
        code, items = http("GET", "/sdapi/v1/embeddings")
        assert code == 200, items
        assert name not in items.get("skipped", {}), f"the WebUI skipped the embedding: {items['skipped'][name]}"
        listed = [items["loaded"][name]] if name in items.get("loaded", {}) else []
        if listed:
            assert listed[0].get("vectors") == 2 and listed[0].get("shape") == 768, listed[0]
    else:
        code, items = http("GET", "/sdapi/v1/hypernetworks")
        listed = [x for x in items if x.get("name") == name] if code == 200 else []
    SUMMARY[method]["listed"] = bool(listed)
    assert listed, f"{name} is not listed by the WebUI without a refresh (HTTP {code})"


def test_all_modules_matched(run):
    require_trained(run)
    if run["method"] not in LORA_FAMILY:
        pytest.skip("modules are a LoRA-family notion; the embedding and hypernetwork are checked by use")
    code, r = http("GET", "/realhost/v1/lora_keys?name=" + urllib.parse.quote(run["name"]), timeout=600)
    if code == 404 and "detail" in str(r):
        pytest.fail(f"GET /realhost/v1/lora_keys -> 404: {PROBE_HINT}")
    assert code == 200 and "matched_modules" in r, f"probe -> {code}: {r}"
    in_file = safetensors_modules(run["status"]["output_path"])
    SUMMARY[run["method"]]["modules_matched"] = f"{r['matched_modules']}/{len(in_file)}"
    SUMMARY[run["method"]]["module_types"] = r.get("module_types")
    assert not r.get("unmatched_messages"), f"the WebUI did not match some keys: {r['unmatched_messages']}"
    assert r["matched_modules"] == len(in_file), \
        f"the WebUI matched {r['matched_modules']} of the {len(in_file)} modules in the file"


def test_pt_file_passes_the_webuis_checked_loader(run):
    """A .pt is read by the WebUI through modules/safe.py (a restricted unpickler): the hypernetwork and a .pt
    embedding must load through the WebUI's own loaders with that check on. (Elsewhere in tests/ the check is
    a re-implementation; here it is the real one.)"""
    require_trained(run)
    method, out = run["method"], run["status"].get("output_path") or ""
    if method not in ("embedding", "hypernetwork"):
        pytest.skip("LoRA-family files are .safetensors: no pickle to check")
    if not out.endswith(".pt"):
        pytest.skip("the embedding was saved as .safetensors (the default); TRAINER_REALHOST_EMBEDDING_PT=1 saves .pt")
    code, r = http("GET", "/realhost/v1/load_pt?" + urllib.parse.urlencode({"kind": method, "path": out}), timeout=600)
    if code == 404 and "detail" in str(r):
        pytest.fail(f"GET /realhost/v1/load_pt -> 404: {PROBE_HINT}")
    assert code == 200, f"probe -> {code}: {r}"
    SUMMARY[method]["webui_pt_load"] = r
    assert r.get("checked"), "the WebUI runs with --disable-safe-unpickle: its check was not applied, restart it without"
    assert not r.get("error"), f"the WebUI could not load {out}: {r['error']}"
    if method == "embedding":
        assert r["vectors"] == 2 and r["shape"] == 768, r
    else:
        assert r["sizes"] and r["layer_structure"][0] == r["layer_structure"][-1] == 1, r


def test_images_at_weights(run, host):
    require_trained(run)
    method = run["method"]
    problems, verdicts, changed = [], {}, {}
    with RssSampler(host["pid"]) as mem:   # for the record: the WebUI itself keeps backups of LoRA'd weights
        for w in WEIGHTS:
            img = txt2img(prompt_at(method, run["name"], w))
            run["images"][w] = img
            verdicts[str(w)] = verdict(img)
            if verdicts[str(w)] != "finite":
                problems.append(f"weight {w}: {verdicts[str(w)]} ({img['error'] or 'black image'})")
                continue
            ref = run["reference"][w]
            if ref["image"] is None:
                problems.append(f"weight {w}: no reference image: {ref['error']}")
                continue
            changed[str(w)] = mean_abs_diff(img["image"], ref["image"])
            if ImageChops.difference(img["image"], ref["image"]).getbbox() is None:
                problems.append(f"weight {w}: the image is identical to the one without the {method}")
    if mem.top:
        SUMMARY[method]["peak_rss_txt2img_gib"] = round(mem.top / GIB, 2)
    SUMMARY[method]["images"] = verdicts
    SUMMARY[method]["mean_abs_diff_vs_without"] = changed
    write_summary()
    assert not problems, "; ".join(problems)


def test_image_without_network_unchanged(run, host):
    require_trained(run)
    after = txt2img(PROMPT)
    same = after["png"] is not None and after["png"] == host["before"]["png"]
    SUMMARY[run["method"]]["without_network_byte_identical"] = same
    write_summary()
    assert after["code"] == 200, after["error"]
    assert same, ("the image without the network differs from the one made before any training "
                  f"(mean abs diff {mean_abs_diff(after['image'], host['before']['image'])})")


def test_rss_stays_near_idle(run):
    require_trained(run)
    mem = run["mem"]
    if not mem.peak:
        pytest.skip("no RSS reading: set TRAINER_REALHOST_PID or install the probe (/realhost/v1/mem)")
    bound = RSS_BOUND_GIB[run["method"]]
    extra = mem.rise / GIB
    assert extra <= bound, (f"the WebUI grew by {extra:.2f} GiB while training {run['method']} "
                            f"(from {mem.floor / GIB:.2f} to {mem.peak / GIB:.2f} GiB; {mem.before / GIB:.2f} GiB "
                            f"before the run); bound {bound} GiB")
