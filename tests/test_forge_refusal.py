"""On Forge the tab and the REST API refuse with the reason and the way out, before any work."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_forge_gets_a_notice_tab_and_a_refusing_api(tmp_path):
    forge = tmp_path / "forge_site"
    (forge / "modules_forge").mkdir(parents=True)
    (forge / "modules_forge" / "__init__.py").write_text("")      # what marks a Forge install
    data = tmp_path / "data" / "1_sks"
    data.mkdir(parents=True)
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT / 'tests' / 'fake_webui')!r})
        sys.path.insert(0, {str(forge)!r})
        import fake_webui_control as fw
        from fastapi import FastAPI
        from fastapi.testclient import TestClient
        from modules import script_callbacks

        fw.reset({str(tmp_path / 'webui')!r}, argv=["--api"])
        fw.load_extension_scripts({str(ROOT)!r})
        [(blocks, label, elem_id)] = script_callbacks.ui_tabs_callback()
        assert (label, elem_id) == ("Trainer", "trainer_ext"), (label, elem_id)
        text = " ".join(str(getattr(b, "value", "")) for b in blocks.blocks.values())
        assert "Forge" in text and "AUTOMATIC1111 WebUI 1.10" in text, text
        assert not hasattr(blocks, "trainer_widgets")           # no training form to fill in vain

        app = FastAPI()
        script_callbacks.app_started_callback(None, app)
        r = TestClient(app).post("/trainer/v1/train", json={{"data": {{"train_dir": {str(data.parent)!r}}}}})
        assert r.status_code == 400 and "Forge" in r.json()["error"], r.text
        print("FORGE OK")
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert "FORGE OK" in r.stdout, r.stdout + r.stderr
