"""The "Prepare dataset" step of the Trainer tab: raw pictures -> a training folder, its captions and
class images (prepare/run.py does the work), then tag editing on the captions (prepare/tags.py).

PrepareHandlers holds one plain method per button, a function of the form's values, so tests call
them without a browser; `build_prepare` makes the widgets inside the caller's Blocks and wires them.
"""
from __future__ import annotations

import html
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..errors import user_error_types
from ..hosts.base import CAPTIONERS, Host
from ..prepare import tags as tag_edit
from ..prepare.images import MODES, PrepareError
from ..prepare.run import EXISTING, PrepareRequest
from . import compat
from .compat import gr
from .prepare_job import PrepareBusyError, PrepareJob

ELEM = "trainer_ext_prepare"
NO_API = {"api_name": False}
NONE = "none"
# the request fields the form sets, in the order the Prepare button sends them
FORM_KEYS = ("source_dir", "dataset_dir", "token", "class_word", "repeats", "width", "height", "mode",
             "split_oversized", "flip", "captioner", "existing_captions", "trigger_word_first", "make_class_images",
             "class_images", "class_prompt", "class_prompts_from_captions", "class_negative_prompt", "reg_dir",
             "class_steps", "class_cfg_scale")
_INTS = ("repeats", "width", "height", "class_images", "class_steps")


def _message(text: str, ok: Optional[bool]) -> str:
    """ok True/False: the end of an action, in the tab's ok/error colours; None: a running message."""
    kind = "running" if ok is None else "ok" if ok else "error"
    # trainer-ext-*: the tab's own message colours (style.css); trainer-*: what tests look for
    return (f'<div class="trainer-ext-{kind} trainer-{kind}" id="{ELEM}_msg_{kind}">'
            f'<pre style="white-space: pre-wrap; overflow-wrap: anywhere">{html.escape(text)}</pre></div>')


class PrepareHandlers:
    def __init__(self, host: Host, job: Optional[PrepareJob] = None):
        self.host = host
        self.job = job or PrepareJob()      # shared with REST where the caller passes one
        self.poll_seconds = 0.5             # how often the running message is read while Prepare waits

    def captioner_choices(self) -> tuple[list[str], str]:
        """(choices, note): every captioner is listed; the note says why one cannot be used here."""
        missing = {name: why for name, why in self.host.captioners().items() if why}
        if len(missing) == 1:
            note = next(iter(missing.values()))
        elif missing:
            note = f"not available here: {', '.join(missing)} (Prepare with one says why)"
        else:
            note = ""
        return [NONE] + list(CAPTIONERS), note

    def request(self, values) -> PrepareRequest:
        form = dict(zip(FORM_KEYS, values))
        for key in _INTS:
            value = form[key]
            if value is None or value == "":
                raise PrepareError(f"prepare.{key} is empty: give a whole number")
            if float(value) != int(float(value)):
                raise PrepareError(f"prepare.{key} = {value}: give a whole number")
            form[key] = int(float(value))
        form["captioner"] = "" if form["captioner"] in (None, NONE) else form["captioner"]
        if form["class_cfg_scale"] is None or form["class_cfg_scale"] == "":
            raise PrepareError("prepare.class_cfg_scale is empty: give a number, e.g. 7")
        form["class_cfg_scale"] = float(form["class_cfg_scale"])
        for key in ("source_dir", "dataset_dir", "token", "class_word", "class_prompt", "class_negative_prompt",
                    "reg_dir"):
            form[key] = (form[key] or "").strip()
        return PrepareRequest.from_dict(form)

    def prepare(self, *values):
        """Yields (message html, preview image, tag folder, then the Train step's dataset folder,
        regularisation folder and resolution): the job's progress while it runs, then its result."""
        keep = compat.no_change()
        try:
            req = self.request(values)
            run = self.job.start(req, self.host)
        except PrepareBusyError:
            yield (_message("A preparation is already running (here or over the REST API): wait for it or "
                            "press Stop.", False),) + (keep,) * 5
            return
        except user_error_types() as e:
            yield (_message(str(e), False),) + (keep,) * 5
            return
        shown = None
        while (status := self.job.result(run)[0])["state"] == "running":
            if status["message"] != shown:
                shown = status["message"]
                yield (_message(shown, None),) + (keep,) * 5
            time.sleep(self.poll_seconds)
        status, report = self.job.result(run)
        if report is None:
            yield (_message(status["error"] or status["message"], False),) + (keep,) * 5
            return
        reg = str(report.class_dir.parent) if report.class_dir else keep
        # the size the images were made at is the size to train at (the long side, for keep)
        resolution = max(req.width, req.height)
        text = report.summary() + (f"\n\nThe Train step's Dataset folder now points at it, resolution {resolution}.")
        yield (_message(text, not report.stopped), report.preview(), str(report.folder),
               req.dataset_dir, reg, resolution)

    def stop(self) -> str:
        self.job.stop()
        return _message("Stopping after the current image; what is finished is kept.", True)

    # -- tags -------------------------------------------------------------------------------------
    def tags(self, folder: str):
        """(table rows, message)."""
        try:
            rows = [[tag, count] for tag, count in tag_edit.tag_frequency(self._folder(folder))]
        except user_error_types() as e:
            return [], _message(str(e), False)
        return rows or [["", 0]], _message(f"{len(rows)} different tag(s)", True)

    def edit(self, folder: str, action: str, tags_text: str, into: str):
        """Merge / replace / remove / prefix on every caption file of the folder; (rows, message)."""
        try:
            where = self._folder(folder)
            tags = [t.strip() for t in (tags_text or "").split(",") if t.strip()]
            if action == "merge into":
                report = tag_edit.merge_tags(where, tags, (into or "").strip())
            elif action == "remove":
                report = tag_edit.remove_tags(where, tags)
            elif action == "put first":
                report = tag_edit.add_prefix(where, (into or "").strip())
            else:
                raise PrepareError(f"prepare.tag_action = {action!r}: pick merge into, remove or put first")
        except user_error_types() as e:
            return compat.no_change(), _message(str(e), False)
        rows, _ = self.tags(folder)
        return rows, _message(f"{len(report.changed)} caption file(s) changed, {report.unchanged} left as they were",
                              True)

    @staticmethod
    def _folder(folder: str) -> Path:
        if not (folder or "").strip():
            raise PrepareError("prepare.tag_folder is empty: prepare a dataset first, or give a folder of images "
                               "with caption .txt files")
        path = Path(folder.strip())
        if not path.is_dir():
            raise PrepareError(f"prepare.tag_folder = {str(path)!r}: no such folder")
        return path


@dataclass
class PrepareLayout:
    inputs: list
    prepare: Any
    stop: Any
    message: Any
    preview: Any
    tag_folder: Any
    tag_table: Any
    show_tags: Any
    tag_action: Any
    tag_list: Any
    tag_into: Any
    apply_tags: Any
    tag_message: Any


def build_prepare(host: Host, job: Optional[PrepareJob] = None) -> tuple[PrepareLayout, PrepareHandlers]:
    """The widgets, inside the caller's Blocks, with their events except Prepare's (connect_prepare:
    it also fills fields of the Train step, which may be built later)."""
    h = PrepareHandlers(host, job)
    choices, note = h.captioner_choices()
    d = PrepareRequest()
    text = lambda key, label, **kw: compat.make(gr.Textbox, label=label, value=getattr(d, key), max_lines=1,  # noqa
                                                elem_id=f"{ELEM}_{key}", **kw)
    number = lambda key, label, **kw: compat.make(gr.Number, label=label, value=getattr(d, key), precision=0,  # noqa
                                                  elem_id=f"{ELEM}_{key}", **kw)
    gr.Markdown("Turn a folder of raw pictures into a training folder `<repeats>_<token> <class>/`, with captions "
                "and class images. The pictures themselves are never changed.")
    with gr.Row():
        source = text("source_dir", "Raw pictures folder", placeholder="/path/to/raw pictures")
        dataset = text("dataset_dir", "Training folder (the Dataset folder to train on)",
                       placeholder="/path/to/dataset")
    with gr.Row():
        token = text("token", "Trigger word", placeholder="e.g. sks")
        class_word = text("class_word", "Class", placeholder="e.g. dog, woman, style")
        repeats = number("repeats", "Repeats")
    with gr.Row():
        width, height = number("width", "Width"), number("height", "Height")
        mode = compat.make(gr.Radio, choices=list(MODES), value=d.mode, label="Crop",
                           info="center; focal: the WebUI's auto focal-point crop; auto_size: best size for the "
                                "aspect; keep: keep the aspect (buckets)", elem_id=f"{ELEM}_mode")
        split = compat.make(gr.Checkbox, value=d.split_oversized, label="Split oversized images",
                            elem_id=f"{ELEM}_split_oversized")
        flip = compat.make(gr.Checkbox, value=d.flip, label="Add flipped copies", elem_id=f"{ELEM}_flip")
    with gr.Row():
        captioner = compat.make(gr.Dropdown, choices=choices, value=NONE, label="Caption with",
                                info=note or "the WebUI's own interrogators", elem_id=f"{ELEM}_captioner")
        existing = compat.make(gr.Radio, choices=list(EXISTING), value=d.existing_captions,
                               label="Captions already beside the pictures", elem_id=f"{ELEM}_existing_captions")
        first = compat.make(gr.Checkbox, value=d.trigger_word_first, label="Trigger word first in every caption",
                            elem_id=f"{ELEM}_trigger_word_first")
    with compat.make(gr.Accordion, label="Class images (regularisation)", open=False,
                     elem_id=f"{ELEM}_class_box"):
        with gr.Row():
            make_class = compat.make(gr.Checkbox, value=d.make_class_images, label="Make class images",
                                     elem_id=f"{ELEM}_make_class_images")
            class_images = number("class_images", "How many (-1: as many as the training images)")
            from_captions = compat.make(gr.Checkbox, value=d.class_prompts_from_captions,
                                        label="Prompts from the training captions (trigger word removed)",
                                        elem_id=f"{ELEM}_class_prompts_from_captions")
        with gr.Row():
            class_prompt = text("class_prompt", "Prompt (default: the class)")
            class_negative = text("class_negative_prompt", "Negative prompt")
            reg = text("reg_dir", "Folder (default: reg/ beside the training folder)")
        with gr.Row():
            class_steps = number("class_steps", "Sampling steps")
            class_cfg = compat.make(gr.Number, label="CFG scale", value=d.class_cfg_scale,
                                    elem_id=f"{ELEM}_class_cfg_scale")
    with gr.Row():
        prepare = compat.make(gr.Button, value="Prepare", variant="primary", elem_id=f"{ELEM}_start")
        stop = compat.make(gr.Button, value="Stop", variant="stop", elem_id=f"{ELEM}_stop")
    message = gr.HTML("", elem_id=f"{ELEM}_message")
    preview = compat.make(gr.Image, value=None, type="pil", label="What each picture became", interactive=False,
                          elem_id=f"{ELEM}_preview", show_share_button=False, height=420)
    with compat.make(gr.Accordion, label="Edit tags", open=True, elem_id=f"{ELEM}_tags"):
        with gr.Row():
            tag_folder = compat.make(gr.Textbox, label="Folder of captioned images", max_lines=1,
                                     elem_id=f"{ELEM}_tag_folder", scale=4)
            show_tags = compat.make(gr.Button, value="Show tags", elem_id=f"{ELEM}_show_tags", scale=1)
        tag_table = compat.make(gr.Dataframe, headers=["tag", "files"], datatype=["str", "number"],
                                value=[["", 0]], interactive=False, elem_id=f"{ELEM}_tag_table")
        with gr.Row():
            tag_action = compat.make(gr.Radio, choices=["merge into", "remove", "put first"], value="merge into",
                                     label="Edit", elem_id=f"{ELEM}_tag_action")
            tag_list = compat.make(gr.Textbox, label="Tags (comma-separated)", placeholder="1boy, facial hair",
                                   max_lines=1, elem_id=f"{ELEM}_tag_list")
            tag_into = compat.make(gr.Textbox, label="Into / tag to put first", placeholder="sks", max_lines=1,
                                   elem_id=f"{ELEM}_tag_into")
            apply_tags = compat.make(gr.Button, value="Apply to every caption", elem_id=f"{ELEM}_apply_tags")
        tag_message = gr.HTML("", elem_id=f"{ELEM}_tag_message")

    inputs = [source, dataset, token, class_word, repeats, width, height, mode, split, flip, captioner, existing,
              first, make_class, class_images, class_prompt, from_captions, class_negative, reg, class_steps,
              class_cfg]
    ui = PrepareLayout(inputs=inputs, prepare=prepare, stop=stop, message=message, preview=preview,
                       tag_folder=tag_folder, tag_table=tag_table, show_tags=show_tags, tag_action=tag_action,
                       tag_list=tag_list, tag_into=tag_into, apply_tags=apply_tags, tag_message=tag_message)
    stop.click(h.stop, inputs=[], outputs=[message], queue=False, **NO_API)
    show_tags.click(h.tags, inputs=[tag_folder], outputs=[tag_table, tag_message], **NO_API)
    apply_tags.click(h.edit, inputs=[tag_folder, tag_action, tag_list, tag_into], outputs=[tag_table, tag_message],
                     **NO_API)
    return ui, h


def connect_prepare(ui: PrepareLayout, h: PrepareHandlers, *, train_dir, reg_dir, resolution) -> None:
    """Prepare fills the Train step's dataset and class folders and its resolution when it ends."""
    ui.prepare.click(h.prepare, inputs=ui.inputs,
                     outputs=[ui.message, ui.preview, ui.tag_folder, train_dir, reg_dir, resolution], **NO_API)
