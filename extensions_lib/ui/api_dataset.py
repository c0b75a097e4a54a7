"""What the REST API tells of a dataset folder: a folder that is not a dataset is answered with
whether it exists, never with what it holds; a dataset with its <repeats>_<name> subfolders only."""
from pathlib import Path
from typing import Optional

from ..config import TrainConfig


def _dataset_root_verdict(folder: str, kind: str) -> Optional[str]:
    """None when `folder` is a dataset (it holds a <repeats>_<name> subfolder), else a message that
    says only whether it exists: a REST caller learns nothing about what a folder holds otherwise."""
    from ..data.folders import parse_subset_name

    root = Path(folder.strip()).expanduser()
    try:
        if not root.exists():
            return f"{kind} folder {root} does not exist; check the path"
        if not root.is_dir():
            return f"{kind} folder {root} is not a folder; give the folder that holds <repeats>_<name> subfolders"
        if any(p.is_dir() and parse_subset_name(p.name) for p in root.iterdir() if not p.name.startswith(".")):
            return None
    except OSError:
        return f"{kind} folder {root} cannot be read; check its permissions"
    return (f"{kind} folder {root} exists but is not a dataset: it has no <repeats>_<name> subfolder "
            "(e.g. '10_sks dog') with the images")


def dataset_refusal(cfg: TrainConfig, message: str) -> str:
    """A dataset error as a REST caller may see it: for a folder that is not a dataset, whether it
    exists; otherwise the scan's own message (which names only the dataset's subfolders)."""
    d = cfg.data
    for folder, kind in ((d.train_dir, "training"), (d.reg_dir or "", "regularization")):
        if folder.strip():
            verdict = _dataset_root_verdict(folder, kind)
            if verdict:
                return verdict
    return message


def rest_dataset_summary(cfg: TrainConfig) -> dict:
    """The tab's dataset summary restricted to the <repeats>_<name> subfolders: their rows and
    counts, and the problems of files inside them named relative to the dataset folder. Notes about
    anything else in the folder (other subfolders, loose files) are left out."""
    from ..train.session import scan
    from .summary import dataset_summary

    summary = dataset_summary(cfg)
    if summary["error"]:
        summary["error"] = dataset_refusal(cfg, summary["error"])
    summary["problems"] = []
    if summary["rows"]:
        try:
            data_scan = scan(cfg)
        except Exception:  # noqa: BLE001 - the folder changed since the summary; the counts stand
            return summary
        subsets = {s.path for s in data_scan.subsets}
        summary["problems"] = [f"{p.path.parent.name}/{p.path.name}: {p.reason}" for p in data_scan.problems
                               if p.path.parent in subsets]
    return summary
