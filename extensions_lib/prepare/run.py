"""The Prepare step, start to end: raw pictures in, a training folder (and class images) out.

    <dataset_dir>/<repeats>_<token> <class>/   the prepared images, each with its caption .txt
    <reg_dir>/1_<class>/                       class (regularisation) images made with the host's txt2img

One request (PrepareRequest, the same fields in the tab, REST and the CLI) is checked as a whole before
any file is written; then images, captions, the trigger word and class images run in that order. A
stop (the tab's Stop, the WebUI's Interrupt) keeps everything finished so far. Captions and class
images come from the host (the WebUI's BLIP, DeepBooru and txt2img); the standalone host refuses them
by name before anything is done.
"""
from __future__ import annotations

import random
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Optional

from PIL import Image

from ..data.images import is_image_file
from ..hosts.base import CAPTIONERS, Host, ImageRequest
from . import tags as tag_edit
from .images import (ImageOptions, PreparedImages, PrepareError, prepare_images, subset_folder_name,
                     write_atomic)

EXISTING = tag_edit.EXISTING_CAPTION_MODES
_KIND_NAMES = {str: "a text", int: "a whole number", float: "a number", bool: "true or false"}
CLASS_FOLDER_REPEATS = 1


@dataclass
class PrepareRequest:
    source_dir: str = ""           # the raw pictures (never modified)
    dataset_dir: str = ""          # the training folder the new <repeats>_<token> <class>/ goes into
    token: str = ""                # the trigger word
    class_word: str = ""           # e.g. "dog", "woman", "style"; also the class images' prompt by default
    repeats: int = 10
    width: int = 512
    height: int = 512
    mode: str = "center"           # center | focal | auto_size | keep (see ImageOptions)
    split_oversized: bool = False
    flip: bool = False
    captioner: str = ""            # "" (none) | blip | deepbooru | wd14
    existing_captions: str = "keep"   # what a caption beside a raw picture does: ignore | keep | prepend | append
    trigger_word_first: bool = True   # put the token first in every caption file
    make_class_images: bool = False
    class_images: int = -1         # how many; -1: as many as prepared training images
    class_prompt: str = ""         # default: the class word
    class_prompts_from_captions: bool = False   # each training caption, trigger word removed, as a prompt
    class_negative_prompt: str = ""
    reg_dir: str = ""              # default: <dataset_dir>/../reg
    class_steps: int = 20
    class_cfg_scale: float = 7.0
    seed: int = 1234

    @classmethod
    def from_dict(cls, values: dict) -> "PrepareRequest":
        """A request from JSON-like values, each checked against its field's type (named when wrong)."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise PrepareError(f"unknown prepare option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        for name, value in values.items():
            kind = type(known[name].default)
            fits = (isinstance(value, kind) and not (kind is int and isinstance(value, bool))
                    or kind is float and isinstance(value, int) and not isinstance(value, bool))
            if not fits:
                raise PrepareError(f"prepare.{name} = {value!r}: give {_KIND_NAMES[kind]}")
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)

    def image_options(self) -> ImageOptions:
        return ImageOptions(width=self.width, height=self.height, mode=self.mode,
                            split_oversized=self.split_oversized, flip=self.flip,
                            max_area=max(self.width * self.height, 64 * 64),
                            min_area=min(256 * 256, self.width * self.height))

    @property
    def subset_dir(self) -> Path:
        return Path(self.dataset_dir.strip()) / subset_folder_name(self.repeats, self.token.strip(),
                                                                   self.class_word.strip())

    @property
    def class_dir(self) -> Path:
        root = Path(self.reg_dir.strip()) if self.reg_dir.strip() else Path(self.dataset_dir.strip()).parent / "reg"
        return root / f"{CLASS_FOLDER_REPEATS}_{self.class_word.strip()}"


@dataclass
class PrepareReport:
    folder: Optional[Path] = None             # the prepared training images
    images: int = 0
    skipped: list = field(default_factory=list)   # [(path, reason)]
    captioned: int = 0
    class_dir: Optional[Path] = None
    class_images_made: int = 0
    class_images_reused: int = 0
    stopped: bool = False
    prepared: Optional[PreparedImages] = None     # what each source became, for preview()
    notes: list = field(default_factory=list)

    def preview(self) -> Optional[Image.Image]:
        """The grid of each picture beside what it became (drawn on request: only the tab shows it)."""
        return self.prepared.preview_grid() if self.prepared and self.prepared.outputs else None

    def summary(self) -> str:
        lines = [f"{self.images} training image(s) written to {self.folder}"]
        if self.captioned:
            lines.append(f"{self.captioned} caption(s) written")
        if self.class_dir is not None:
            lines.append(f"class images in {self.class_dir}: {self.class_images_made} made, "
                         f"{self.class_images_reused} already there")
        lines += self.notes
        if self.skipped:
            lines.append(f"{len(self.skipped)} file(s) skipped:")
            lines += [f"  {path}: {reason}" for path, reason in self.skipped]
        if self.stopped:
            lines.append("stopped: what was finished is kept")
        return "\n".join(lines)


@dataclass(frozen=True)
class CheckedRequest:
    """A request that passed check(), with the host's focal crop it was checked against."""
    req: PrepareRequest
    focal: Optional[Callable]


def check(req: PrepareRequest, host: Host) -> CheckedRequest:
    """Every refusal that needs no image work, each naming its field and the fix. The host's focal
    crop is asked for here, once, and kept for the run: the WebUI's may try to fetch its face model."""
    focal = host.focal_crop() if req.mode == "focal" else None
    if not req.source_dir.strip():
        raise PrepareError("prepare.source_dir is empty: give the folder of raw pictures")
    src = Path(req.source_dir.strip())
    if not src.is_dir():
        what = "a file, not a folder" if src.exists() else "no such folder"
        raise PrepareError(f"prepare.source_dir = {str(src)!r}: {what}; give the folder of raw pictures")
    if any(c in req.token for c in ",\n\r"):
        raise PrepareError(f"prepare.token = {req.token!r}: one word or phrase without commas (it becomes the "
                           "first tag of every caption)")
    if not req.dataset_dir.strip():
        raise PrepareError("prepare.dataset_dir is empty: give the training folder the prepared images go into "
                           "(it is what Dataset folder names when you train)")
    req.image_options().validate()
    if req.subset_dir.exists() and any(req.subset_dir.iterdir()):
        raise PrepareError(f"prepare: {req.subset_dir} already holds files and is never overwritten: pick another "
                           "token, class or repeats, or move that folder away")
    if req.captioner and req.captioner not in CAPTIONERS:
        raise PrepareError(f"prepare.captioner = {req.captioner!r}: pick one of {', '.join(CAPTIONERS)}, or none")
    if req.existing_captions not in EXISTING:
        raise PrepareError(f"prepare.existing_captions = {req.existing_captions!r}: pick one of {', '.join(EXISTING)}")
    if req.captioner:
        reason = host.captioners().get(req.captioner, "")
        if reason:
            raise PrepareError(f"prepare.captioner = {req.captioner}: {reason}")
    if req.mode == "focal" and focal is None:
        raise PrepareError("prepare.mode = focal needs the WebUI's auto focal-point crop, which this host lacks: "
                           "use center or auto_size")
    if req.make_class_images:
        if req.class_images == 0 or not -1 <= req.class_images <= 10000:
            raise PrepareError(f"prepare.class_images = {req.class_images!r}: -1 for as many as the training "
                               "images, or a count from 1 to 10000")
        if not req.class_word.strip():
            raise PrepareError("prepare.class_word is empty: class images need it (e.g. dog): it names the class "
                               "folder (1_<class>/) and is their prompt unless prepare.class_prompt is set")
        if not 1 <= req.class_steps <= 150:
            raise PrepareError(f"prepare.class_steps = {req.class_steps}: pick 1 to 150")
        if not 1.0 <= req.class_cfg_scale <= 30.0:
            raise PrepareError(f"prepare.class_cfg_scale = {req.class_cfg_scale}: pick 1 to 30")
        refusal = host.image_generation_refusal()
        if refusal:
            raise PrepareError(f"prepare.make_class_images: {refusal}")
    return CheckedRequest(req, focal)


def run_prepare(req: PrepareRequest, host: Host, *, on_status: Callable[[str], None] = lambda text: None,
                should_stop: Callable[[], bool] = lambda: False,
                checked: Optional[CheckedRequest] = None) -> PrepareReport:
    """Prepare end to end. `checked`: check(req, host) done already (the request is not checked again)."""
    if checked is None or checked.req is not req:
        checked = check(req, host)
    focal = checked.focal
    report = PrepareReport(folder=req.subset_dir)
    with ExitStack() as captioning:
        if req.captioner:
            # the captioner loads before any file is written: a model that cannot load (offline) leaves
            # nothing behind, and the same request can simply be sent again
            job = captioning.enter_context(host.prepare_job(f"Captioning with {req.captioner}", 0))
            caption = captioning.enter_context(host.captioner(req.captioner))
        result = _images(req, focal, on_status, should_stop)
        report.images, report.skipped, report.stopped = len(result.outputs), list(result.skipped), result.stopped
        report.prepared = result
        if req.captioner and not report.stopped:
            report.captioned, report.stopped = _caption(req, job, caption, result, on_status, should_stop)
    if report.stopped:
        return report
    if req.trigger_word_first:
        edited = tag_edit.add_prefix(req.subset_dir, req.token.strip())
        if edited.changed:
            report.notes.append(f"trigger word {req.token.strip()!r} put first in {len(edited.changed)} caption(s)")
    if req.make_class_images:
        _class_images(req, host, report, on_status, should_stop)
    return report


def _images(req: PrepareRequest, focal, on_status, should_stop) -> PreparedImages:
    on_status(f"Preparing images into {req.subset_dir}…")
    return prepare_images(Path(req.source_dir.strip()), req.subset_dir, req.image_options(), focal_crop=focal,
                          should_stop=should_stop, copy_captions=req.existing_captions != "ignore",
                          on_progress=lambda done, total, name: on_status(f"Preparing images… {done}/{total}"))


def _caption(req: PrepareRequest, job, caption, result: PreparedImages, on_status, should_stop) -> tuple[int, bool]:
    """Caption each prepared image (a flipped copy takes its original's caption); returns (written, stopped)."""
    made: dict[Path, str] = {}
    flips = [o for o in result.outputs if o.kind == "flip"]
    todo = [o for o in result.outputs if o.kind != "flip"]
    job.set_total(len(todo))
    written = 0
    for out in todo:
        if job.stopped() or should_stop():
            return written, True
        on_status(f"Captioning {out.path.name} ({written + 1}/{len(todo)})…")
        with Image.open(out.path) as img:
            text = caption(img.convert("RGB"))
        made[out.path] = _write_caption(out.path, text, req.existing_captions)
        written += 1
        job.advance(out.path.name)
    for out in flips:
        twin = next((o.path for o in result.outputs if o.source == out.source and o.kind != "flip"
                     and out.path.stem == f"{o.path.stem}-flipped"), None)
        if twin in made:
            _write_text(out.path.with_suffix(".txt"), made[twin])
            written += 1
    return written, False


def _write_caption(image: Path, new: str, mode: str) -> str:
    sidecar = image.with_suffix(".txt")
    existing = sidecar.read_text(encoding="utf-8-sig").strip() if sidecar.is_file() else None
    text = tag_edit.combine_caption(existing or None, new.strip(), mode)
    _write_text(sidecar, text)
    return text


def _write_text(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))


def _class_images(req: PrepareRequest, host: Host, report: PrepareReport, on_status, should_stop) -> None:
    folder = req.class_dir
    report.class_dir = folder
    wanted = report.images if req.class_images == -1 else req.class_images
    folder.mkdir(parents=True, exist_ok=True)
    have = sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))
    report.class_images_reused = min(len(have), wanted)
    missing = wanted - len(have)
    if missing <= 0:
        return
    prompts = _class_prompts(req, missing)
    rng = random.Random(req.seed)
    requests = [ImageRequest(prompt=prompt, negative_prompt=req.class_negative_prompt, width=req.width,
                             height=req.height, steps=req.class_steps, cfg_scale=req.class_cfg_scale,
                             seed=rng.randrange(2 ** 31)) for prompt in prompts]
    names = _free_names(folder, "class", missing)
    with host.prepare_job(f"Class images for {req.class_word.strip()}", missing) as job:
        for name, request, image in zip(names, requests, host.generate_images(requests, job)):
            write_atomic(folder / f"{name}.png", lambda tmp: image.save(tmp, format="PNG"))
            _write_text(folder / f"{name}.txt", request.prompt)
            report.class_images_made += 1
            on_status(f"Class images… {report.class_images_made}/{missing}")
            if should_stop():
                job.request_stop()
        report.stopped = report.class_images_made < missing


def _class_prompts(req: PrepareRequest, count: int) -> list[str]:
    """One prompt per class image: the class prompt (default: the class word), or the training captions
    in turn with the trigger word taken out (the class seen in the same scenes as the subject)."""
    plain = req.class_prompt.strip() or req.class_word.strip()
    if not req.class_prompts_from_captions:
        return [plain] * count
    token = req.token.strip().lower()
    captions = []
    for path in sorted(req.subset_dir.glob("*.txt")):
        tags = [t.strip() for t in path.read_text(encoding="utf-8-sig").split(",")]
        kept = [t for t in tags if t and t.lower() != token]
        captions.append(", ".join(dict.fromkeys([req.class_word.strip()] + kept)))
    captions = captions or [plain]
    return [captions[i % len(captions)] for i in range(count)]


def _free_names(folder: Path, prefix: str, count: int) -> list[str]:
    taken = {p.stem.lower() for p in folder.iterdir()}
    names, i = [], 1
    while len(names) < count:
        name = f"{prefix}_{i:05d}"
        if name not in taken:
            names.append(name)
        i += 1
    return names
