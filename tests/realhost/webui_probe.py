"""Test-only WebUI extension for tests/realhost (not part of the product).

Install: copy this file to <webui>/extensions/realhost_probe/scripts/probe.py and restart the WebUI. It adds:
  GET /realhost/v1/lora_keys?name=N  load Lora N with the WebUI's own built-in `networks.load_network`: the number of
                                     modules it matched, their types, and any "didn't match keys" message (the WebUI
                                     logs those only at DEBUG level)
  GET /realhost/v1/mem               VmRSS / VmHWM of the WebUI process, in bytes
"""
import logging

from modules import script_callbacks


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        try:
            self.messages.append(record.getMessage())
        except Exception:  # noqa: BLE001 - a bad log record must not break the probe
            pass


def _app_started(_demo, app):
    @app.get("/realhost/v1/lora_keys")
    def lora_keys(name: str):
        import networks  # the built-in Lora extension's module, already imported by the WebUI

        networks.list_available_networks()
        on_disk = networks.available_networks.get(name)
        if on_disk is None:
            return {"error": f"{name} is not in the WebUI's Lora list"}
        root, capture = logging.getLogger(), _Capture()
        level = root.level
        root.addHandler(capture)
        root.setLevel(logging.DEBUG)
        try:
            net = networks.load_network(name, on_disk)
        finally:
            root.removeHandler(capture)
            root.setLevel(level)
        types = {}
        for module in net.modules.values():
            types[type(module).__name__] = types.get(type(module).__name__, 0) + 1
        return {"name": name, "matched_modules": len(net.modules), "module_types": types,
                "unmatched_messages": [m[:2000] for m in capture.messages if "didn't match keys" in m]}

    @app.get("/realhost/v1/mem")
    def mem():
        out = {}
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS", "VmHWM")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0]) * 1024
        return out


script_callbacks.on_app_started(_app_started)
