"""Test helper plugin for the whole-application smoke test (tests/plugins/test_krita_real.py), never shipped.

Once Krita's main window exists it drives the SD Inpaint docker like a user: start the server, paint, select,
press "Inpaint selection", check the new layer, undo it, stop the server. It writes a JSON report to
SD_KRITA_SMOKE_REPORT and quits Krita through its File > Quit action. Watchdogs end Krita if it hangs.
"""

from __future__ import annotations

import json
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from krita import Extension, Krita, Selection
from PyQt5.QtCore import QPoint, QTimer
from PyQt5.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
)

REPORT = os.environ.get("SD_KRITA_SMOKE_REPORT", "")
SHOTS = os.environ.get("SD_KRITA_SMOKE_SHOTS", "")  # a folder for screenshots of the docker and the window
QUIT_HUNG_EXIT = 17  # Krita did not exit after File > Quit (a known intermittent Krita hang)
SCENARIO_HUNG_EXIT = 18
W, H = 128, 96


class Wait:
    def __init__(self, condition: Callable[[], Any], timeout: float, what: str) -> None:
        self.condition, self.deadline, self.what = condition, time.monotonic() + timeout, what


def write_report(report: dict[str, Any]) -> None:
    if REPORT:
        with open(REPORT, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)


def soft_disc(cx: float, cy: float, radius: float, edge: float) -> bytes:
    out = bytearray(W * H)
    for y in range(H):
        for x in range(W):
            d = ((x + 0.5 - cx) ** 2 + (y + 0.5 - cy) ** 2) ** 0.5
            out[y * W + x] = max(0, min(255, round((radius - d) / edge * 255)))
    return bytes(out)


def stack(doc: Any) -> list[Any]:
    """The root's layers, bottom to top, without the global selection mask (also a child of the root)."""
    return [n for n in doc.rootNode().childNodes() if n.type() != "selectionmask"]


def layers(doc: Any) -> dict[str, bytes]:
    return {n.name(): bytes(n.pixelData(0, 0, W, H)) for n in stack(doc)}


def scenario(report: dict[str, Any]) -> Iterator[Wait]:
    app = Krita.instance()
    yield Wait(lambda: app.activeWindow() is not None, 60, "the main window")
    dockers = [d for d in app.dockers() if d.objectName() == "sd_krita_docker"]
    report["docker_found"] = len(dockers) == 1
    assert dockers, "the SD Inpaint docker was not created"
    docker = dockers[0]

    def widget(kind: type, name: str) -> Any:
        found = docker.findChild(kind, f"sd_krita_{name}")
        assert found is not None, f"docker has no {name}"
        return found

    status = widget(QLabel, "status_label")
    report["settings_loaded"] = widget(QLineEdit, "python_edit").text() == os.environ.get("SD_KRITA_SMOKE_PYTHON")

    widget(QPushButton, "start_button").click()
    yield Wait(lambda: "ready" in status.text() or "not available" in status.text(), 300, "the server")
    report["server_status"] = status.text()
    assert "ready" in status.text(), status.text()

    # CFG: the model's own by default (nothing sent), the spin greyed out; unticking hands the spin's value over
    from sd_krita import plugin  # the plugin's shared controller and settings

    settings = plugin.controller().settings
    cfg_check, cfg_spin = widget(QCheckBox, "cfg_model_check"), widget(QDoubleSpinBox, "cfg_spin")
    yield Wait(lambda: "(" in cfg_check.text(), 30, "the model's own CFG beside the tick")
    report["cfg_text"] = cfg_check.text()
    report["cfg_model_default"] = (
        cfg_check.isVisible() and cfg_check.isChecked() and not cfg_spin.isEnabled()
        and settings.cfg_scale is None and cfg_check.text() == "model default (7.5)"
    )  # fmt: skip

    doc = app.createDocument(W, H, "smoke", "RGBA", "U8", "", 72.0)
    app.activeWindow().addView(doc)
    yield Wait(lambda: app.activeDocument() == doc, 30, "the new document to be active")
    report["docker_visible"] = docker.isVisible()
    if SHOTS:  # the default docked layout: the window, the docker, the docker scrolled to CFG, all its contents
        os.makedirs(SHOTS, exist_ok=True)
        names = ("window.png", "docker.png", "docker_at_cfg.png", "docker_contents.png")
        report["shots"] = [os.path.join(SHOTS, name) for name in names]
        app.activeWindow().qwindow().grab().save(report["shots"][0])
        docker.grab().save(report["shots"][1])
        scroll = docker.widget()
        scroll.ensureWidgetVisible(cfg_check)
        scroll.horizontalScrollBar().setValue(0)  # scrolled down to CFG as a user would, not sideways
        yield Wait(lambda: True, 1, "the docker to repaint")
        viewport = scroll.viewport()
        left = cfg_spin.mapTo(viewport, QPoint(0, 0)).x()
        right = cfg_check.mapTo(viewport, QPoint(cfg_check.sizeHint().width(), 0)).x()
        report["cfg_in_view"] = 0 <= left and right <= viewport.width()  # no sideways scrolling to read it
        docker.grab().save(report["shots"][2])
        scroll.widget().grab().save(report["shots"][3])
    cfg_check.click()
    report["cfg_untick"] = cfg_spin.isEnabled() and settings.cfg_scale == 7.5  # the spin started at the model's
    cfg_check.click()
    report["cfg_tick_again"] = not cfg_spin.isEnabled() and settings.cfg_scale is None
    # sizes: "fit" and then the model's own (an SDXL model's training sizes); a size chosen disables Model size
    size_combo, resolution = widget(QComboBox, "size_combo"), widget(QSpinBox, "resolution_spin")
    report["size_choices"] = [size_combo.itemText(i) for i in range(size_combo.count())]
    size_combo.setCurrentIndex(size_combo.count() - 1)
    report["size_chosen"] = settings.size == size_combo.itemData(size_combo.count() - 1) and not resolution.isEnabled()
    size_combo.setCurrentIndex(0)
    report["size_fit_again"] = settings.size == "" and resolution.isEnabled()
    paint = doc.createNode("Paint", "paintlayer")
    paint.setPixelData(bytes(v for y in range(H) for x in range(W) for v in (x * 2, y * 2, 90, 255)), 0, 0, W, H)
    doc.rootNode().addChildNode(paint, None)
    doc.setActiveNode(paint)
    selection = Selection()
    mask = soft_disc(64, 48, 18, 6)  # kritarc of the test: grow 4, feather 6
    selection.setPixelData(mask, 0, 0, W, H)
    doc.setSelection(selection)
    before = layers(doc)

    results: list[Any] = []
    plugin.controller().finished.connect(results.append)
    widget(QPlainTextEdit, "prompt_edit").setPlainText("smoke test apple")
    widget(QPushButton, "inpaint_button").click()
    yield Wait(lambda: results, 240, "the inpaint round trip")
    report["message"] = widget(QLabel, "message_label").text()
    names = results[0]
    assert names, report["message"]
    doc.waitForDone()
    after = layers(doc)
    top = stack(doc)[-1]
    data = after[top.name()]
    report["layer_names"] = [n.name() for n in stack(doc)]
    report["new_layer_on_top"] = top.name() == names[0] and len(after) == len(before) + 1
    report["originals_unchanged"] = all(after[k] == v for k, v in before.items())
    # grow 4 + feather 6 (kritarc): nothing further than 10 px (square reach) from the disc of radius 18
    far = [i for i in range(W * H) if ((i % W + 0.5 - 64) ** 2 + (i // W + 0.5 - 48) ** 2) ** 0.5 > 18 + 10 * 1.42]
    report["transparent_outside"] = bool(far) and all(data[4 * i : 4 * i + 4] == b"\0\0\0\0" for i in far)
    report["opaque_inside"] = all(data[4 * i + 3] == 255 for i in range(W * H) if mask[i] == 255)

    app.action("edit_undo").trigger()
    yield Wait(lambda: len(stack(doc)) == len(before), 30, "undo to remove the layer")
    report["undo_removed_layer"] = set(layers(doc)) == set(before)
    report["originals_unchanged_after_undo"] = layers(doc) == before

    widget(QPushButton, "stop_button").click()
    report["server_stopped"] = plugin.controller().server is None
    report["completed"] = True


class Driver:
    """Steps through the scenario from a QTimer, so Krita's event loop keeps running between steps."""

    def __init__(self) -> None:
        self.report: dict[str, Any] = {"completed": False}
        self.steps = scenario(self.report)
        self.wait: Wait | None = None
        self.timer = QTimer()
        self.timer.timeout.connect(self.tick)
        self.timer.start(100)

    def tick(self) -> None:
        try:
            if self.wait is not None:
                if not self.wait.condition():
                    if time.monotonic() > self.wait.deadline:
                        raise AssertionError(f"timed out waiting for {self.wait.what}")
                    return
            self.wait = next(self.steps)
        except StopIteration:
            self.finish()
        except Exception:
            self.report["error"] = traceback.format_exc()
            self.finish()

    def finish(self) -> None:
        self.timer.stop()
        write_report(self.report)
        app = Krita.instance()
        for doc in app.documents():
            doc.setModified(False)  # no "save changes?" dialog on quit
        quit_watch = threading.Timer(60, lambda: os._exit(QUIT_HUNG_EXIT))
        quit_watch.daemon = True
        quit_watch.start()
        app.action("file_quit").trigger()


class SmokeExtension(Extension):
    def __init__(self, parent: Any) -> None:
        super().__init__(parent)
        self.driver: Driver | None = None

    def setup(self) -> None:
        hung = threading.Timer(float(os.environ.get("SD_KRITA_SMOKE_TIMEOUT", "600")), self._hung)
        hung.daemon = True
        hung.start()
        Krita.instance().notifier().windowCreated.connect(self._start)

    def _hung(self) -> None:
        write_report({"completed": False, "error": "the scenario hung (watchdog)"})
        os._exit(SCENARIO_HUNG_EXIT)

    def _start(self) -> None:
        if self.driver is None:
            self.driver = Driver()

    def createActions(self, window: Any) -> None:  # noqa: N802 - Krita's API
        pass


Krita.instance().addExtension(SmokeExtension(Krita.instance()))
