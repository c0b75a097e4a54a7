"""The live dataset summary: what a folder holds and how many steps a run will take."""
from __future__ import annotations

import html
from pathlib import Path

from ..config import TrainConfig

MAX_PROBLEMS_SHOWN = 12


def dataset_summary(cfg: TrainConfig) -> dict:
    """{"rows": per-subfolder dicts, "problems": [str], "totals": {...}} or {"error": message}.

    Reads image headers only, so it is quick enough to run on every edit of the folder."""
    from ..data.folders import DatasetError, scan_dataset
    from ..train.loop import plan_steps
    from ..train.session import build_dataset

    d = cfg.data
    if not d.train_dir.strip():
        return {"error": "", "rows": [], "problems": [], "totals": {}}
    try:
        scan = scan_dataset(Path(d.train_dir.strip()), d.reg_dir.strip() or None,
                            caption_extension=d.caption_extension or ".txt", check_images=False)
    except DatasetError as e:
        return {"error": str(e), "rows": [], "problems": [], "totals": {}}
    except OSError as e:
        return {"error": f"cannot read {d.train_dir}: {e}", "rows": [], "problems": [], "totals": {}}
    totals = {"images": scan.num_train_images, "reg_images": scan.num_reg_images,
              "samples_per_epoch": scan.num_train_samples}
    try:
        dataset = build_dataset(cfg, scan)
        per_epoch, total, epochs = plan_steps(cfg, dataset.steps_per_epoch())
        totals.update(steps_per_epoch=per_epoch, total_steps=total, epochs=epochs,
                      batch_size=cfg.training.train_batch_size,
                      buckets=len(dataset.bucket_counts()))
        error = ""
    except (ValueError, DatasetError) as e:
        error = str(e)
    return {"error": error, "rows": scan.summary(), "problems": [str(p) for p in scan.problems], "totals": totals}


def summary_html(summary: dict) -> str:
    esc = html.escape
    if not summary["rows"] and not summary["error"]:
        return ("<div class='trainer-ext-summary trainer-ext-muted'>Enter the folder that holds "
                "<code>&lt;repeats&gt;_&lt;name&gt;</code> subfolders, e.g. <code>10_sks dog</code>.</div>")
    parts = ["<div class='trainer-ext-summary'>"]
    if summary["error"]:
        parts.append(f"<div class='trainer-ext-error'>{esc(summary['error'])}</div>")
    rows = summary["rows"]
    if rows:
        cols = ["folder", "repeats", "images", "captions found", "captions missing", "unreadable"]
        parts.append("<table><thead><tr>" + "".join(f"<th>{esc(c)}</th>" for c in cols) + "</tr></thead><tbody>")
        for r in rows:
            cls = " class='reg'" if r["kind"] != "training" else ""
            cells = []
            for c in cols:
                v = r[c]
                warn = c in ("captions missing", "unreadable") and v
                text = esc(str(v)) + (" <small>(reg)</small>" if c == "folder" and r["kind"] != "training" else "")
                cells.append(f"<td class='warn'>{text}</td>" if warn else f"<td>{text}</td>")
            parts.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
        parts.append("</tbody></table>")
    t = summary["totals"]
    if "total_steps" in t:
        reg = f" + {t['reg_images']} regularization" if t["reg_images"] else ""
        parts.append(
            f"<div class='trainer-ext-steps'><b>{t['images']}</b> images{reg} · <b>{t['samples_per_epoch']}</b> "
            f"samples per epoch · batch {t['batch_size']} · <b>{t['steps_per_epoch']}</b> steps per epoch · "
            f"<b>{t['total_steps']}</b> steps in all ({t['epochs']} epochs)</div>")
    problems = summary["problems"]
    if problems:
        items = "".join(f"<li>{esc(p)}</li>" for p in problems[:MAX_PROBLEMS_SHOWN])
        more = (f"<li>… and {len(problems) - MAX_PROBLEMS_SHOWN} more</li>"
                if len(problems) > MAX_PROBLEMS_SHOWN else "")
        parts.append(f"<details class='trainer-ext-problems'><summary>{len(problems)} file(s) skipped or "
                     f"with problems</summary><ul>{items}{more}</ul></details>")
    parts.append("</div>")
    return "".join(parts)
