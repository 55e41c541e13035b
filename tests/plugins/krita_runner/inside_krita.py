"""Tests that run inside real Krita (kritarunner, offscreen), through a real `sd_core.server` with a tiny model.

Started by tests/plugins/test_krita_real.py via run_pytest.py; not collected by the outer pytest (no `test_` file name).
The server is started and stopped by the plugin's own Controller (its LocalServer path), with the interpreter
and model given in SD_KRITA_TEST_PYTHON and SD_KRITA_TEST_MODEL (SD_KRITA_TEST_SDXL=1: that model is SDXL);
SD_KRITA_TEST_BUILTIN_MODEL is the built-in texture model, for the check where the drawn structure matters.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from krita import Krita, Selection
from sd_krita import document, qt, regions, sizes
from sd_krita.controller import Controller
from sd_krita.generation import Candidate
from sd_krita.regions import Rect
from sd_krita.sd_client import decode_png
from sd_krita.settings import Settings

PYTHON = os.environ.get("SD_KRITA_TEST_PYTHON", "")
MODEL = os.environ.get("SD_KRITA_TEST_MODEL", "")
BUILTIN_MODEL = os.environ.get("SD_KRITA_TEST_BUILTIN_MODEL", "")
SDXL = os.environ.get("SD_KRITA_TEST_SDXL") == "1"
SDXL_SIZES = [(1024, 1024), (1152, 896), (896, 1152), (1216, 832), (832, 1216), (1344, 768), (768, 1344),
              (1536, 640), (640, 1536)]  # fmt: skip
LORA_DIR = os.environ.get("SD_KRITA_TEST_LORA_DIR", "")  # holds bricks.safetensors, a LoRA for the SD1 model
CONTROLNET_DIR = os.environ.get("SD_KRITA_TEST_CONTROLNET_DIR", "")  # holds tiny_sd1_control, for the SD1 model
STYLES = os.environ.get("SD_KRITA_TEST_STYLES", "")  # a styles.csv with "Ink": "{prompt}, ink drawing", "blurry"
W, H = 160, 120


def pump(condition: Callable[[], Any], timeout: float, what: str) -> None:
    """Let Krita's event loop run (the controller polls with a QTimer) until `condition()` holds."""
    app = qt.QtCore.QCoreApplication.instance()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        app.processEvents(qt.QEventLoop.ProcessEventsFlag.AllEvents, 50)
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Recorder:
    """Everything the controller told the user, in order."""

    def __init__(self, controller: Controller) -> None:
        self.statuses: list[str] = []
        self.messages: list[str] = []
        self.results: list[Any] = []
        self.progress: list[float] = []
        self.model_defaults: list[dict] = []
        self.loras: list[list[str]] = []
        self.styles: list[list[str]] = []
        self.controlnets: list[list[str]] = []
        controller.server_status.connect(self.statuses.append)
        controller.model_defaults.connect(self.model_defaults.append)
        controller.message.connect(self.messages.append)
        controller.finished.connect(self.results.append)
        controller.progress.connect(self.progress.append)

    def clear(self) -> None:
        self.statuses.clear()
        self.messages.clear()
        self.results.clear()
        self.progress.clear()


@pytest.fixture(scope="module")
def ctl() -> Iterator[tuple[Controller, Recorder]]:
    assert PYTHON and MODEL, "SD_KRITA_TEST_PYTHON and SD_KRITA_TEST_MODEL must be set"
    settings = Settings(
        python=PYTHON, model=MODEL, port=0, prompt="a red apple", seed=1234, steps=2, sampler="Euler",
        candidates=1, grow=4, feather=8, margin=16, resolution=64, lora_dir=LORA_DIR, styles_file=STYLES,
        controlnet_dir=CONTROLNET_DIR,
    )  # fmt: skip
    controller = Controller(Krita.instance(), settings)
    rec = Recorder(controller)
    controller.controlnets_ready.connect(rec.controlnets.append)
    controller.loras_ready.connect(rec.loras.append)
    controller.styles_ready.connect(rec.styles.append)
    controller.start_server()
    pump(lambda: any("ready" in s or "not available" in s for s in rec.statuses), 300, "the server to start")
    server = controller.server
    assert server is not None and "ready" in rec.statuses[-1], (rec.statuses, rec.messages)
    assert rec.model_defaults and rec.model_defaults[-1]["cfg_scale"] == 7.5  # the tiny model's own
    yield controller, rec
    controller.stop_server()
    assert not server.running()


def new_document(model: str = "RGBA", depth: str = "U8") -> Any:
    doc = Krita.instance().createDocument(W, H, "sd_krita test", model, depth, "", 72.0)
    assert doc is not None and (doc.width(), doc.height()) == (W, H)
    return doc


def add_painted_layer(doc: Any) -> Any:
    """A layer with a gradient in every pixel, in the document's own pixel format."""
    node = doc.createNode("Paint", "paintlayer")
    size = len(node.pixelData(0, 0, 1, 1))
    if size == 4:  # 8-bit RGBA: B, G, R, A
        data = bytes(v for y in range(H) for x in range(W) for v in (x, y * 2, 200 - x, 255))
    elif size == 8:  # 16-bit RGBA: B, G, R, A little-endian
        data = b"".join(
            (x * 300).to_bytes(2, "little") + (y * 500).to_bytes(2, "little") + (20000).to_bytes(2, "little")
            + b"\xff\xff" for y in range(H) for x in range(W)
        )  # fmt: skip
    elif size == 2:  # 8-bit grey + alpha
        data = bytes(v for y in range(H) for x in range(W) for v in ((x + y) % 256, 255))
    else:
        raise AssertionError(f"unexpected pixel size {size}")
    node.setPixelData(data, 0, 0, W, H)
    doc.rootNode().addChildNode(node, None)
    doc.setActiveNode(node)
    doc.refreshProjection()
    return node


def soft_disc(cx: float, cy: float, radius: float, edge: float) -> bytes:
    out = bytearray(W * H)
    for y in range(H):
        for x in range(W):
            d = ((x + 0.5 - cx) ** 2 + (y + 0.5 - cy) ** 2) ** 0.5
            out[y * W + x] = max(0, min(255, round((radius - d) / edge * 255)))
    return bytes(out)


def select(doc: Any, mask: bytes) -> None:
    sel = Selection()
    sel.setPixelData(mask, 0, 0, W, H)
    doc.setSelection(sel)


def stack(doc: Any) -> list[Any]:
    """The root's layers, bottom to top (without the global selection mask, also a child of the root)."""
    return [n for n in doc.rootNode().childNodes() if n.type() != "selectionmask"]


def names(doc: Any) -> list[str]:
    return [n.name() for n in stack(doc)]


def snapshot(doc: Any) -> dict[str, bytes]:
    return {n.name(): bytes(n.pixelData(0, 0, W, H)) for n in stack(doc)}


def expected_alpha(doc: Any, settings: Settings) -> tuple[bytes, regions.Plan]:
    """The shaped mask placed on the canvas: what every result layer's alpha must be."""
    sel = doc.selection()
    plan = regions.plan_region(
        Rect(sel.x(), sel.y(), sel.width(), sel.height()), W, H, grow=settings.grow, feather=settings.feather,
        margin=settings.margin, target=settings.resolution,
    )  # fmt: skip
    box = plan.box
    shaped = regions.shape_mask(bytes(sel.pixelData(box.x, box.y, box.w, box.h)), box.w, box.h, plan.grow, plan.feather)
    canvas = bytearray(W * H)
    for y in range(box.h):
        canvas[(box.y + y) * W + box.x : (box.y + y) * W + box.right] = shaped[y * box.w : (y + 1) * box.w]
    return bytes(canvas), plan


def run(controller: Controller, rec: Recorder, start: Callable[[], bool], timeout: float = 240) -> Any:
    rec.clear()
    assert start(), rec.messages
    pump(lambda: rec.results, timeout, "the generation to finish")
    return rec.results[0]


def close(doc: Any) -> None:
    doc.setModified(False)
    doc.close()


# --- tests ----------------------------------------------------------------------------------------------------


def test_plugin_runs_on_kritas_python_without_numpy_pil_or_torch() -> None:
    import sd_krita.controller  # noqa: F401
    import sd_krita.document  # noqa: F401
    import sd_krita.generation  # noqa: F401

    assert sys.version_info[:2] >= (3, 10)
    assert not {"numpy", "PIL", "torch"} & set(sys.modules), "the plugin must use the standard library and PyQt only"
    assert Krita.instance().version().startswith("5.")


@pytest.mark.parametrize("depth", ["U8", "U16"])
def test_byte_order_in_and_out(depth: str) -> None:
    """Krita itself (its QImage rendering) is the judge of which bytes are red: the plugin must read red as red and
    write blue as blue. 8-bit RGBA is B, G, R, A; 16-bit goes through Krita's conversion."""
    doc = new_document("RGBA", depth)
    node = doc.createNode("Red", "paintlayer")
    red = bytes([0, 0, 255, 255]) if depth == "U8" else b"\0\0\0\0\xff\xff\xff\xff"
    node.setPixelData(red * (W * H), 0, 0, W, H)
    doc.rootNode().addChildNode(node, None)
    doc.refreshProjection()
    shown = doc.thumbnail(W, H).pixelColor(5, 5)
    assert (shown.red(), shown.green(), shown.blue()) == (255, 0, 0)
    rgb = regions.bgra_to_rgb(document.read_pixels(doc, Rect(0, 0, 4, 4), "visible", None))
    assert rgb[:3] == bytes([255, 0, 0])

    blue = regions.rgb_to_bgra(bytes([0, 0, 255]) * 100, b"\xff" * 100)
    candidate = Candidate("Blue", 1, regions.LayerPixels(Rect(10, 10, 10, 10), blue))
    target = document.Target(doc, W, H, node)
    added = document.add_layers(Krita.instance(), target, [candidate])
    assert names(doc) == ["Background", "Red", "Blue"] and added[0].name() == "Blue"
    doc.waitForDone()
    doc.refreshProjection()
    shown = doc.thumbnail(W, H).pixelColor(15, 15)
    assert (shown.red(), shown.green(), shown.blue()) == (0, 0, 255)
    shown = doc.thumbnail(W, H).pixelColor(5, 5)
    assert (shown.red(), shown.green(), shown.blue()) == (255, 0, 0)
    close(doc)


def test_inpaint_feathered_selection(ctl: tuple[Controller, Recorder]) -> None:
    controller, rec = ctl
    controller.settings.candidates = 2
    doc = new_document()
    paint = add_painted_layer(doc)
    select(doc, soft_disc(70, 55, 22, 8))
    before = snapshot(doc)
    projection_before = bytes(doc.pixelData(0, 0, W, H))
    alpha, plan = expected_alpha(doc, controller.settings)

    added = run(controller, rec, lambda: controller.inpaint(doc))
    assert added is not None, rec.messages
    layers = stack(doc)
    assert names(doc) == ["Background", "Paint", added[1], added[0]]  # above the painted layer
    assert added[0].startswith("a red apple (seed 1234)") and "#1" in added[0] and "#2" in added[1]
    assert layers[3].visible() and not layers[2].visible()  # only the first candidate shows
    assert snapshot(doc)["Paint"] == before["Paint"] and snapshot(doc)["Background"] == before["Background"]
    assert paint.name() == "Paint"

    for layer in layers[2:]:
        data = bytes(layer.pixelData(0, 0, W, H))
        assert data[3::4] == alpha, "the layer's alpha is the grown and feathered selection"
        outside = [i for i in range(W * H) if not alpha[i]]
        assert all(data[4 * i : 4 * i + 4] == b"\0\0\0\0" for i in outside), "transparent outside the mask"
        assert plan.reach.contains(regions.nonzero_bounds(alpha, W, H))
        assert any(data[4 * i : 4 * i + 3] != b"\0\0\0" for i in range(W * H) if alpha[i] == 255)

    doc.waitForDone()
    doc.refreshProjection()
    projection = bytes(doc.pixelData(0, 0, W, H))
    top = bytes(layers[3].pixelData(0, 0, W, H))
    for i in range(W * H):
        a = alpha[i]
        got, old, new = projection[4 * i : 4 * i + 3], projection_before[4 * i : 4 * i + 3], top[4 * i : 4 * i + 3]
        if a == 0:
            assert got == old, f"pixel {i % W},{i // W} changed outside the mask"
        elif a == 255:
            assert got == new, f"pixel {i % W},{i // W} does not show the result"
        else:
            blend = [(n * a + o * (255 - a)) / 255 for n, o in zip(new, old, strict=True)]
            assert max(abs(g - b) for g, b in zip(got, blend, strict=True)) <= 2
    close(doc)
    controller.settings.candidates = 1


def submissions(controller: Controller) -> list[tuple[dict, Any]]:
    """(payload, job) of every request the controller sends from now on."""
    sent: list[tuple[dict, Any]] = []
    client, submit = controller.client, controller.client.submit

    def recording(kind: str, payload: dict) -> Any:
        sent.append((dict(payload), submit(kind, payload)))
        return sent[-1][1]

    client.submit = recording
    return sent


def infotext(job: Any) -> str:
    return json.loads(job.result["info"])["infotexts"][0]


def test_generate_without_selection_covers_the_canvas(ctl: tuple[Controller, Recorder]) -> None:
    controller, rec = ctl
    assert controller.settings.cfg_scale is None  # the default: the model's own
    sent = submissions(controller)
    doc = new_document()
    add_painted_layer(doc)
    before = snapshot(doc)
    added = run(controller, rec, lambda: controller.generate(doc))
    assert added is not None and len(added) == 1, rec.messages
    ((payload, job),) = sent
    assert "cfg_scale" not in payload and "CFG scale: 7.5" in infotext(job)  # tiny test models: 7.5
    layer = stack(doc)[-1]
    assert layer.name() == added[0]
    assert set(bytes(layer.pixelData(0, 0, W, H))[3::4]) == {255}
    assert all(snapshot(doc)[k] == v for k, v in before.items())
    close(doc)


def test_a_size_the_model_offers_is_made_exactly(ctl: tuple[Controller, Recorder]) -> None:
    """The server names its model's sizes (an SDXL model: its training sizes); one chosen is the working size,
    the region widened to its shape."""
    controller, rec = ctl
    offered = sizes.offered(rec.model_defaults[-1])
    assert offered == (SDXL_SIZES if SDXL else [(512, 512), (768, 512), (512, 768)])
    size = (1152, 896) if SDXL else (768, 512)  # landscape, as the canvas
    sent = submissions(controller)
    doc = new_document()
    add_painted_layer(doc)
    select(doc, soft_disc(70, 55, 22, 8))
    controller.settings.size = sizes.key(size)
    try:
        added = run(controller, rec, lambda: controller.inpaint(doc))
    finally:
        controller.settings.size = sizes.FIT
    assert added is not None, rec.messages
    ((payload, job),) = sent
    assert (payload["width"], payload["height"]) == size and f"Size: {size[0]}x{size[1]}" in infotext(job)
    assert any(stack(doc)[-1].pixelData(0, 0, W, H)[3::4])
    close(doc)


def test_the_servers_loras_become_prompt_tags(ctl: tuple[Controller, Recorder]) -> None:
    """The server's list reaches the docker's picker; the chosen LoRAs go as `<lora:name:weight>`, the server applies
    them (its infotext has the hash), and one it cannot apply is the server's message naming it (with the SDXL
    model, "bricks" itself: an SD1 LoRA)."""
    controller, rec = ctl
    assert rec.loras and rec.loras[-1] == ["bricks"]
    doc = new_document()
    add_painted_layer(doc)
    sent = submissions(controller)
    controller.settings.loras = "bricks:0.8"
    try:
        if SDXL:
            assert run(controller, rec, lambda: controller.generate(doc)) is None
            assert "refused the request" in rec.messages[-1] and "bricks" in rec.messages[-1], rec.messages
            return
        added = run(controller, rec, lambda: controller.generate(doc))
        assert added is not None, rec.messages
        ((payload, job),) = sent
        assert payload["prompt"] == "a red apple <lora:bricks:0.8>" and 'Lora hashes: "bricks: ' in infotext(job)
        controller.settings.loras = "nosuch:1"
        assert run(controller, rec, lambda: controller.generate(doc)) is None
        assert "refused the request (prompt)" in rec.messages[-1] and "'nosuch'" in rec.messages[-1]
    finally:
        controller.settings.loras = ""
        close(doc)


def test_refine_the_whole_canvas_and_rerun_with_a_new_layer_name(ctl: tuple[Controller, Recorder]) -> None:
    """Refine without a selection: img2img of the canvas at Strength (no mask), an opaque layer over the canvas;
    the same seed again gets a layer name of its own. With a selection: the selection at Strength (a mask), the
    layer's alpha the shaped selection."""
    controller, rec = ctl
    sent = submissions(controller)
    doc = new_document()
    add_painted_layer(doc)
    before = snapshot(doc)
    controller.settings.strength = 0.4
    try:
        first = run(controller, rec, lambda: controller.refine(doc))
        second = run(controller, rec, lambda: controller.refine(doc))
    finally:
        controller.settings.strength = 0.75
    assert first is not None and second is not None, rec.messages
    assert [p["denoising_strength"] for p, _ in sent] == [0.4, 0.4] and not any("mask" in p for p, _ in sent)
    select(doc, soft_disc(70, 55, 22, 8))  # with a selection: the selection at Strength, as Inpaint
    alpha, _ = expected_alpha(doc, controller.settings)
    controller.settings.strength = 0.4
    try:
        third = run(controller, rec, lambda: controller.refine(doc))
    finally:
        controller.settings.strength = 0.75
    assert third is not None and sent[2][0]["denoising_strength"] == 0.4 and "mask" in sent[2][0], rec.messages
    assert bytes(stack(doc)[-1].pixelData(0, 0, W, H))[3::4] == alpha
    assert third[0] == first[0] + " [3]"
    assert "Denoising strength: 0.4" in infotext(sent[0][1])
    assert first[0].startswith("a red apple (seed 1234)") and second[0] == first[0] + " [2]"
    assert names(doc) == ["Background", "Paint", first[0], second[0], third[0]]
    assert set(bytes(stack(doc)[-2].pixelData(0, 0, W, H))[3::4]) == {255}
    assert all(snapshot(doc)[k] == v for k, v in before.items())
    entries = controller.history.entries
    assert [e.name for e in entries[:3]] == [third[0], second[0], first[0]] and entries[0].kind == "refine"
    close(doc)


def test_qts_png_decoder_agrees_with_the_pure_one() -> None:
    """Upscale decodes the server's PNG with Qt (fast on a large canvas); it must give the bytes the plugin's own
    decoder gives, in Krita's B, G, R, A order, partial alpha included."""
    from sd_krita import tools
    from sd_krita.sd_client import encode_png_rgba

    w, h = 37, 23
    rgba = bytes(v for y in range(h) for x in range(w) for v in (x * 6, y * 11, (x * y) % 256, 255 - x))
    png = encode_png_rgba(w, h, rgba)
    assert document.decode_bgra(png) == tools.decode_bgra(png)
    assert document.decode_bgra(png)[2][:4] == bytes([0, 0, 0, 255])  # B, G, R, A of the first pixel
    with pytest.raises(ValueError):
        document.decode_bgra(b"not a png")


@pytest.mark.parametrize("sd_upscale", [False, True])
def test_upscale_opens_a_new_document(ctl: tuple[Controller, Recorder], sd_upscale: bool) -> None:
    """The canvas 2x through the server's Lanczos (extras), or its SD upscale script (img2img in tiles): a new
    document twice the size with the result as a layer; the user's document untouched."""
    controller, rec = ctl
    doc = new_document()
    add_painted_layer(doc)
    doc.refreshProjection()
    before, projection = snapshot(doc), bytes(doc.pixelData(0, 0, W, H))
    count = len(Krita.instance().documents())
    controller.settings.strength = 0.3
    try:
        added = run(controller, rec, lambda: controller.upscale(2, "Lanczos", sd_upscale, doc))
    finally:
        controller.settings.strength = 0.75
    assert added is not None, rec.messages
    docs = Krita.instance().documents()
    assert len(docs) == count + 1
    big = docs[-1]
    assert (big.width(), big.height()) == (2 * W, 2 * H) and big != doc
    layers = [n for n in big.rootNode().childNodes() if n.type() == "paintlayer"]
    assert [n.name() for n in layers] == ["Background", *added]  # Krita's new document, the result on top
    data = bytes(layers[-1].pixelData(0, 0, 2 * W, 2 * H))
    assert set(data[3::4]) == {255}
    if not sd_upscale:  # Lanczos of a smooth gradient: each pixel close to the original's at half the position
        worst = max(
            abs(data[4 * ((2 * y + 1) * 2 * W + 2 * x + 1) + c] - projection[4 * (y * W + x) + c])
            for y in range(2, H - 2, 7) for x in range(2, W - 2, 7) for c in range(3)
        )  # fmt: skip
        assert worst <= 6, worst
    assert snapshot(doc) == before and bytes(doc.pixelData(0, 0, W, H)) == projection
    close(big)
    close(doc)


def test_a_style_from_the_servers_list(ctl: tuple[Controller, Recorder]) -> None:
    """The server's styles reach the docker's picker; the chosen one goes by name and the server merges its texts
    into the prompts (its infotext shows them)."""
    controller, rec = ctl
    assert rec.styles and rec.styles[-1] == ["Ink"]
    sent = submissions(controller)
    doc = new_document()
    add_painted_layer(doc)
    controller.settings.style = "Ink"
    try:
        added = run(controller, rec, lambda: controller.generate(doc))
    finally:
        controller.settings.style = ""
    assert added is not None, rec.messages
    ((payload, job),) = sent
    assert payload["styles"] == ["Ink"] and payload["prompt"] == "a red apple"
    text = infotext(job)
    assert text.startswith("a red apple, ink drawing") and "Negative prompt: blurry" in text, text
    close(doc)


def test_a_control_layer_guides_the_inpaint(ctl: tuple[Controller, Recorder]) -> None:
    """A hidden sketch layer (black strokes on transparent) as the control layer, module invert, the server's tiny
    SD1 ControlNet: the request carries the unit (the layer's pixels over the request's box), the server applied it
    (its infotext's `ControlNet 0` entry), the result differs from the same request (same seed) without the control
    layer, and the user's layers, the sketch included, stay byte-identical."""
    if SDXL:
        pytest.skip("the test ControlNet is an SD1 net (the SDXL run has no ControlNet of its family)")
    controller, rec = ctl
    assert rec.controlnets and len(rec.controlnets[-1]) == 1, rec.controlnets
    (model,) = rec.controlnets[-1]
    assert model.startswith("tiny_sd1_control [")
    doc = new_document()
    add_painted_layer(doc)
    sketch = doc.createNode("Sketch", "paintlayer")
    strokes = bytearray(W * H * 4)
    for y in range(H):
        for x in list(range(40, 44)) + list(range(90, 93)):
            strokes[4 * (y * W + x) : 4 * (y * W + x) + 4] = b"\0\0\0\xff"
    for x in range(W):
        strokes[4 * (60 * W + x) : 4 * (60 * W + x) + 4] = b"\0\0\0\xff"
    sketch.setPixelData(bytes(strokes), 0, 0, W, H)
    sketch.setVisible(False)  # hidden from the canvas: the model sees it only as the control map
    doc.rootNode().addChildNode(sketch, None)
    doc.refreshProjection()
    select(doc, soft_disc(70, 55, 30, 8))
    _, plan = expected_alpha(doc, controller.settings)
    before = snapshot(doc)
    sent = submissions(controller)
    s = controller.settings
    s.control_layer, s.control_module, s.control_model, s.control_weight = "Sketch", "invert", model, 1.0
    try:
        added = run(controller, rec, lambda: controller.inpaint(doc))
        assert added is not None, rec.messages
        first = document.find_layer(doc.rootNode(), added[0])
        guided = bytes(first.pixelData(0, 0, W, H))
        assert names(doc) == ["Background", "Paint", "Sketch", added[0]]
        first.setVisible(False)  # the same request again: the same canvas, without the control layer
        doc.refreshProjection()
        doc.waitForDone()
        s.control_layer = ""
        plain = run(controller, rec, lambda: controller.inpaint(doc))
        assert plain is not None, rec.messages
    finally:
        s.control_layer, s.control_model = "", ""
    (payload, job), (plain_payload, plain_job) = sent
    (unit,) = payload["alwayson_scripts"]["controlnet"]["args"]
    assert unit["module"] == "invert" and unit["model"] == model and unit["weight"] == 1.0
    map_w, map_h, rgba = decode_png(base64.b64decode(unit["image"]))
    assert (map_w, map_h) == (payload["width"], payload["height"]) == (plan.work_w, plan.work_h)
    flat = regions.bgra_to_rgb(bytes(strokes))  # the layer flattened over white, cropped to the box, scaled
    expected = regions.resize(regions.crop(flat, W, 3, plan.box), plan.box.w, plan.box.h, 3, map_w, map_h)
    assert regions.merge(regions.split(rgba, 4)[:3]) == expected, "the map is the layer over the request's box"
    text = infotext(job)
    assert 'ControlNet 0: "Module: invert, Model: ' + model in text, text
    assert "alwayson_scripts" not in plain_payload and "ControlNet" not in infotext(plain_job)
    assert {k: v for k, v in payload.items() if k != "alwayson_scripts"} == plain_payload
    unguided = document.find_layer(doc.rootNode(), plain[0])
    assert names(doc) == ["Background", "Paint", "Sketch", added[0], plain[0]]
    assert bytes(unguided.pixelData(0, 0, W, H)) != guided, "the control layer did not change the result"
    after = snapshot(doc)
    assert all(after[k] == v for k, v in before.items()), "a user's layer changed"
    close(doc)


@pytest.mark.parametrize("model, depth", [("RGBA", "U16"), ("GRAYA", "U8")])
def test_other_colour_spaces_get_an_8bit_srgb_result_layer(ctl: tuple[Controller, Recorder], model, depth) -> None:
    controller, rec = ctl
    doc = new_document(model, depth)
    add_painted_layer(doc)
    select(doc, soft_disc(80, 60, 20, 6))
    before = snapshot(doc)
    projection_before = bytes(doc.pixelData(0, 0, W, H))
    added = run(controller, rec, lambda: controller.inpaint(doc))
    assert added is not None, rec.messages
    layer = stack(doc)[-1]
    assert (layer.colorModel(), layer.colorDepth()) == ("RGBA", "U8")
    assert (doc.colorModel(), doc.colorDepth()) == (model, depth)  # the document is not converted
    assert all(snapshot(doc)[k] == v for k, v in before.items())
    doc.waitForDone()
    doc.refreshProjection()
    assert bytes(doc.pixelData(0, 0, W, H)) != projection_before
    close(doc)


def test_active_layer_source(ctl: tuple[Controller, Recorder]) -> None:
    controller, rec = ctl
    controller.settings.source = "layer"
    try:
        doc = new_document()
        add_painted_layer(doc)
        select(doc, soft_disc(60, 60, 15, 4))
        assert run(controller, rec, lambda: controller.inpaint(doc)) is not None, rec.messages
        close(doc)
        doc = new_document("RGBA", "U16")
        add_painted_layer(doc)
        select(doc, soft_disc(60, 60, 15, 4))
        rec.clear()
        assert not controller.inpaint(doc)
        assert "8-bit RGBA layer" in rec.messages[-1]
        close(doc)
    finally:
        controller.settings.source = "visible"


def grey(data: bytes, x0: int, y0: int, size: int) -> list[float]:
    """Mean of B, G, R of the 8-bit BGRA pixels in a size x size square (Krita's Python has no numpy)."""
    pixels = [4 * (y * W + x) for y in range(y0, y0 + size) for x in range(x0, x0 + size)]
    return [sum(data[i : i + 3]) / 3 for i in pixels]


def correlation(a: list[float], b: list[float]) -> float:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((p - ma) * (q - mb) for p, q in zip(a, b, strict=True))
    va, vb = sum((p - ma) ** 2 for p in a), sum((q - mb) ** 2 for q in b)
    return cov / (va * vb) ** 0.5 if va and vb else 0.0


def test_inpaint_with_the_built_in_model_continues_the_pattern() -> None:
    """A black and yellow checkerboard (32 px period, as the built-in model draws "large" ones); a 32 px square
    repainted from scratch (strength 1) at the model's own scale must continue the squares around it."""
    assert PYTHON and BUILTIN_MODEL, "SD_KRITA_TEST_PYTHON and SD_KRITA_TEST_BUILTIN_MODEL must be set"
    settings = Settings(
        python=PYTHON, model=BUILTIN_MODEL, port=0, prompt="black and yellow checkerboard", seed=5, steps=20,
        sampler="Euler", strength=1.0, candidates=1, grow=0, feather=0, margin=16, resolution=64,
        colour_match=False,
    )  # fmt: skip
    controller = Controller(Krita.instance(), settings)
    rec = Recorder(controller)
    controller.start_server()
    try:
        pump(lambda: any("ready" in s or "not available" in s for s in rec.statuses), 300, "the server to start")
        assert rec.model_defaults[-1]["cfg_scale"] == 3.0  # no CFG in the settings: the built-in model's own
        sent = submissions(controller)
        doc = new_document()
        node = doc.createNode("Checkerboard", "paintlayer")
        yellow, black = (0, 220, 250, 255), (10, 10, 10, 255)  # B, G, R, A
        node.setPixelData(
            bytes(v for y in range(H) for x in range(W) for v in (yellow if (x // 16 + y // 16) % 2 else black)),
            0, 0, W, H,
        )  # fmt: skip
        doc.rootNode().addChildNode(node, None)
        doc.setActiveNode(node)
        doc.refreshProjection()
        square = bytearray(W * H)
        for y in range(48, 80):
            square[y * W + 64 : y * W + 96] = b"\xff" * 32
        select(doc, bytes(square))
        before = bytes(node.pixelData(0, 0, W, H))
        added = run(controller, rec, lambda: controller.inpaint(doc))
        assert added is not None, rec.messages
        result = bytes(stack(doc)[-1].pixelData(0, 0, W, H))
        assert bytes(node.pixelData(0, 0, W, H)) == before  # the user's layer is untouched
        new, old = grey(result, 64, 48, 32), grey(before, 64, 48, 32)
        assert new != old, "the square was not repainted"
        r = correlation(new, old)
        assert r >= 0.5, f"the repainted square does not continue the checkerboard (correlation {r:.2f})"
        assert "cfg_scale" not in sent[0][0] and "CFG scale: 3.0" in infotext(sent[0][1])
        close(doc)
    finally:
        controller.stop_server()


def test_no_selection_and_selection_outside_canvas_are_clear_messages(ctl: tuple[Controller, Recorder]) -> None:
    controller, rec = ctl
    doc = new_document()
    add_painted_layer(doc)
    rec.clear()
    assert not controller.inpaint(doc)
    assert "Select the area" in rec.messages[-1]
    sel = Selection()
    sel.select(W + 50, H + 50, 20, 20, 255)
    doc.setSelection(sel)
    rec.clear()
    assert not controller.inpaint(doc)
    assert "outside the canvas" in rec.messages[-1]
    assert names(doc) == ["Background", "Paint"]
    close(doc)


def test_document_closed_mid_generation(ctl: tuple[Controller, Recorder]) -> None:
    controller, rec = ctl
    doc = new_document()
    add_painted_layer(doc)
    select(doc, soft_disc(80, 60, 20, 6))
    rec.clear()
    assert controller.inpaint(doc)
    close(doc)
    pump(lambda: rec.results, 240, "the generation to finish")
    assert rec.results == [None] and "closed" in rec.messages[-1]
    assert not any(d == doc for d in Krita.instance().documents())


def test_cancel_then_inpaint_again(ctl: tuple[Controller, Recorder]) -> None:
    controller, rec = ctl
    doc = new_document()
    add_painted_layer(doc)
    select(doc, soft_disc(80, 60, 25, 6))
    controller.settings.steps, controller.settings.resolution = 150, 192
    try:
        rec.clear()
        assert controller.inpaint(doc)
        pump(lambda: controller.run is not None and controller.run.stage == "generate", 60, "the request to be sent")
        previews: list[bytes] = []
        controller.preview.connect(previews.append)
        pump(lambda: any(p > 0 for p in rec.progress) and previews, 120, "progress and a live preview")
        controller.cancel()
        controller.preview.disconnect(previews.append)
        assert rec.results == [None] and rec.messages[-1] == "Cancelled."
        image = qt.QImage.fromData(previews[-1], "PNG")  # the server's current_image, as the docker shows it
        assert not image.isNull() and image.width() >= 8, "the live preview is a PNG of the generation"
    finally:
        controller.settings.steps, controller.settings.resolution = 2, 64
    assert names(doc) == ["Background", "Paint"]
    assert run(controller, rec, lambda: controller.inpaint(doc)) is not None, rec.messages
    close(doc)


RED, BLUE, DRIFT = (200, 40, 40), (40, 60, 200), (30, -10, -30)


class StubServer:
    """An A1111-shaped server whose output colours are known: img2img answers blue where the mask is white and
    the init image elsewhere, with DRIFT added everywhere (no paste-back), as an engine's tint."""

    def __init__(self) -> None:
        import http.server
        import threading

        from sd_krita.sd_client import decode_png, encode_png_rgba

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - http.server's API
                self._json({"progress": 0.5, "current_image": None} if "progress" in self.path else [])

            def do_POST(self) -> None:  # noqa: N802
                import base64

                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                w, h, init = decode_png(base64.b64decode(payload["init_images"][0]))
                _, _, mask = decode_png(base64.b64decode(payload["mask"]))
                out = bytearray(init)
                for i in range(w * h):
                    src = BLUE if mask[4 * i] > 127 else init[4 * i : 4 * i + 3]
                    out[4 * i : 4 * i + 3] = bytes(max(0, min(255, c + d)) for c, d in zip(src, DRIFT, strict=True))
                image = base64.b64encode(encode_png_rgba(w, h, bytes(out))).decode()
                self._json({"images": [image], "parameters": {}, "info": json.dumps({"seed": 3})})

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def hue(rgb: tuple[int, ...]) -> float:
    import colorsys

    return colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[0] * 360


@pytest.mark.parametrize("colour_match", [True, False])
def test_colour_matching_with_a_stub_server_of_known_drift(colour_match: bool) -> None:
    """Blue inpainted into red in real Krita through a stub server that tints its whole image by DRIFT: with
    matching the result layer shows the blue drawn (within 2 levels, 1 degree of hue); without, the tinted blue."""
    stub = StubServer()
    settings = Settings(server_url=stub.url, grow=4, feather=8, margin=32, resolution=128, seed=3,
                        colour_match=colour_match)  # fmt: skip
    controller = Controller(Krita.instance(), settings)
    rec = Recorder(controller)
    try:
        doc = new_document()
        node = doc.createNode("Red", "paintlayer")
        node.setPixelData(bytes([RED[2], RED[1], RED[0], 255]) * (W * H), 0, 0, W, H)
        doc.rootNode().addChildNode(node, None)
        doc.setActiveNode(node)
        doc.refreshProjection()
        select(doc, soft_disc(80, 60, 20, 4))
        before = snapshot(doc)
        added = run(controller, rec, lambda: controller.inpaint(doc), timeout=120)
        assert added is not None, rec.messages
        assert all(snapshot(doc)[k] == v for k, v in before.items())
        data = bytes(stack(doc)[-1].pixelData(0, 0, W, H))
        shown = {tuple(data[4 * i : 4 * i + 3][::-1]) for i in range(W * H) if data[4 * i + 3] == 255}
        assert len(shown) >= 1
        tinted = tuple(c + d for c, d in zip(BLUE, DRIFT, strict=True))
        if colour_match:
            assert all(max(abs(c - e) for c, e in zip(px, BLUE, strict=True)) <= 2 for px in shown), shown
            assert all(abs(hue(px) - hue(BLUE)) <= 1.0 for px in shown), shown
        else:
            assert shown == {tinted}, shown
        close(doc)
    finally:
        controller.shutdown()
        stub.close()


def test_unreachable_server_is_a_clear_message() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nobody listens there
    controller = Controller(Krita.instance(), Settings(server_url=f"http://127.0.0.1:{port}", resolution=64))
    rec = Recorder(controller)
    doc = new_document()
    add_painted_layer(doc)
    select(doc, soft_disc(80, 60, 20, 6))
    result = run(controller, rec, lambda: controller.inpaint(doc), timeout=60)
    assert result is None and "not answering" in rec.messages[-1] and "nothing answers there" in rec.messages[-1]
    assert "Errno" not in rec.messages[-1] and "Error" not in rec.messages[-1], rec.messages
    assert names(doc) == ["Background", "Paint"]
    controller.shutdown()
    close(doc)


def test_server_stopped_mid_generation_zz_last(ctl: tuple[Controller, Recorder]) -> None:
    """Runs last (file order): it stops the shared server."""
    controller, rec = ctl
    doc = new_document()
    add_painted_layer(doc)
    select(doc, soft_disc(80, 60, 25, 6))
    controller.settings.steps, controller.settings.resolution = 150, 192
    rec.clear()
    assert controller.inpaint(doc)
    pump(lambda: controller.run is not None and controller.run.stage == "generate", 60, "the request to be sent")
    pump(lambda: any(p > 0 for p in rec.progress), 120, "progress from the server")
    server = controller.server
    controller.stop_server()
    assert server is not None and not server.running()
    pump(lambda: rec.results, 60, "the failed generation")
    assert rec.results == [None]
    assert "server" in rec.messages[-1].lower(), rec.messages
    assert names(doc) == ["Background", "Paint"]
    close(doc)
