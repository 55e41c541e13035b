"""The docker: a compact first view (prompt, Inpaint / Generate / Refine, progress with Cancel, messages, the live
preview) and folded sections below it (Options, Selection, Control, LoRAs, Upscale, History, Server), so it stays
usable in its default docked place on small screens.

Widgets only: every action goes to the shared `Controller`; every change of a field is written to the settings
(and Krita's config) at once, so a restart or a second window shows the same values. Every control has a tooltip.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from krita import DockWidget, Krita

from . import control, document, qt, sizes, tools
from .controller import Controller
from .sd_client import add_lora
from .settings import Settings

DOCKER_ID = "sd_krita_docker"
TITLE = "SD Inpaint"
SOURCES = [("Visible canvas", "visible"), ("Active layer", "layer")]
MODEL_CFG_TEXT = "model default"
MODEL_CFG_GUESS = 7.5  # what the CFG spin shows until the server names the model's own value


NO_STYLE = "No style"
FOLDS = ("options", "selection", "control", "loras", "upscale", "history", "server")
NO_CONTROL = "None"
PREVIEW_HEIGHT = 128
THUMB = 64


class Fold(qt.QWidget):
    """A section with a header button that shows or hides its contents."""

    def __init__(self, key: str, title: str, tip: str, opened: bool, on_toggle: Callable[[str, bool], None]) -> None:
        super().__init__()
        self.key = key
        self.button = qt.QToolButton()
        self.button.setText(title)
        self.button.setCheckable(True)
        self.button.setToolButtonStyle(qt.Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.button.setAutoRaise(True)
        self.button.setToolTip(tip)
        self.button.setObjectName(f"sd_krita_fold_{key}")
        self.body = qt.QWidget()
        layout = qt.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.button)
        layout.addWidget(self.body)
        self.button.toggled.connect(lambda on: (self._show(on), on_toggle(key, on)))
        self.button.setChecked(opened)
        self._show(opened)

    def _show(self, on: bool) -> None:
        self.button.setArrowType(qt.Qt.ArrowType.DownArrow if on else qt.Qt.ArrowType.RightArrow)
        self.body.setVisible(on)


def _spin(lo: int, hi: int, value: int, step: int = 1, suffix: str = "") -> qt.QSpinBox:
    box = qt.QSpinBox()
    box.setRange(lo, hi)
    box.setSingleStep(step)
    box.setValue(value)
    if suffix:
        box.setSuffix(suffix)
    return box


def _dspin(lo: float, hi: float, value: float, step: float, decimals: int = 2) -> qt.QDoubleSpinBox:
    box = qt.QDoubleSpinBox()
    box.setRange(lo, hi)
    box.setDecimals(decimals)
    box.setSingleStep(step)
    box.setValue(value)
    return box


class SDDocker(DockWidget):
    """Created by Krita once per main window; all windows share one controller (and one server)."""

    def __init__(self) -> None:
        super().__init__()
        from . import plugin  # the plugin owns the shared controller and the settings store

        self.setWindowTitle(TITLE)
        self.setObjectName(DOCKER_ID)
        self.controller: Controller = plugin.controller()
        self.save_settings: Callable[[], None] = plugin.save_settings
        self.settings: Settings = self.controller.settings
        self._build()
        self._name_widgets()
        self._tooltips()
        self._connect()
        self._set_owned(self.controller.server is not None and self.controller.server.running())
        self._fill_history()
        if self.controller.server is None:
            self.status_label.setText(f"Checking {self.settings.server_url}…")
            self.controller.check_server()  # say at once whether a server answers at the configured URL

    # --- layout ---------------------------------------------------------------------------------------------

    def _fold(self, key: str, title: str, tip: str) -> tuple[Fold, Any]:
        opened = key in self.settings.folds.split(",")
        fold = Fold(key, title, tip, opened, self._store_fold)
        self.folds[key] = fold
        return fold, fold.body

    def _build(self) -> None:
        s = self.settings
        root = qt.QWidget()
        layout = qt.QVBoxLayout(root)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.setSpacing(4)
        self.folds: dict[str, Fold] = {}

        # the compact first view: prompt, the main buttons, progress, what happened
        self.prompt_edit = qt.QPlainTextEdit(s.prompt)
        self.prompt_edit.setPlaceholderText("Prompt")
        self.prompt_edit.setFixedHeight(48)
        layout.addWidget(self.prompt_edit)
        self.inpaint_button = qt.QPushButton("Inpaint")
        self.generate_button = qt.QPushButton("Generate")
        self.refine_button = qt.QPushButton("Refine")
        layout.addWidget(self._row(self.inpaint_button, self.generate_button, self.refine_button))
        self.progress_bar = qt.QProgressBar()
        self.progress_bar.setRange(0, 100)
        self.progress_bar.setValue(0)
        self.cancel_button = qt.QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        layout.addWidget(self._row(self.progress_bar, self.cancel_button))
        self.preview_label = qt.QLabel()  # right under the progress: what the server is drawing
        self.preview_label.setAlignment(qt.Qt.AlignmentFlag.AlignCenter)
        self.preview_label.setFixedHeight(PREVIEW_HEIGHT)
        self.preview_label.hide()
        layout.addWidget(self.preview_label)
        self.message_label = qt.QLabel("")
        self.message_label.setWordWrap(True)
        qt.rich_text_off(self.message_label)
        self.message_label.hide()
        layout.addWidget(self.message_label)
        self.status_label = qt.QLabel("Not checked yet.")
        self.status_label.setWordWrap(True)
        qt.rich_text_off(self.status_label)
        layout.addWidget(self.status_label)

        # Options: what every run uses
        fold, box = self._fold("options", "Options", "Negative prompt, Strength, steps, sampler, CFG, seed, sizes")
        params = qt.QFormLayout(box)
        self.negative_edit = qt.QPlainTextEdit(s.negative_prompt)
        self.negative_edit.setPlaceholderText("Negative prompt")
        self.negative_edit.setFixedHeight(40)
        params.addRow(self.negative_edit)
        self.strength_spin = _dspin(0.0, 1.0, s.strength, 0.05)
        self.steps_spin = _spin(1, 150, s.steps)
        self.sampler_combo = qt.QComboBox()
        self.sampler_combo.setEditable(True)
        self.sampler_combo.addItem(s.sampler)
        self.cfg_spin = _dspin(1.0, 30.0, MODEL_CFG_GUESS if s.cfg_scale is None else s.cfg_scale, 0.5, 1)
        self.cfg_spin.setEnabled(s.cfg_scale is not None)
        self.cfg_model_check = qt.QCheckBox(MODEL_CFG_TEXT)
        self.cfg_model_check.setChecked(s.cfg_scale is None)
        self.seed_spin = _spin(-1, 2**31 - 1, s.seed)
        self.seed_spin.setSpecialValueText("random")
        self.candidates_spin = _spin(1, 8, s.candidates)
        self.resolution_spin = _spin(64, 2048, s.resolution, 64, " px")
        self.style_combo = qt.QComboBox()
        self._set_styles([])  # the server's styles once connected
        self.size_combo = qt.QComboBox()
        self._fill_sizes([])  # the model's sizes once the server names them
        for label, widget in [
            ("Style", self.style_combo),
            ("Strength", self.strength_spin),
            ("Steps", self.steps_spin),
            ("Sampler", self.sampler_combo),
            ("CFG", self._row(self.cfg_spin, self.cfg_model_check, layout=qt.QVBoxLayout)),  # fits the docked width
            ("Seed", self.seed_spin),
            ("Candidates", self.candidates_spin),
            ("Size", self.size_combo),
            ("Model size", self.resolution_spin),
        ]:
            params.addRow(label, widget)
        layout.addWidget(fold)

        # Selection: how a selection becomes the area the model repaints
        fold, box = self._fold("selection", "Selection", "Grow, Feather, Context, source, colour matching")
        form = qt.QFormLayout(box)
        self.grow_spin = _spin(0, 256, s.grow, suffix=" px")
        self.feather_spin = _spin(0, 256, s.feather, suffix=" px")
        self.margin_spin = _spin(0, 1024, s.margin, 8, " px")
        self.source_combo = qt.QComboBox()
        for label, value in SOURCES:
            self.source_combo.addItem(label, value)
        self.source_combo.setCurrentIndex([v for _, v in SOURCES].index(s.source))
        self.colour_check = qt.QCheckBox("Match colours")
        self.colour_check.setChecked(s.colour_match)
        for label, widget in [
            ("Grow", self.grow_spin),
            ("Feather", self.feather_spin),
            ("Context", self.margin_spin),
            ("Source", self.source_combo),
        ]:
            form.addRow(label, widget)
        form.addRow(self.colour_check)
        layout.addWidget(fold)

        fold, box = self._fold("control", "Control", "A layer of the document guiding the runs through a ControlNet")
        ctl = qt.QFormLayout(box)
        self.control_layer_combo = qt.QComboBox()
        self.control_refresh_button = qt.QPushButton("↻")
        self.control_refresh_button.setFixedWidth(28)
        self.control_module_combo = qt.QComboBox()
        for name in control.MODULES:
            self.control_module_combo.addItem(control.MODULE_LABELS[name], name)
        self.control_module_combo.setCurrentIndex(max(0, self.control_module_combo.findData(s.control_module)))
        self.control_model_combo = qt.QComboBox()
        self.control_weight_spin = _dspin(0.0, 2.0, s.control_weight, 0.05)
        self._fill_control_layers()
        self._set_controlnets([])  # the server's ControlNets once connected
        ctl.addRow("Layer", self._row(self.control_layer_combo, self.control_refresh_button))
        ctl.addRow("Module", self.control_module_combo)
        ctl.addRow("Model", self.control_model_combo)
        ctl.addRow("Weight", self.control_weight_spin)
        layout.addWidget(fold)

        fold, box = self._fold("loras", "LoRAs", "The server's LoRAs, added to the prompt as <lora:name:weight>")
        lora_form = qt.QFormLayout(box)
        self.lora_combo = qt.QComboBox()  # the server's LoRAs
        self.lora_weight_spin = _dspin(-5.0, 5.0, 0.8, 0.1)
        self.lora_add_button = qt.QPushButton("Add")
        lora_form.addRow(self._row(self.lora_combo, self.lora_weight_spin, self.lora_add_button))
        self.loras_edit = qt.QLineEdit(s.loras)
        self.loras_edit.setPlaceholderText("name:weight, ...")
        lora_form.addRow(self.loras_edit)
        layout.addWidget(fold)

        fold, box = self._fold("upscale", "Upscale", "The canvas enlarged 2x or 4x by the server, as a new document")
        up = qt.QFormLayout(box)
        self.factor_combo = qt.QComboBox()
        for f in tools.FACTORS:
            self.factor_combo.addItem(f"{f}x", f)
        self.factor_combo.setCurrentIndex(max(0, self.factor_combo.findData(s.upscale_factor)))
        self.upscaler_combo = qt.QComboBox()
        self.upscaler_combo.addItem(s.upscaler)
        self.sd_upscale_check = qt.QCheckBox("SD upscale (tiled img2img)")
        self.sd_upscale_check.setChecked(s.sd_upscale)
        self.upscale_button = qt.QPushButton("Upscale canvas")
        up.addRow("Factor", self.factor_combo)
        up.addRow("Upscaler", self.upscaler_combo)
        up.addRow(self.sd_upscale_check)
        up.addRow(self.upscale_button)
        layout.addWidget(fold)

        fold, box = self._fold("history", "History", "This session's results: add one again, drop it, or remake it")
        hist = qt.QVBoxLayout(box)
        hist.setContentsMargins(0, 0, 0, 0)
        self.history_list = qt.QListWidget()
        self.history_list.setViewMode(qt.QListWidget.ViewMode.IconMode)
        self.history_list.setIconSize(qt.QSize(THUMB, THUMB))
        self.history_list.setMovement(qt.QListWidget.Movement.Static)
        self.history_list.setResizeMode(qt.QListWidget.ResizeMode.Adjust)
        self.history_list.setFixedHeight(THUMB + 36)
        self.history_list.setFlow(qt.QListWidget.Flow.LeftToRight)
        self.history_list.setWrapping(False)
        self.history_apply_button = qt.QPushButton("Apply")
        self.history_discard_button = qt.QPushButton("Discard")
        self.history_rerun_button = qt.QPushButton("Same seed")
        hist.addWidget(self.history_list)
        hist.addWidget(self._row(self.history_apply_button, self.history_discard_button, self.history_rerun_button))
        layout.addWidget(fold)

        fold, box = self._fold("server", "Server", "Where the server is; start and stop one from here")
        form = qt.QFormLayout(box)
        self.url_edit = qt.QLineEdit(s.server_url)
        self.connect_button = qt.QPushButton("Connect")
        form.addRow("URL", self._row(self.url_edit, self.connect_button))
        self.python_edit = qt.QLineEdit(s.python)
        self.python_edit.setPlaceholderText("python with sd-core")
        form.addRow("Python", self.python_edit)
        self.model_edit = qt.QLineEdit(s.model)
        self.model_button = qt.QPushButton("…")
        self.model_button.setFixedWidth(28)
        form.addRow("Model", self._row(self.model_edit, self.model_button))
        self.controlnet_dir_edit = qt.QLineEdit(s.controlnet_dir)
        self.controlnet_dir_edit.setPlaceholderText("none")
        form.addRow("ControlNets", self.controlnet_dir_edit)
        self.port_spin = _spin(0, 65535, s.port)
        self.port_spin.setSpecialValueText("any free port")
        form.addRow("Start port", self.port_spin)
        self.start_button = qt.QPushButton("Start server")
        self.stop_button = qt.QPushButton("Stop server")
        form.addRow(self._row(self.start_button, self.stop_button))
        layout.addWidget(fold)
        layout.addStretch(1)

        shrinkable = [qt.QLineEdit, qt.QComboBox, qt.QSpinBox, qt.QDoubleSpinBox, qt.QPushButton, qt.QProgressBar]
        for edit in [w for kind in shrinkable for w in root.findChildren(kind)]:
            edit.setMinimumWidth(24)  # the docked width decides; nothing forces sideways scrolling
            edit.setSizePolicy(qt.QSizePolicy.Policy.Ignored, edit.sizePolicy().verticalPolicy())
        scroll = qt.QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(qt.Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(root)
        scroll.setObjectName("sd_krita_scroll")
        # the docked place must hold the first view (prompt, buttons, progress): Krita's dock area shares its height
        # by the dockers' minimum sizes, so ask for that much and no more
        first = [self.prompt_edit, self.inpaint_button.parentWidget(), self.progress_bar.parentWidget()]
        margins = layout.contentsMargins()
        needed = sum(min(w.sizeHint().height(), w.maximumHeight()) for w in first) + layout.spacing() * len(first)
        scroll.setMinimumHeight(needed + margins.top() + 2 * scroll.frameWidth())
        self.setWidget(scroll)

    @staticmethod
    def _row(*widgets: qt.QWidget, layout: Any = qt.QHBoxLayout) -> qt.QWidget:
        box = qt.QWidget()
        row = layout(box)
        row.setContentsMargins(0, 0, 0, 0)
        for w in widgets:
            row.addWidget(w)
        return box

    # --- wiring ---------------------------------------------------------------------------------------------

    def _name_widgets(self) -> None:
        """Object names, so scripts and tests can find the controls with findChild."""
        for name in (
            "status_label", "url_edit", "python_edit", "model_edit", "model_button", "port_spin", "connect_button",
            "start_button", "stop_button", "prompt_edit", "negative_edit", "strength_spin", "steps_spin",
            "sampler_combo", "seed_spin", "candidates_spin", "grow_spin", "feather_spin", "margin_spin",
            "source_combo", "colour_check", "cfg_spin", "cfg_model_check", "inpaint_button", "generate_button",
            "refine_button", "cancel_button", "progress_bar", "message_label", "preview_label", "size_combo",
            "resolution_spin", "lora_combo", "lora_weight_spin", "lora_add_button", "loras_edit", "factor_combo",
            "upscaler_combo", "sd_upscale_check", "upscale_button", "history_list", "history_apply_button",
            "history_discard_button", "history_rerun_button", "style_combo", "control_layer_combo",
            "control_refresh_button", "control_module_combo", "control_model_combo", "control_weight_spin",
            "controlnet_dir_edit",
        ):  # fmt: skip
            getattr(self, name).setObjectName(f"sd_krita_{name}")

    def _tooltips(self) -> None:
        tips = {
            "prompt_edit": "What to draw. LoRAs from the LoRAs section are added to it when sent.",
            "inpaint_button": "Repaint the selection at Strength (Options): 1 draws anew, lower keeps more of what is\n"
            "there. The result is a new layer above the active one; your layers are not changed.",
            "generate_button": "New content at full strength (Strength is not used): the whole canvas without a\n"
            "selection, the selection with one. The result is a new layer.",
            "refine_button": "Rework what is there at Strength (Options): the selection, or the whole canvas\n"
            "without one (img2img). The result is a new layer.",
            "progress_bar": "Progress of the running generation, as the server reports it.",
            "cancel_button": "Stop the running generation (the server is asked to stop; nothing is added).",
            "message_label": "What happened last.",
            "status_label": "Whether a server answers at the URL (Server section).",
            "preview_label": "The server's live preview of the running generation.",
            "negative_edit": "What the image should not show.",
            "strength_spin": "How much Inpaint, Refine and SD upscale change: 1 repaints from scratch,\n"
            "0.3 keeps the composition and refines details. Generate always uses 1.",
            "steps_spin": "Sampling steps: more is slower and usually finer.",
            "sampler_combo": "The sampler (the server's list once connected).",
            "cfg_spin": "CFG scale: how strictly the image follows the prompt. Untick 'model default' to set it.",
            "cfg_model_check": "Use the model's own CFG scale (the server names it: sd-core's built-in model 3,\n"
            "most Stable Diffusion models 7.5). Untick to choose one.",
            "seed_spin": "The same seed with the same settings gives the same image; 'random' picks a new one.",
            "candidates_spin": "How many results per run; each becomes a layer (only the first is visible).",
            "size_combo": "The size the model works at. Fit region: the region scaled to about Model size squared\n"
            "pixels, in its own shape. A size from the model's list (an SDXL model's training sizes): exactly\n"
            "that size, the region widened to its shape (Generate: pick the one shaped like the canvas).",
            "resolution_spin": "Model size: the region is scaled to about this many pixels squared for the model\n"
            "(512 for SD 1.5, 1024 for SDXL) and back. Used while Size is 'Fit region'.",
            "grow_spin": "Grow: pixels added around the selection before it fades out.",
            "feather_spin": "Feather: pixels over which the result fades into the picture (no hard seam).",
            "margin_spin": "Context: pixels of the picture around the selection the model sees,\n"
            "so that what it draws fits its surroundings.",
            "source_combo": "What the model sees: the visible canvas (all layers) or the active layer only.",
            "colour_check": "Remove the colour drift of the engine: measured where the result should equal the\n"
            "original (the surroundings the server keeps), removed from the whole result. New content keeps its\n"
            "own colours. With a server that pastes the surroundings back (sd-core) there is nothing to remove.",
            "style_combo": "One of the server's prompt styles (its styles.csv): its texts are merged into the\n"
            "prompt and negative prompt by the server. 'No style': the prompts as written.",
            "control_layer_combo": "A layer of this document that guides every run as a ControlNet input: e.g.\n"
            "line art or a scribble drawn on its own layer (it may be hidden). Its pixels over the region the run\n"
            "repaints are sent, scaled like the image. None: no control layer.",
            "control_refresh_button": "Read this document's layers again (after adding or renaming one).",
            "control_module_combo": "How the server turns the layer into the ControlNet's map: None (the layer is a\n"
            "map already), Invert (black lines on white become white on black, for line-art nets), Scribble\n"
            "(dark strokes), Threshold, Canny edges (of a picture).",
            "control_model_combo": "The ControlNet (the server's list: the models of its --controlnet-dir). It must\n"
            "be made for the loaded model's family (SD 1.5 or SDXL) and for the module's kind of map.",
            "control_weight_spin": "How strongly the control layer guides the result (1: as trained, 0: not at all).",
            "controlnet_dir_edit": "A folder of ControlNet models for Start server (--controlnet-dir); empty: none.",
            "lora_combo": "The server's LoRAs.",
            "lora_weight_spin": "The weight of the LoRA to add.",
            "lora_add_button": "Add the chosen LoRA with its weight to the list below.",
            "loras_edit": "The LoRAs used, as name:weight, separated by commas (sent as <lora:name:weight>).",
            "factor_combo": "How many times larger the upscaled canvas is.",
            "upscaler_combo": "The server's upscaler (its pixel upscalers and ESRGAN-family models).",
            "sd_upscale_check": "Also rework the enlarged canvas with the model in tiles of Model size at Strength\n"
            "(A1111's 'SD upscale' script): sharper detail, slower.",
            "upscale_button": "Upscale the visible canvas into a new document (this document is not changed).",
            "history_list": "This session's results. Pick one for Apply, Discard or Same seed.",
            "history_apply_button": "Add the picked result again as a new visible layer of its document.",
            "history_discard_button": "Drop the picked result from the history (its layers stay).",
            "history_rerun_button": "Make the picked result again: its settings and seed, on the current selection.",
            "url_edit": "The address of a running sd-core (or A1111-compatible) server.",
            "connect_button": "Use this URL and check that a server answers there.",
            "python_edit": "A Python interpreter with sd-core installed, for Start server.",
            "model_edit": "The checkpoint Start server loads (.safetensors or .ckpt).",
            "model_button": "Pick the checkpoint file.",
            "port_spin": "The port Start server uses ('any free port': one that is free). Only for Start\n"
            "server; to use a server that already runs, set the URL above.",
            "start_button": "Start a server with the Python and Model above; Krita stops it when it closes.",
            "stop_button": "Stop the server this plugin started (a server started elsewhere is left alone).",
        }
        for name, tip in tips.items():
            getattr(self, name).setToolTip(tip)

    def _connect(self) -> None:
        c = self.controller
        c.server_status.connect(self.status_label.setText)
        c.message.connect(self._show_message)
        c.progress.connect(lambda v: self.progress_bar.setValue(int(round(v * 100))))
        c.busy.connect(self._set_busy)
        c.samplers_ready.connect(self._set_samplers)
        c.loras_ready.connect(self._set_loras)
        c.upscalers_ready.connect(self._set_upscalers)
        c.styles_ready.connect(self._set_styles)
        c.controlnets_ready.connect(self._set_controlnets)
        self.control_refresh_button.clicked.connect(self._fill_control_layers)
        self.control_layer_combo.currentIndexChanged.connect(
            lambda index: (
                self._store("control_layer", self.control_layer_combo.itemData(index) or ""),
                self._control_title(),
            )
        )
        self._control_title()
        self.control_module_combo.currentIndexChanged.connect(
            lambda index: self._store("control_module", self.control_module_combo.itemData(index) or "none")
        )
        self.control_model_combo.currentIndexChanged.connect(
            lambda index: self._store("control_model", self.control_model_combo.itemData(index) or "")
        )
        self.control_weight_spin.valueChanged.connect(lambda value: self._store("control_weight", value))
        self.folds["control"].button.toggled.connect(lambda on: self._fill_control_layers() if on else None)
        c.server_owned.connect(self._set_owned)
        c.preview.connect(self._show_preview)
        c.history_changed.connect(self._fill_history)
        self.lora_add_button.clicked.connect(self._add_lora)
        self.loras_edit.textChanged.connect(lambda text: self._store("loras", text))
        c.model_defaults.connect(self._set_model_defaults)
        self.connect_button.clicked.connect(self._connect_url)
        self.start_button.clicked.connect(self._start_server)
        self.stop_button.clicked.connect(c.stop_server)
        self.model_button.clicked.connect(self._pick_model)
        self.inpaint_button.clicked.connect(lambda: c.inpaint())
        self.generate_button.clicked.connect(lambda: c.generate())
        self.refine_button.clicked.connect(lambda: c.refine())
        self.upscale_button.clicked.connect(self._upscale)
        self.cancel_button.clicked.connect(c.cancel)
        self.history_list.currentRowChanged.connect(lambda row: self._history_buttons())
        self.history_apply_button.clicked.connect(lambda: self._history_action(c.apply))
        self.history_discard_button.clicked.connect(lambda: self._history_action(c.discard))
        self.history_rerun_button.clicked.connect(lambda: self._history_action(c.regenerate))

        text_fields: list[tuple[Any, str]] = [
            (self.python_edit, "python"),
            (self.model_edit, "model"),
            (self.controlnet_dir_edit, "controlnet_dir"),
        ]
        for edit, name in text_fields:
            edit.textChanged.connect(lambda text, name=name: self._store(name, text))
        self.prompt_edit.textChanged.connect(lambda: self._store("prompt", self.prompt_edit.toPlainText()))
        self.negative_edit.textChanged.connect(lambda: self._store("negative_prompt", self.negative_edit.toPlainText()))
        spins: list[tuple[Any, str]] = [
            (self.port_spin, "port"),
            (self.strength_spin, "strength"),
            (self.steps_spin, "steps"),
            (self.seed_spin, "seed"),
            (self.candidates_spin, "candidates"),
            (self.grow_spin, "grow"),
            (self.feather_spin, "feather"),
            (self.margin_spin, "margin"),
            (self.resolution_spin, "resolution"),
        ]
        for spin, name in spins:
            spin.valueChanged.connect(lambda value, name=name: self._store(name, value))
        self.sampler_combo.currentTextChanged.connect(lambda text: self._store("sampler", text))
        self.source_combo.currentIndexChanged.connect(
            lambda index: self._store("source", self.source_combo.itemData(index))
        )
        self.size_combo.currentIndexChanged.connect(lambda index: self._store_size())
        self.colour_check.toggled.connect(lambda on: self._store("colour_match", bool(on)))
        self.cfg_spin.valueChanged.connect(lambda value: self._store_cfg())
        self.cfg_model_check.toggled.connect(lambda on: self._store_cfg())
        self.factor_combo.currentIndexChanged.connect(
            lambda index: self._store("upscale_factor", self.factor_combo.itemData(index))
        )
        self.upscaler_combo.currentTextChanged.connect(lambda text: self._store("upscaler", text) if text else None)
        self.sd_upscale_check.toggled.connect(lambda on: self._store("sd_upscale", bool(on)))
        self.style_combo.currentIndexChanged.connect(
            lambda index: self._store("style", self.style_combo.itemData(index) or "")
        )

    def _store_fold(self, key: str, opened: bool) -> None:
        keys = [k for k in FOLDS if (k == key and opened) or (k != key and k in self.settings.folds.split(","))]
        self._store("folds", ",".join(keys))

    def _store(self, name: str, value: Any) -> None:
        setattr(self.settings, name, value)
        self.save_settings()

    def _store_cfg(self) -> None:
        """Ticked: no CFG scale (the model's own); unticked: the spin's value."""
        model_cfg = self.cfg_model_check.isChecked()
        self.cfg_spin.setEnabled(not model_cfg)
        self._store("cfg_scale", None if model_cfg else self.cfg_spin.value())

    def _store_size(self) -> None:
        """The chosen size; Model size only counts (and is enabled) while the region is fitted."""
        size = self.size_combo.currentData()
        self.resolution_spin.setEnabled(size == sizes.FIT)
        self._store("size", size)

    def _fill_sizes(self, offered: list[tuple[int, int]]) -> None:
        """Fit region, then the model's sizes; a stored size the model does not offer stays listed, as chosen."""
        current = sizes.parse(self.settings.size)
        choices = offered + ([current] if current is not None and current not in offered else [])
        self.size_combo.blockSignals(True)
        self.size_combo.clear()
        self.size_combo.addItem(sizes.FIT_LABEL, sizes.FIT)
        for size in choices:
            self.size_combo.addItem(sizes.label(size), sizes.key(size))
        self.size_combo.setCurrentIndex(0 if current is None else 1 + choices.index(current))
        self.size_combo.blockSignals(False)
        self.resolution_spin.setEnabled(current is None)

    def _set_model_defaults(self, defaults: dict[str, Any]) -> None:
        """Show the model's own CFG scale beside the tick (the spin starts from it when the tick is taken off) and
        offer the model's sizes."""
        self._fill_sizes(sizes.offered(defaults))
        cfg = defaults.get("cfg_scale")
        if not isinstance(cfg, (int, float)) or isinstance(cfg, bool):
            self.cfg_model_check.setText(MODEL_CFG_TEXT)
            return
        self.cfg_model_check.setText(f"{MODEL_CFG_TEXT} ({cfg:g})")
        if self.cfg_model_check.isChecked():
            self.cfg_spin.setValue(float(cfg))  # stored only once the tick is off

    def _connect_url(self) -> None:
        self._store("server_url", self.url_edit.text().strip())
        self.controller.use_url(self.settings.server_url)
        self.status_label.setText(f"Checking {self.settings.server_url}…")
        self.controller.check_server()

    def _start_server(self) -> None:
        self.controller.start_server()
        self.url_edit.setText(self.controller.client.base_url)

    def _pick_model(self) -> None:
        path, _ = qt.QFileDialog.getOpenFileName(
            self, "Stable Diffusion model", self.model_edit.text(), "Checkpoints (*.safetensors *.ckpt)"
        )
        if path:
            self.model_edit.setText(path)

    def _set_busy(self, busy: bool) -> None:
        for button in (self.inpaint_button, self.generate_button, self.refine_button, self.upscale_button,
                       self.history_rerun_button):  # fmt: skip
            button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)
        if not busy:
            self.preview_label.clear()
            self.preview_label.hide()
            self.widget().verticalScrollBar().setValue(0)  # back to the prompt and the buttons
            self._history_buttons()

    def _show_message(self, text: str) -> None:
        self.message_label.setText(text)
        self.message_label.setVisible(bool(text))  # no empty gap in the first view

    def _set_owned(self, owned: bool) -> None:
        """Stop server only while a server this plugin started runs; Start server only while none does."""
        self.stop_button.setEnabled(owned)
        self.start_button.setEnabled(not owned)

    def _show_preview(self, png: bytes) -> None:
        pixmap = qt.QPixmap()
        if not pixmap.loadFromData(png, "PNG"):
            return
        scroll = self.widget()
        first = not self.preview_label.isVisible()
        # as tall as the docked place allows under the progress bar (at most PREVIEW_HEIGHT), so it is seen there
        room = scroll.viewport().height() - self.progress_bar.height() - 12
        height = max(48, min(PREVIEW_HEIGHT, room))
        self.preview_label.setFixedHeight(height)
        width = max(32, self.preview_label.width())
        self.preview_label.setPixmap(
            pixmap.scaled(width, height, qt.Qt.AspectRatioMode.KeepAspectRatio,
                          qt.Qt.TransformationMode.SmoothTransformation)
        )  # fmt: skip
        self.preview_label.show()
        if first:  # once laid out: scroll so that the progress bar and the preview show (the prompt may scroll off)
            qt.QTimer.singleShot(0, lambda: scroll.ensureWidgetVisible(self.preview_label, 0, 0))

    def _upscale(self) -> None:
        s = self.settings
        self.controller.upscale(s.upscale_factor, self.upscaler_combo.currentText(), s.sd_upscale)

    def _set_styles(self, names: list[str]) -> None:
        """'No style', then the server's; a stored style the server lacks stays listed, as chosen."""
        current = self.settings.style
        self.style_combo.blockSignals(True)
        self.style_combo.clear()
        self.style_combo.addItem(NO_STYLE, "")
        for name in names + ([current] if current and current not in names else []):
            self.style_combo.addItem(name, name)
        self.style_combo.setCurrentIndex(max(0, self.style_combo.findData(current)))
        self.style_combo.blockSignals(False)

    def _control_title(self) -> None:
        """The folded Control header says which layer guides the runs, so a forgotten one shows."""
        layer = self.settings.control_layer
        short = layer if len(layer) <= 20 else layer[:19] + "…"  # a long name must not widen the docker
        self.folds["control"].button.setText(f"Control: {short}" if layer else "Control")

    def _fill_control_layers(self) -> None:
        """'None', then the active document's layers; a stored layer it lacks stays listed, as chosen."""
        current = self.settings.control_layer
        names = document.layer_names(Krita.instance().activeDocument())
        combo = self.control_layer_combo
        combo.blockSignals(True)
        combo.clear()
        combo.addItem(NO_CONTROL, "")
        for name in dict.fromkeys(names + ([current] if current and current not in names else [])):
            combo.addItem(name, name)
        combo.setCurrentIndex(max(0, combo.findData(current)))
        combo.blockSignals(False)

    def _set_controlnets(self, names: list[str]) -> None:
        """The server's ControlNets; a stored one it lacks stays listed, as chosen (the server then names it)."""
        current = self.settings.control_model
        combo = self.control_model_combo
        combo.blockSignals(True)
        combo.clear()
        for name in names + ([current] if current and current not in names else []):
            combo.addItem(name, name)
        if not combo.count():
            combo.addItem("(the server lists none)", "")
        combo.setCurrentIndex(max(0, combo.findData(current)))
        combo.blockSignals(False)
        if combo.currentData() != current:
            self._store("control_model", combo.currentData() or "")

    def _set_upscalers(self, names: list[str]) -> None:
        current = self.settings.upscaler
        self.upscaler_combo.blockSignals(True)
        self.upscaler_combo.clear()
        self.upscaler_combo.addItems(names or [current])
        if current in names or not names:
            self.upscaler_combo.setCurrentText(current)
        self.upscaler_combo.blockSignals(False)
        self._store("upscaler", self.upscaler_combo.currentText())

    # --- history --------------------------------------------------------------------------------------------

    def _fill_history(self) -> None:
        self.history_list.clear()
        for entry in self.controller.history.entries:
            item = qt.QListWidgetItem(thumbnail(entry.pixels), f"seed {entry.seed}" if entry.seed is not None else "")
            item.setData(qt.Qt.ItemDataRole.UserRole, entry.key)
            item.setToolTip(f"{entry.name}\n{entry.kind}, strength {entry.settings.strength:g}")
            self.history_list.addItem(item)
        self._history_buttons()

    def _history_key(self) -> int | None:
        item = self.history_list.currentItem()
        return None if item is None else int(item.data(qt.Qt.ItemDataRole.UserRole))

    def _history_buttons(self) -> None:
        picked = self._history_key() is not None
        self.history_apply_button.setEnabled(picked)
        self.history_discard_button.setEnabled(picked)
        self.history_rerun_button.setEnabled(picked and self.controller.run is None)

    def _history_action(self, action: Callable[[int], Any]) -> None:
        key = self._history_key()
        if key is not None:
            action(key)

    def _set_samplers(self, names: list[str]) -> None:
        current = self.settings.sampler
        self.sampler_combo.blockSignals(True)
        self.sampler_combo.clear()
        self.sampler_combo.addItems(names)
        if current not in names:
            self.sampler_combo.addItem(current)
        self.sampler_combo.setCurrentText(current)
        self.sampler_combo.blockSignals(False)

    def _set_loras(self, names: list[str]) -> None:
        self.lora_combo.clear()
        self.lora_combo.addItems(names)
        self.lora_add_button.setEnabled(bool(names))

    def _add_lora(self) -> None:
        """The picked LoRA with its weight, appended to the list (a LoRA already there gets the new weight)."""
        name = self.lora_combo.currentText()
        if name:
            self.loras_edit.setText(add_lora(self.loras_edit.text(), name, self.lora_weight_spin.value()))

    def canvasChanged(self, canvas: Any) -> None:  # noqa: N802 - Krita's DockWidget API
        """Another document: the control layer list shows its layers (the controller always works on the active
        document)."""
        self._fill_control_layers()


def thumbnail(pixels: Any) -> Any:
    """An icon of a result's pixels (B, G, R, A = QImage's ARGB32 on little-endian machines)."""
    rect = pixels.rect
    if rect.empty:
        return qt.QIcon()
    image = qt.QImage(pixels.data, rect.w, rect.h, rect.w * 4, qt.QImage.Format.Format_ARGB32).copy()
    scaled = image.scaled(THUMB, THUMB, qt.Qt.AspectRatioMode.KeepAspectRatio,
                          qt.Qt.TransformationMode.SmoothTransformation)  # fmt: skip
    return qt.QIcon(qt.QPixmap.fromImage(scaled))
