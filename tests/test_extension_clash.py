"""Another WebUI extension with a package of the same name (`extensions_lib`) must not break ours,
nor ours theirs, whichever the WebUI loads first."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _other_extension(folder: Path) -> Path:
    (folder / "scripts").mkdir(parents=True)
    (folder / "extensions_lib").mkdir()
    (folder / "extensions_lib" / "__init__.py").write_text("OWNER = 'another extension'\n")
    (folder / "scripts" / "other.py").write_text(textwrap.dedent("""
        import extensions_lib
        from modules import script_callbacks
        assert extensions_lib.OWNER == 'another extension', extensions_lib
        script_callbacks.on_ui_tabs(lambda: [(None, 'Other', 'other_tab')])
    """))
    return folder


@pytest.mark.parametrize("order", ["theirs first", "ours first"])
def test_both_extensions_load_whatever_the_order(tmp_path, order):
    other = _other_extension(tmp_path / "other")
    first, second = (other, ROOT) if order == "theirs first" else (ROOT, other)
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT / 'tests' / 'fake_webui')!r})
        import fake_webui_control as fw
        from modules import script_callbacks

        fw.reset({str(tmp_path / 'webui')!r})
        fw.load_extension_scripts({str(first)!r})
        fw.load_extension_scripts({str(second)!r})
        labels = sorted(label for _, label, _ in script_callbacks.ui_tabs_callback())
        assert labels == ['Other', 'Trainer'], labels
        assert sys.modules['extensions_lib'].OWNER == 'another extension'
        print('BOTH OK')
    """)
    # no PYTHONPATH: inside the WebUI our folder is on sys.path only while our script is imported
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert "BOTH OK" in r.stdout, r.stdout + r.stderr
