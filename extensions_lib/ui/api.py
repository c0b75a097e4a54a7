"""REST API under /trainer/v1, added to the WebUI's (or the standalone server's) FastAPI app.

Bodies are plain JSON read with `await request.json()` so the same code runs on fastapi 0.94 /
pydantic 1 (AUTOMATIC1111) and current fastapi / pydantic 2 (Forge).

    POST /trainer/v1/train           body: TrainConfig as nested sections -> 200 {"job_id", "status"}
                                     422 {"error", "problems": [{field, value, allowed}]}  bad config
                                     400 {"error"}  dataset / host refused;  409 {"error"}  busy or output exists
    GET  /trainer/v1/status          -> the job's status (add ?losses=false to leave the loss list out)
    POST /trainer/v1/stop            -> {"stopping": bool, "status"}
    GET  /trainer/v1/config/default  -> the default TrainConfig as JSON (a template for /train)
    POST /trainer/v1/dataset         body: config (only data.* and training.* matter) -> dataset summary:
                                     counts per <repeats>_<name> subfolder; a folder that is not a dataset
                                     is answered with whether it exists, never with what it holds
    GET  /trainer/v1/preview/{i}     -> PNG of the i-th latest preview image

Every JSON body is at most MAX_BODY_BYTES (413), nested at most MAX_DEPTH levels and holds only
finite numbers (422, naming the field): Python's json reads NaN, Infinity and 1e999, which no
option accepts.
"""
import io
import json
import math
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..config import ConfigError, TrainConfig
from ..hosts.base import Host
from .job import JobBusyError, TrainingJob

# module level, not inside register_routes: FastAPI reads the handlers' annotations from here
from fastapi import APIRouter, Request  # noqa: E402
from fastapi.responses import JSONResponse, Response  # noqa: E402
from starlette.concurrency import run_in_threadpool  # noqa: E402

PREFIX = "/trainer/v1"
MAX_BODY_BYTES = 1 << 20     # a config is a few KiB; prompts lists included, far below this
MAX_DEPTH = 16               # a config is sections -> options -> lists


class BodyError(Exception):
    """A request body refused before it is read as a config: HTTP status and JSON reply."""

    def __init__(self, status: int, body: dict):
        super().__init__(body["error"])
        self.status, self.body = status, body


class _NonFinite:
    """Stands in for NaN / Infinity / a number too large for a float while the body is parsed, so the
    field holding it can be named."""

    def __init__(self, text: str):
        self.text = text


def _parse_float(text: str):
    value = float(text)
    return value if math.isfinite(value) else _NonFinite(text)


async def read_json_body(request: Request) -> Any:
    """The request's JSON, bounded in size and depth, with only finite numbers; BodyError otherwise."""
    too_large = BodyError(413, {"error": f"the body is larger than {MAX_BODY_BYTES} bytes; "
                                         "a training config is a few KiB"})
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_large
        chunks.append(chunk)
    try:
        data = json.loads(b"".join(chunks), parse_constant=_NonFinite, parse_float=_parse_float)
    except RecursionError:
        raise BodyError(422, {"error": f"the body is nested too deeply; a config is sections of options "
                                       f"(at most {MAX_DEPTH} levels)"}) from None
    except ValueError as e:   # JSONDecodeError and UnicodeDecodeError
        raise BodyError(400, {"error": f"the body must be JSON (a TrainConfig as nested sections): {e}"}) from None
    _check_values(data)
    return data


def _check_values(data: Any) -> None:
    """Walk the parsed body without recursion: refuse a non-finite number by its field, and depth."""
    todo = [(data, "", 1)]
    while todo:
        value, where, depth = todo.pop()
        if depth > MAX_DEPTH:
            raise BodyError(422, {"error": f"{where or 'the body'} is nested more than {MAX_DEPTH} levels deep; "
                                           "a config is sections of options"})
        if isinstance(value, _NonFinite):
            field = where or "the body"
            raise BodyError(422, {"error": f"{field} = {value.text}: not a finite number; give a number such "
                                           "as 1e-4 (NaN and Infinity are not accepted)",
                                  "problems": [{"field": field, "value": value.text,
                                                "allowed": "a finite number"}]})
        if isinstance(value, dict):
            todo += [(v, f"{where}.{k}" if where else str(k), depth + 1) for k, v in value.items()]
        elif isinstance(value, list):
            todo += [(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]


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


def _problem_dicts(e: ConfigError) -> list:
    return [{"field": p.field, "value": _jsonable(p.value), "allowed": p.allowed} for p in e.problems]


def _jsonable(v):
    try:
        json.dumps(v)
        return v
    except (TypeError, ValueError):
        return repr(v)


async def read_config_body(request: Request) -> dict:
    data = await read_json_body(request)
    if not isinstance(data, dict):
        raise BodyError(422, {"error": "the body must be a JSON object of config sections, "
                                       "e.g. {\"data\": {\"train_dir\": ...}}"})
    return data


def refusal(e: Exception, cfg: Optional[TrainConfig] = None):
    """HTTP status and body for an error raised by TrainingJob.start(); with the run's config, a
    dataset error is told as dataset_refusal() tells it."""
    from ..data.folders import DatasetError
    from ..export.atomic import OutputExistsError
    from ..hosts.base import HostError

    if isinstance(e, ConfigError):
        return 422, {"error": str(e), "problems": _problem_dicts(e)}
    if isinstance(e, (JobBusyError, OutputExistsError)):
        return 409, {"error": str(e)}
    if isinstance(e, DatasetError) and cfg is not None:
        return 400, {"error": dataset_refusal(cfg, str(e))}
    if isinstance(e, (DatasetError, HostError, FileNotFoundError, ValueError)):
        return 400, {"error": str(e)}
    raise e


def register_routes(app, job: TrainingJob, host_factory: Callable[[], Host], *,
                    dependencies: Optional[Sequence] = None) -> None:
    """Add the routes to a FastAPI app. `host_factory()` gives the host for each training;
    `dependencies` (e.g. the WebUI's API authentication) guard every route."""
    router = APIRouter(prefix=PREFIX, tags=["trainer"], dependencies=list(dependencies or []))

    @router.post("/train")
    async def train(request: Request):
        try:
            data = await read_config_body(request)
        except BodyError as e:
            return JSONResponse(e.body, status_code=e.status)
        cfg = None
        try:
            cfg = TrainConfig.from_dict(data)
            # the dataset scan and the host's checks block: keep them off the event loop
            job_id = await run_in_threadpool(lambda: job.start(cfg, host_factory()))
        except Exception as e:  # noqa: BLE001 - mapped to 4xx; anything else is re-raised (500)
            code, body = refusal(e, cfg)
            return JSONResponse(body, status_code=code)
        return {"job_id": job_id, "status": job.status(losses=False)}

    @router.get("/status")
    async def status(losses: bool = True):
        return job.status(losses=losses)

    @router.post("/stop")
    async def stop():
        stopping = job.stop()
        return {"stopping": stopping, "status": job.status(losses=False)}

    @router.post("/save")
    async def save_now():
        """Save now: an intermediate file after the current step (409 when nothing trains)."""
        if not job.request_save():
            return JSONResponse({"error": "nothing is training"}, status_code=409)
        return {"requested": "save", "status": job.status(losses=False)}

    @router.post("/sample")
    async def sample_now():
        """Sample now: previews after the current step (409 when nothing trains, 422 without prompts)."""
        try:
            requested = job.request_sample()
        except ValueError as e:
            return JSONResponse({"error": str(e)}, status_code=422)
        if not requested:
            return JSONResponse({"error": "nothing is training"}, status_code=409)
        return {"requested": "sample", "status": job.status(losses=False)}

    @router.get("/config/default")
    async def config_default():
        return TrainConfig().to_dict()

    @router.post("/dataset")
    async def dataset(request: Request):
        try:
            cfg = TrainConfig.from_dict(await read_config_body(request))
        except BodyError as e:
            return JSONResponse(e.body, status_code=e.status)
        except ConfigError as e:
            return JSONResponse({"error": str(e), "problems": _problem_dicts(e)}, status_code=422)
        return await run_in_threadpool(rest_dataset_summary, cfg)

    @router.get("/preview/{index}")
    async def preview(index: int):
        images = job.preview_images()
        if not 0 <= index < len(images):
            return JSONResponse({"error": f"no preview {index}; there are {len(images)}"}, status_code=404)
        buf = io.BytesIO()
        images[index][0].save(buf, format="PNG")
        return Response(buf.getvalue(), media_type="image/png")

    app.include_router(router)
