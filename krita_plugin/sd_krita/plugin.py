"""Registration with Krita: the docker factory, two menu actions, the shared controller and its settings.

One controller per Krita process (so one server, whatever the number of windows), created on first use; the
server Krita started is stopped when Krita closes.
"""

from __future__ import annotations

from typing import Any

from krita import DockWidgetFactory, DockWidgetFactoryBase, Extension, Krita

from .controller import Controller
from .settings import Settings

GROUP = "sd_krita"  # the [sd_krita] group of kritarc
_controller: Controller | None = None


def load_settings() -> Settings:
    app = Krita.instance()
    names = Settings().to_strings()
    return Settings.from_strings({name: app.readSetting(GROUP, name, "") for name in names})


def save_settings() -> None:
    if _controller is None:
        return
    app = Krita.instance()
    for name, value in _controller.settings.to_strings().items():
        app.writeSetting(GROUP, name, value)


def controller() -> Controller:
    global _controller
    if _controller is None:
        app = Krita.instance()
        _controller = Controller(app, load_settings())
        app.notifier().applicationClosing.connect(_controller.shutdown)
    return _controller


class SDExtension(Extension):
    """Menu actions (Tools > Scripts) so users can put shortcuts on Inpaint, Generate and Refine."""

    def __init__(self, parent: Any) -> None:
        super().__init__(parent)

    def setup(self) -> None:
        pass

    def createActions(self, window: Any) -> None:  # noqa: N802 - Krita's Extension API
        inpaint = window.createAction("sd_krita_inpaint", "SD: Inpaint selection", "tools/scripts")
        inpaint.triggered.connect(lambda: controller().inpaint())
        generate = window.createAction("sd_krita_generate", "SD: Generate", "tools/scripts")
        generate.triggered.connect(lambda: controller().generate())
        refine = window.createAction("sd_krita_refine", "SD: Refine", "tools/scripts")
        refine.triggered.connect(lambda: controller().refine())


def register() -> None:
    from .docker import DOCKER_ID, SDDocker

    app = Krita.instance()
    app.addExtension(SDExtension(app))
    app.addDockWidgetFactory(DockWidgetFactory(DOCKER_ID, DockWidgetFactoryBase.DockRight, SDDocker))
