"""REST API under /trainer/v1, added to the WebUI's (or the standalone server's) FastAPI app.

Bodies are plain JSON read with `await request.json()` so the same code runs on fastapi 0.94 /
pydantic 1 (AUTOMATIC1111) and current fastapi / pydantic 2 (Forge).

    POST /trainer/v1/train           body: TrainConfig as nested sections -> 200 {"job_id", "status"}
                                     422 {"error", "problems": [{field, value, allowed}]}  bad config
                                     400 {"error"}  dataset / host refused;  409 {"error"}  busy or output exists
                                     training.resume (a state folder to go on from) is checked before the model
    GET  /trainer/v1/status          -> the job's status (add ?losses=false to leave the loss list out)
    POST /trainer/v1/stop            -> {"stopping": bool, "status"}
    GET  /trainer/v1/config/default  -> the default TrainConfig as JSON (a template for /train)
    POST /trainer/v1/dataset         body: config (only data.* and training.* matter) -> dataset summary:
                                     counts per <repeats>_<name> subfolder; a folder that is not a dataset
                                     is answered with whether it exists, never with what it holds
    GET  /trainer/v1/preview/{i}     -> PNG of the i-th latest preview image
    POST /trainer/v1/prepare         body: PrepareRequest fields (prepare/run.py) -> 200 the report
                                     (folder, counts, skipped files, class folder, stopped) when it ends;
                                     with ?wait=false -> 202 {"status"} at once, then poll /prepare/status;
                                     422 {"error"} a field refused, 400 {"error"} the host refused (e.g. a
                                     captioner's model cannot load), 409 {"error"} a preparation runs already
    GET  /trainer/v1/prepare/status  -> {"state": idle|running|done|stopped|error, "message", "error",
                                     "report" (as /prepare answers, once it ended), "started_at", "finished_at"}
    POST /trainer/v1/prepare/stop    -> {"stopping": bool, "status"}: stops after the current picture
    POST /trainer/v1/tags            body: {"folder", "action": "frequency" | "merge" | "replace" | "remove" |
                                     "prefix", "tags": [...], "into": "..."} -> {"changed": [...], "tags": [[tag, n]]}

Every JSON body is at most 1 MiB (413), nested at most 16 levels and holds only finite numbers
(422, naming the field): see api_body.py. What /dataset reveals of a folder: api_dataset.py.
"""
import io
import json
from typing import Callable, Optional, Sequence

from ..config import ConfigError, TrainConfig
from ..hosts.base import Host
from .api_body import BodyError, read_config_body, read_json_body
from .api_dataset import dataset_refusal, rest_dataset_summary
from .job import JobBusyError, TrainingJob
from .prepare_job import PrepareBusyError, PrepareJob, report_dict

# module level, not inside register_routes: FastAPI reads the handlers' annotations from here
from fastapi import APIRouter, Request  # noqa: E402
from fastapi.responses import JSONResponse, Response  # noqa: E402
from starlette.concurrency import run_in_threadpool  # noqa: E402

PREFIX = "/trainer/v1"


def _problem_dicts(e: ConfigError) -> list:
    return [{"field": p.field, "value": _jsonable(p.value), "allowed": p.allowed} for p in e.problems]


def _jsonable(v):
    try:
        json.dumps(v)
        return v
    except (TypeError, ValueError):
        return repr(v)


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
                    dependencies: Optional[Sequence] = None, prepare_job: Optional[PrepareJob] = None) -> None:
    """Add the routes to a FastAPI app. `host_factory()` gives the host for each training;
    `dependencies` (e.g. the WebUI's API authentication) guard every route; `prepare_job` is the
    tab's, so that the two never prepare at once."""
    prepare_job = prepare_job or PrepareJob()
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

    @router.post("/prepare")
    async def prepare(request: Request, wait: bool = True):
        return await _answer_body(request, prepare_response, host_factory, prepare_job, wait)

    @router.get("/prepare/status")
    async def prepare_status():
        return prepare_job.status()

    @router.post("/prepare/stop")
    async def prepare_stop():
        stopping = prepare_job.stop()
        return {"stopping": stopping, "status": prepare_job.status()}

    @router.post("/tags")
    async def tags(request: Request):
        return await _answer_body(request, tags_response)

    app.include_router(router)


async def _answer_body(request: Request, answer: Callable, *args):
    """`answer(body, *args)` for a checked JSON body, off the event loop (it reads and writes files)."""
    try:
        body = await read_json_body(request)
    except BodyError as e:
        return JSONResponse(e.body, status_code=e.status)
    return await run_in_threadpool(answer, body, *args)


def prepare_response(body, host_factory: Callable[[], Host], prepare_job: PrepareJob, wait: bool):
    from ..hosts.base import HostError
    from ..prepare.images import PrepareError
    from ..prepare.run import PrepareRequest

    if not isinstance(body, dict):
        return JSONResponse({"error": "the body must be a JSON object of prepare options"}, status_code=422)
    try:
        req = PrepareRequest.from_dict(body)
        if not wait:
            prepare_job.start(req, host_factory())
            return JSONResponse({"status": prepare_job.status()}, status_code=202)
        return report_dict(prepare_job.run(req, host_factory()))
    except (PrepareError, TypeError) as e:
        return JSONResponse({"error": str(e)}, status_code=422)
    except HostError as e:
        return JSONResponse({"error": str(e)}, status_code=400)
    except PrepareBusyError as e:
        return JSONResponse({"error": str(e)}, status_code=409)


def tags_response(body):
    from pathlib import Path

    from ..prepare import tags as tag_edit
    from ..prepare.images import PrepareError

    if not isinstance(body, dict) or not isinstance(body.get("folder"), str) or not Path(body["folder"]).is_dir():
        return JSONResponse({"error": "folder: give an existing folder of images with caption .txt files"},
                            status_code=422)
    folder, action = Path(body["folder"]), body.get("action", "frequency")
    tags = body.get("tags") or []
    into = body.get("into") or ""
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags) or not isinstance(into, str):
        return JSONResponse({"error": "tags must be a list of strings and into a string"}, status_code=422)
    edits = {"merge": lambda: tag_edit.merge_tags(folder, tags, into),
             "replace": lambda: tag_edit.replace_tag(folder, tags[0] if tags else "", into),
             "remove": lambda: tag_edit.remove_tags(folder, tags),
             "prefix": lambda: tag_edit.add_prefix(folder, into)}
    if action != "frequency" and action not in edits:
        return JSONResponse({"error": f"action = {action!r}: pick frequency, {', '.join(edits)}"}, status_code=422)
    try:
        changed = edits[action]().changed if action in edits else []
        frequency = tag_edit.tag_frequency(folder)
    except PrepareError as e:
        return JSONResponse({"error": str(e)}, status_code=422)
    return {"changed": [str(p) for p in changed], "tags": [[t, n] for t, n in frequency]}
