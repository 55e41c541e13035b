"""The plugin's brain, without widgets: server start/stop/status and one generation at a time.

Krita's UI never waits: HTTP calls and the pure-Python image work run in background threads (the shared client's
`Job`), and a QTimer on Krita's thread polls them. Only reading the document and adding layers happen on Krita's
thread, because the Krita API is not thread-safe. A generation is a `Run` object; Cancel or a new run simply
replaces it, so a late answer from an abandoned run is never applied.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any

from . import control, document, generation, messages, qt, tools
from .sd_client import ClientError, Job, LocalServer, SDClient
from .settings import Settings

POLL_MS = 100
PROGRESS_EVERY_S = 0.5


def background(fn: Callable[[], Any]) -> Job:
    """Run `fn` in a thread with the client's Job (done / result / error)."""
    return Job(lambda _payload: fn(), None)


def read_loras(client: SDClient) -> list[str]:
    """The names of the server's LoRAs (A1111's /sdapi/v1/loras); [] where a server has none or no such listing."""
    try:
        items = client.loras()
    except ClientError:
        return []
    return [str(item["name"]) for item in items if isinstance(item, dict) and item.get("name")]


def read_upscalers(client: SDClient) -> list[str]:
    """The server's upscalers (A1111's /sdapi/v1/upscalers) without "None"; [] where a server has no such listing."""
    try:
        return tools.upscaler_names(client.request("GET", tools.UPSCALERS_PATH))
    except ClientError:
        return []


def read_styles(client: SDClient) -> list[str]:
    """The server's prompt styles (A1111's /sdapi/v1/prompt-styles); [] where it has none or no such listing."""
    try:
        return tools.style_names(client.request("GET", tools.STYLES_PATH))
    except ClientError:
        return []


def read_controlnets(client: SDClient) -> list[str]:
    """The server's ControlNets (the A1111 extension's /controlnet/model_list); [] where it has none or no such API."""
    try:
        return control.model_names(client.request("GET", control.MODEL_LIST_PATH))
    except ClientError:
        return []


def read_model_defaults(client: SDClient) -> dict[str, Any]:
    """The current model's own CFG scale and size from sd-core's options; {} where a server does not say."""
    try:
        defaults = client.options().get("sd_core_model_defaults")
    except (ClientError, AttributeError):
        return {}
    return defaults if isinstance(defaults, dict) else {}


class Run:
    """One generation: capture -> prepare (thread) -> HTTP (thread) -> results (thread) -> layers (Krita)."""

    def __init__(self, kind: str, settings: Settings, target: document.Target, job: Job) -> None:
        self.kind, self.settings, self.target, self.job = kind, settings, target, job
        self.stage = "prepare"
        self.request: generation.Request | None = None
        self.progress_job: Job | None = None
        self.last_progress = 0.0


class Controller(qt.QObject):
    """Signals carry plain Python values so the docker (or a test) can follow along."""

    server_status = qt.pyqtSignal(str)  # one line for the status label
    samplers_ready = qt.pyqtSignal(list)  # sampler names offered by the server
    loras_ready = qt.pyqtSignal(list)  # the server's LoRA names ([] from servers without any)
    upscalers_ready = qt.pyqtSignal(list)  # the server's upscaler names ([] from servers without the listing)
    styles_ready = qt.pyqtSignal(list)  # the server's prompt style names
    controlnets_ready = qt.pyqtSignal(list)  # the server's ControlNet names ([] from servers without any)
    server_owned = qt.pyqtSignal(bool)  # whether a server this plugin started is running (Stop server applies)
    preview = qt.pyqtSignal(bytes)  # the server's live preview of the running generation (PNG bytes)
    history_changed = qt.pyqtSignal()  # `history` gained or lost entries
    model_defaults = qt.pyqtSignal(dict)  # the model's own settings, as sd-core names them ({} from other servers)
    message = qt.pyqtSignal(str)  # information or an error, for the user
    progress = qt.pyqtSignal(float)  # 0..1
    busy = qt.pyqtSignal(bool)
    finished = qt.pyqtSignal(object)  # list of added layer names, or None when the run failed / was cancelled

    def __init__(self, krita: Any, settings: Settings, parent: qt.QObject | None = None) -> None:
        super().__init__(parent)
        self.krita, self.settings = krita, settings
        self.server: LocalServer | None = None
        self.client = SDClient(settings.server_url, timeout=10.0)
        self.run: Run | None = None
        self._server_job: Job | None = None
        self._server_job_kind = ""
        self.timer = qt.QTimer(self)  # runs only while something is pending
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self._tick)
        self.history = tools.History()
        self.opened: list[Any] = []  # documents Upscale created: Krita deletes one whose last Python reference goes

    def _say(self, text: str) -> None:
        """A message for the user, in plain words (no errno codes, no exception names)."""
        self.message.emit(messages.plain(text))

    def _status(self, text: str) -> None:
        self.server_status.emit(messages.plain(text))

    # --- server ---------------------------------------------------------------------------------------------

    def use_url(self, url: str) -> None:
        self.settings.server_url = url.strip() or self.settings.server_url
        self.client = SDClient(self.settings.server_url, timeout=10.0)

    def start_server(self) -> None:
        """Start `python -m sd_core.server` with the configured interpreter and model, then wait for it (thread)."""
        s = self.settings
        if not s.python or not s.model:
            self._say("Set the Python interpreter (with sd-core installed) and the model file first.")
            return
        if self.server is not None and self.server.running():
            self._say(f"The server is already running at {self.server.url}.")
            return
        extra = (
            (("--lora-dir", s.lora_dir) if s.lora_dir else ())
            + (("--styles", s.styles_file) if s.styles_file else ())
            + (("--controlnet-dir", s.controlnet_dir) if s.controlnet_dir else ())
        )
        server = LocalServer(s.python, s.model, port=s.port or None, extra_args=extra)
        try:
            server.start()
        except OSError as exc:
            self._say(f"Cannot start {s.python}: {exc.strerror or exc}")
            return
        self.server = server
        self.server_owned.emit(True)
        self.use_url(server.url)
        self._status(f"Starting server at {server.url} (loading the model)…")
        self._watch_server("start", lambda: server.wait_ready(600.0))

    def stop_server(self) -> None:
        """Stop the server this plugin started (an external server is left alone)."""
        if self.server is None:
            self._say("This plugin did not start a server; stop yours where it runs.")
            return
        server, self.server = self.server, None
        if self._server_job_kind == "start":
            self._server_job = None  # a pending "is it ready yet" wait: its answer no longer matters
        server.stop()
        self.server_owned.emit(False)
        self._status("Server stopped.")

    def check_server(self) -> None:
        client = self.client
        self._watch_server(
            "check",
            lambda: (
                client.samplers(),
                read_model_defaults(client),
                read_loras(client),
                read_upscalers(client),
                read_styles(client),
                read_controlnets(client),
            ),
        )

    def _watch_server(self, kind: str, fn: Callable[[], Any]) -> None:
        self._server_job, self._server_job_kind = background(fn), kind
        self.timer.start()

    def _server_job_done(self, job: Job) -> None:
        if job.error is not None:
            text = job.error.message if isinstance(job.error, ClientError) else str(job.error)
            self._status(f"Server not available: {text}")
            self.model_defaults.emit({})  # no model to name a CFG scale
            if self._server_job_kind == "start" and self.server is not None:
                self.server.stop()
                self.server = None
                self.server_owned.emit(False)
            return
        if self._server_job_kind == "start":
            self.check_server()
            return
        samplers, defaults, loras, upscalers, styles, controlnets = job.result
        names = [s.get("name", "") for s in samplers or [] if isinstance(s, dict)]
        self.samplers_ready.emit([n for n in names if n])
        self.model_defaults.emit(defaults)
        self.loras_ready.emit(loras)
        self.upscalers_ready.emit(upscalers)
        self.styles_ready.emit(styles)
        self.controlnets_ready.emit(controlnets)
        owner = " (started by Krita)" if self.server is not None and self.server.running() else ""
        self._status(f"Server ready at {self.client.base_url}{owner}.")

    # --- generation -----------------------------------------------------------------------------------------

    def inpaint(self, doc: Any = None) -> bool:
        """Inpaint the selection of `doc` (the active document by default) at Strength. False if it could not start."""
        return self._start("inpaint", doc)

    def generate(self, doc: Any = None) -> bool:
        """New content at full strength (Strength is not used): the whole canvas without a selection (txt2img), the
        selection with one."""
        return self._start("generate", doc)

    def refine(self, doc: Any = None) -> bool:
        """img2img at Strength: of the selection (as Inpaint) or, without one, of the whole canvas."""
        return self._start("refine", doc)

    def upscale(self, factor: int, upscaler: str, sd_upscale: bool = False, doc: Any = None) -> bool:
        """The visible canvas enlarged `factor` times with the server's `upscaler` (with `sd_upscale`: then
        img2img'd in tiles at Strength), opened as a new document."""
        return self._start("upscale", doc, tool=(factor, upscaler, sd_upscale))

    def regenerate(self, key: int, doc: Any = None) -> bool:
        """The History entry `key` made again: its settings and its seed, on the current selection."""
        entry = self.history.get(key)
        if entry is None:
            self._say("That result is no longer in the history.")
            return False
        return self._start(entry.kind, doc, settings=entry.rerun_settings())

    def apply(self, key: int) -> list[str] | None:
        """The History entry `key` added again as a new visible layer of its document."""
        entry = self.history.get(key)
        if entry is None:
            self._say("That result is no longer in the history.")
            return None
        doc = entry.document if entry.document is not None else self.krita.activeDocument()
        if doc is None or not document.document_is_open(self.krita, doc):
            self._say("The document of that result is closed.")
            return None
        candidate = generation.Candidate(entry.name, entry.seed, entry.pixels)
        target = document.Target(doc, doc.width(), doc.height(), document.layer_anchor(doc))
        try:
            nodes = document.add_layers(self.krita, target, [candidate])
        except document.UserError as exc:
            self._say(str(exc))
            return None
        names = [n.name() for n in nodes]
        self._say(f"Added {names[0]} from the history.")
        return names

    def discard(self, key: int) -> None:
        """Drop the History entry `key` (layers already added stay: delete or undo them in Krita)."""
        if self.history.discard(key):
            self.history_changed.emit()

    def _start(self, kind: str, doc: Any, settings: Settings | None = None, tool: Any = None) -> bool:
        if self.run is not None:
            self._say("A generation is already running; cancel it first.")
            return False
        doc = doc if doc is not None else self.krita.activeDocument()
        source = settings if settings is not None else self.settings
        settings = Settings.from_strings(source.to_strings())  # a snapshot: later edits don't leak in
        try:
            if kind == "upscale":
                rgb, width, height, target = document.capture_canvas(doc)
                factor, upscaler, sd_upscale = tool
                job = background(
                    lambda: tools.upscale_request(rgb, width, height, settings, factor, upscaler, sd_upscale)
                )
            else:
                mode = {"inpaint": "selection", "generate": "new", "refine": "image"}[kind]
                captured, target = document.capture(doc, settings, mode=mode)
                strength = 1.0 if kind == "generate" else None
                job = background(lambda: generation.build_request(captured, settings, strength))
        except document.UserError as exc:
            self._say(str(exc))
            return False
        except Exception as exc:  # a Krita API surprise: say so, don't raise into Krita's event loop
            self._say(f"Could not read the document: {messages.describe(exc)}")
            return False
        self.run = Run(kind, settings, target, job)
        self.timer.start()
        self.busy.emit(True)
        self.progress.emit(0.0)
        self._say("Preparing…")
        return True

    def cancel(self) -> None:
        """Stop waiting now and ask the server to interrupt; whatever it sends later is dropped."""
        if self.run is None:
            return
        was_generating = self.run.stage == "generate"
        self.run = None
        if was_generating:
            client = self.client
            background(client.interrupt)
        self._end(None, "Cancelled.")

    def _end(self, names: list[str] | None, text: str) -> None:
        self.run = None
        self.busy.emit(False)
        self.progress.emit(1.0 if names else 0.0)
        self._say(text)
        self.finished.emit(names)

    def _tick(self) -> None:
        job = self._server_job
        if job is not None and job.done:
            self._server_job = None
            self._server_job_done(job)
        run = self.run
        if run is None:
            if self._server_job is None:
                self.timer.stop()
            return
        try:
            self._advance(run)
        except Exception as exc:  # an unexpected failure must end the run, not leave the UI busy forever
            self._end(None, messages.describe(exc))

    def _advance(self, run: Run) -> None:
        if run.stage == "generate":
            self._poll_progress(run)
        if not run.job.done:
            return
        if run.job.error is not None:
            self._end(None, self._describe(run.job.error))
            return
        if run.stage == "prepare":
            run.request = run.job.result
            run.stage = "generate"
            if run.kind == "upscale":
                client, request = self.client, run.request
                run.job = background(
                    lambda: client.request("POST", request.path, request.payload, client.generation_timeout)
                )
            else:
                run.job = self.client.submit(run.request.kind, run.request.payload)
            self._say("Upscaling…" if run.kind == "upscale" else "Generating…")
        elif run.stage == "generate":
            response, request, settings = run.job.result, run.request, run.settings
            run.stage = "results"
            if run.kind == "upscale":
                run.job = background(lambda: tools.read_upscale(request, response, document.decode_bgra))
            else:
                run.job = background(lambda: generation.read_response(request, response, settings))
        elif run.stage == "results":
            self._finish(run)

    def _finish(self, run: Run) -> None:
        if run.kind == "upscale":
            try:
                doc, node = document.open_upscaled(self.krita, run.target, run.job.result)
            except document.UserError as exc:
                self._end(None, str(exc))
                return
            self.opened = [d for d in self.opened if document.document_is_open(self.krita, d)] + [doc]
            self._end([node.name()], f"Upscaled into a new document: {doc.name()} ({doc.width()}x{doc.height()})")
            return
        candidates = run.job.result
        try:
            nodes = document.add_layers(self.krita, run.target, candidates)
        except document.UserError as exc:
            self._end(None, str(exc))
            return
        names = [n.name() for n in nodes]
        for candidate, name in zip(candidates, names, strict=True):
            self.history.add(name, candidate.seed, run.kind, run.settings, candidate.pixels, run.target.document)
        self.history_changed.emit()
        self._end(names, f"Added {len(names)} layer(s): {', '.join(names)}")

    def _poll_progress(self, run: Run) -> None:
        pj = run.progress_job
        if pj is not None and pj.done:
            run.progress_job = None
            if pj.error is None and isinstance(pj.result, dict):
                value = pj.result.get("progress")
                if isinstance(value, (int, float)):
                    self.progress.emit(max(0.0, min(1.0, float(value))))
                image = pj.result.get("current_image")
                if isinstance(image, str) and image:
                    try:
                        self.preview.emit(base64.b64decode(image))
                    except ValueError:
                        pass  # a garbled preview is not worth a message
        now = time.monotonic()
        if run.progress_job is None and now - run.last_progress >= PROGRESS_EVERY_S:
            run.last_progress = now
            client = self.client
            run.progress_job = background(client.progress)

    def _describe(self, error: BaseException) -> str:
        if isinstance(error, (generation.RegionError, document.UserError)):
            return str(error)
        hint = ""
        if self.server is not None and not self.server.running():
            hint = f"\nThe server started by Krita exited:\n{self.server.output()[-800:]}"
        return messages.describe(error, server_hint=hint)

    def shutdown(self) -> None:
        """Krita is closing: drop the run and stop a server we started."""
        self.run = None
        self.timer.stop()
        if self.server is not None:
            self.server.stop()
            self.server = None
