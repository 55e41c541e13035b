"""The docker: server status and controls, prompt and generation settings, Inpaint / Generate / Cancel, progress.

Widgets only: every action goes to the shared `Controller`; every change of a field is written to the settings
(and Krita's config) at once, so a restart or a second window shows the same values.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from krita import DockWidget

from . import qt, sizes
from .controller import Controller
from .sd_client import add_lora
from .settings import Settings

DOCKER_ID = "sd_krita_docker"
TITLE = "SD Inpaint"
SOURCES = [("Visible canvas", "visible"), ("Active layer", "layer")]
MODEL_CFG_TEXT = "model default"
MODEL_CFG_GUESS = 7.5  # what the CFG spin shows until the server names the model's own value


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
        self._connect()
        if self.controller.server is None:
            self.status_label.setText(f"Checking {self.settings.server_url}…")
            self.controller.check_server()  # say at once whether a server answers at the configured URL

    # --- layout ---------------------------------------------------------------------------------------------

    def _build(self) -> None:
        s = self.settings
        root = qt.QWidget()
        layout = qt.QVBoxLayout(root)

        server = qt.QGroupBox("Server")
        form = qt.QFormLayout(server)
        self.status_label = qt.QLabel("Not checked yet.")
        self.status_label.setWordWrap(True)
        qt.rich_text_off(self.status_label)
        form.addRow(self.status_label)
        self.url_edit = qt.QLineEdit(s.server_url)
        self.connect_button = qt.QPushButton("Connect")
        form.addRow("URL", self._row(self.url_edit, self.connect_button))
        self.python_edit = qt.QLineEdit(s.python)
        self.python_edit.setPlaceholderText("python with sd-core installed")
        form.addRow("Python", self.python_edit)
        self.model_edit = qt.QLineEdit(s.model)
        self.model_button = qt.QPushButton("…")
        form.addRow("Model", self._row(self.model_edit, self.model_button))
        self.port_spin = _spin(0, 65535, s.port)
        self.port_spin.setSpecialValueText("any free port")
        form.addRow("Port", self.port_spin)
        self.start_button = qt.QPushButton("Start server")
        self.stop_button = qt.QPushButton("Stop server")
        form.addRow(self._row(self.start_button, self.stop_button))
        layout.addWidget(server)

        self.prompt_edit = qt.QPlainTextEdit(s.prompt)
        self.prompt_edit.setPlaceholderText("Prompt")
        self.prompt_edit.setFixedHeight(64)
        self.negative_edit = qt.QPlainTextEdit(s.negative_prompt)
        self.negative_edit.setPlaceholderText("Negative prompt")
        self.negative_edit.setFixedHeight(44)
        layout.addWidget(self.prompt_edit)
        layout.addWidget(self.negative_edit)

        loras = qt.QGroupBox("LoRAs")
        lora_form = qt.QFormLayout(loras)
        self.lora_combo = qt.QComboBox()  # the server's LoRAs
        self.lora_weight_spin = _dspin(-5.0, 5.0, 0.8, 0.1)
        self.lora_add_button = qt.QPushButton("Add")
        lora_form.addRow(self._row(self.lora_combo, self.lora_weight_spin, self.lora_add_button))
        self.loras_edit = qt.QLineEdit(s.loras)
        self.loras_edit.setPlaceholderText("name:weight, ... (sent as <lora:name:weight>)")
        lora_form.addRow(self.loras_edit)
        layout.addWidget(loras)

        params = qt.QFormLayout()
        self.strength_spin = _dspin(0.0, 1.0, s.strength, 0.05)
        self.steps_spin = _spin(1, 150, s.steps)
        self.sampler_combo = qt.QComboBox()
        self.sampler_combo.setEditable(True)
        self.sampler_combo.addItem(s.sampler)
        self.cfg_spin = _dspin(1.0, 30.0, MODEL_CFG_GUESS if s.cfg_scale is None else s.cfg_scale, 0.5, 1)
        self.cfg_spin.setEnabled(s.cfg_scale is not None)
        self.cfg_model_check = qt.QCheckBox(MODEL_CFG_TEXT)
        self.cfg_model_check.setChecked(s.cfg_scale is None)
        self.cfg_model_check.setToolTip(
            "Use the model's own CFG scale (sd-core's built-in model: 3, most Stable Diffusion models: 7.5).\n"
            "Untick to choose one."
        )
        self.seed_spin = _spin(-1, 2**31 - 1, s.seed)
        self.seed_spin.setSpecialValueText("random")
        self.candidates_spin = _spin(1, 8, s.candidates)
        self.grow_spin = _spin(0, 256, s.grow, suffix=" px")
        self.feather_spin = _spin(0, 256, s.feather, suffix=" px")
        self.margin_spin = _spin(0, 1024, s.margin, 8, " px")
        self.resolution_spin = _spin(64, 2048, s.resolution, 64, " px")
        self.size_combo = qt.QComboBox()
        self.size_combo.setToolTip(
            "The size the model works at. Fit region: the region scaled to about Model size squared pixels, in its\n"
            "own shape. A size from the model's list (an SDXL model's training sizes): exactly that size, the\n"
            "region widened to its shape (Generate: pick the one shaped like the canvas)."
        )
        self._fill_sizes([])  # the model's sizes once the server names them
        self.source_combo = qt.QComboBox()
        for label, value in SOURCES:
            self.source_combo.addItem(label, value)
        self.source_combo.setCurrentIndex([v for _, v in SOURCES].index(s.source))
        self.colour_check = qt.QCheckBox("Match colours to the surroundings")
        self.colour_check.setChecked(s.colour_match)
        for label, widget in [
            ("Strength", self.strength_spin),
            ("Steps", self.steps_spin),
            ("Sampler", self.sampler_combo),
            ("CFG", self._row(self.cfg_spin, self.cfg_model_check, layout=qt.QVBoxLayout)),  # fits the docked width
            ("Seed", self.seed_spin),
            ("Candidates", self.candidates_spin),
            ("Grow", self.grow_spin),
            ("Feather", self.feather_spin),
            ("Context", self.margin_spin),
            ("Size", self.size_combo),
            ("Model size", self.resolution_spin),
            ("Source", self.source_combo),
        ]:
            params.addRow(label, widget)
        params.addRow(self.colour_check)
        layout.addLayout(params)

        self.inpaint_button = qt.QPushButton("Inpaint selection")
        self.generate_button = qt.QPushButton("Generate")
        self.cancel_button = qt.QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        layout.addWidget(self._row(self.inpaint_button, self.generate_button))
        self.progress_bar = qt.QProgressBar()
        self.progress_bar.setRange(0, 100)
        self.progress_bar.setValue(0)
        layout.addWidget(self._row(self.progress_bar, self.cancel_button))  # two rows: the docked width holds them
        self.message_label = qt.QLabel("")
        self.message_label.setWordWrap(True)
        qt.rich_text_off(self.message_label)
        layout.addWidget(self.message_label)
        layout.addStretch(1)

        scroll = qt.QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(root)
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
            "status_label", "url_edit", "python_edit", "model_edit", "start_button", "stop_button", "prompt_edit",
            "negative_edit", "cfg_spin", "cfg_model_check", "inpaint_button", "generate_button", "cancel_button",
            "progress_bar", "message_label", "size_combo", "resolution_spin", "lora_combo", "lora_weight_spin",
            "lora_add_button", "loras_edit",
        ):  # fmt: skip
            getattr(self, name).setObjectName(f"sd_krita_{name}")

    def _connect(self) -> None:
        c = self.controller
        c.server_status.connect(self.status_label.setText)
        c.message.connect(self.message_label.setText)
        c.progress.connect(lambda v: self.progress_bar.setValue(int(round(v * 100))))
        c.busy.connect(self._set_busy)
        c.samplers_ready.connect(self._set_samplers)
        c.loras_ready.connect(self._set_loras)
        self.lora_add_button.clicked.connect(self._add_lora)
        self.loras_edit.textChanged.connect(lambda text: self._store("loras", text))
        c.model_defaults.connect(self._set_model_defaults)
        self.connect_button.clicked.connect(self._connect_url)
        self.start_button.clicked.connect(self._start_server)
        self.stop_button.clicked.connect(c.stop_server)
        self.model_button.clicked.connect(self._pick_model)
        self.inpaint_button.clicked.connect(lambda: c.inpaint())
        self.generate_button.clicked.connect(lambda: c.generate())
        self.cancel_button.clicked.connect(c.cancel)

        text_fields: list[tuple[Any, str]] = [(self.python_edit, "python"), (self.model_edit, "model")]
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
        self.inpaint_button.setEnabled(not busy)
        self.generate_button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)

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
        """Required by Krita; the controller always works on the active document."""
