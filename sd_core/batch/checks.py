"""A batch job checked by the server's own request code: the same schema (`server.schemas`), the same `generate.plan`
(infotext, styles, extra-network tags, sizes, override settings, refusals, the server's caps), so a job fails here
exactly where the server would answer 4xx, naming the same field.

Only the image fields differ: a JOBS file names files, which are read and handed to the checks as base64, as a client
would send them.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sd_core.server import generate, upscalers
from sd_core.server.api_error import ApiError
from sd_core.server.models import ModelDirectory, ModelEntry
from sd_core.server.options import OptionStore
from sd_core.server.schemas import Img2ImgRequest, Txt2ImgRequest
from sd_core.server.settings import ServerSettings
from sd_core.server.styles import StyleFile

from .sources import Job, map_images


class JobError(Exception):
    """A job the checks or the engine refused: the request field it concerns (if one) and why."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message, self.field = message, field


@dataclass(frozen=True)
class BatchConfig:
    """What every worker needs to check and run jobs alike (picklable: Ray sends it to each actor). The caps are the
    server's defaults (`ServerSettings`): a job the server would refuse is refused here too."""

    model: Path
    device: str | None = None
    dtype: str | None = None
    styles: Path | None = None
    upscaler_dirs: tuple[Path, ...] = ()
    lora_dirs: tuple[Path, ...] = ()
    embedding_dirs: tuple[Path, ...] = ()
    controlnet_dir: Path | None = None  # the ControlNets jobs may name (alwayson_scripts.controlnet)
    threads: int | None = None  # torch's CPU threads in each worker (None: torch's own choice)

    def resolved(self) -> BatchConfig:
        """The same with every path absolute: what workers get, whatever their working folder."""

        def absolute(path: Path | None) -> Path | None:
            return None if path is None else Path(path).resolve()

        return replace(
            self,
            model=Path(self.model).resolve(),
            styles=absolute(self.styles),
            upscaler_dirs=tuple(Path(p).resolve() for p in self.upscaler_dirs),
            lora_dirs=tuple(Path(p).resolve() for p in self.lora_dirs),
            embedding_dirs=tuple(Path(p).resolve() for p in self.embedding_dirs),
            controlnet_dir=absolute(self.controlnet_dir),
        )

    def server_settings(self) -> ServerSettings:
        return ServerSettings(
            model=self.model,
            device=self.device,
            dtype=self.dtype,
            styles=self.styles,
            upscaler_dirs=self.upscaler_dirs,
            lora_dirs=self.lora_dirs,
            embedding_dirs=self.embedding_dirs,
            controlnet_dir=self.controlnet_dir,
        )


def _image_data(value: Any, name: str) -> Any:
    """A file path -> its bytes as base64 (what the request checks decode); anything else as it is."""
    if not isinstance(value, str) or value.startswith("data:"):
        return value
    try:
        return base64.b64encode(Path(value).read_bytes()).decode("ascii")
    except FileNotFoundError:
        raise JobError(f"{name}: file not found: {value}", name) from None
    except OSError as exc:
        raise JobError(f"{name}: cannot read {value}: {exc}", name) from None


def _validation_error(exc: ValidationError) -> JobError:
    """pydantic's first error as the server words it: `field: message`."""
    first = exc.errors()[0]
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"]).lstrip(".") or None
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return JobError(f"{where}: {first['msg']}{more}" if where else str(first["msg"]), where)


def api_error(exc: ApiError) -> JobError:
    """The server's 4xx as a job error (the detail already names the field)."""
    return JobError(exc.detail, exc.field)


class Checker:
    """Checks jobs as the server checks requests, against one model folder, option store and styles file."""

    def __init__(self, config: BatchConfig) -> None:
        self.config = config
        self.settings = config.server_settings()
        model = Path(config.model)
        self.directory = ModelDirectory(model.resolve().parent, extra=model)  # as `server.app.build_state`
        entry = self.directory.entry_for_path(model)
        if entry is None:
            raise FileNotFoundError(f"model not found: {model}")
        self.entry: ModelEntry = entry
        self.store = OptionStore(lambda: upscalers.available(self.settings)).snapshot()
        self.styles = StyleFile(config.styles)

    def plan(self, job: Job) -> generate.Plan:
        """The job's checked plan (engine settings, prepared images); `JobError` naming the field otherwise."""
        schema = Img2ImgRequest if job.kind == "img2img" else Txt2ImgRequest
        try:
            request = schema.model_validate(map_images(job.body, _image_data))
            plan = generate.plan(request, job.kind, self.settings, self.directory, self.store, self.styles)
        except ValidationError as exc:
            raise _validation_error(exc) from None
        except ApiError as exc:
            raise api_error(exc) from None
        if plan.request.override_settings and plan.request.override_settings_restore_afterwards is False:
            name = "override_settings_restore_afterwards"
            raise JobError(
                f"{name}: false is refused in a batch: it would carry this job's override_settings to the jobs after "
                "it, which may run before it or on another worker",
                name,
            )
        return plan
