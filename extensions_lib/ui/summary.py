"""The live dataset summary: what a folder holds and how many steps a run will take."""
from __future__ import annotations

import html

from ..config import TrainConfig

MAX_PROBLEMS_SHOWN = 12


def dataset_summary(cfg: TrainConfig) -> dict:
    """{"rows": per-subfolder dicts, "problems": [str], "totals": {...}} or {"error": message}.

    The run's own scan (train.session.scan): every image is decoded once per change of the file and
    remembered, so the numbers here are the run's, a damaged image is listed as skipped here already,
    and editing the form again costs nothing. "problems" names every skipped file and every caption
    file without an image, with the reason."""
    from ..data.folders import DatasetError
    from ..train.loop import plan_steps
    from ..train.session import build_dataset, scan as scan_for

    d = cfg.data
    if not d.train_dir.strip():
        return {"error": "", "rows": [], "problems": [], "totals": {}}
    try:
        scan = scan_for(cfg)
    except DatasetError as e:
        return {"error": str(e), "rows": [], "problems": [], "totals": {}}
    except OSError as e:
        return {"error": f"cannot read {d.train_dir}: {e}", "rows": [], "problems": [], "totals": {}}
    totals = {"images": scan.num_train_images, "reg_images": scan.num_reg_images,
              "samples_per_epoch": scan.num_train_samples, "skipped": len(scan.skipped),
              "orphan_captions": len(scan.orphan_captions)}
    try:
        dataset = build_dataset(cfg, scan)
        per_epoch, total, epochs = plan_steps(cfg, dataset.steps_per_epoch())
        totals.update(steps_per_epoch=per_epoch, total_steps=total, epochs=epochs,
                      batch_size=cfg.training.train_batch_size,
                      buckets=len(dataset.bucket_counts()))
        error = ""
    except (ValueError, DatasetError) as e:
        error = str(e)
    return {"error": error, "rows": scan.summary(), "problems": scan.report(limit=len(scan.problems))[1:],
            "totals": totals}


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
        cols = ["folder", "repeats", "images", "captions found", "captions missing", "unreadable",
                "captions without image"]
        parts.append("<table><thead><tr>" + "".join(f"<th>{esc(c)}</th>" for c in cols) + "</tr></thead><tbody>")
        for r in rows:
            cls = " class='reg'" if r["kind"] != "training" else ""
            cells = []
            for c in cols:
                v = r[c]
                warn = c in ("captions missing", "unreadable", "captions without image") and v
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
        counts = [f"{t[k]} {label}" for k, label in (("skipped", "file(s) skipped"),
                                                     ("orphan_captions", "caption file(s) without an image"))
                  if t.get(k)]
        title = ", ".join(counts) or f"{len(problems)} note(s) about the files"
        parts.append(f"<details class='trainer-ext-problems'{' open' if counts else ''}><summary>{esc(title)}"
                     f"</summary><ul>{items}{more}</ul></details>")
    parts.append("</div>")
    return "".join(parts)
