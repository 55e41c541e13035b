"""Krita documents in and out: read the selection and pixels, add result layers. Never writes to existing layers.

8-bit RGBA documents are read natively (B, G, R, A bytes). Other colour models and depths are read through Krita's
own conversion of the projection to 8-bit sRGB (`Document.thumbnail` at full size) and get result layers in 8-bit
sRGB, which Krita composites into the document's colour space; the user's layers are not converted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import control, qt, sizes
from .generation import Candidate, Capture
from .regions import LayerPixels, Plan, Rect, RegionError, bgra_to_rgb, plan_canvas, plan_region
from .settings import Settings
from .tools import unique_name

NATIVE = ("RGBA", "U8")
SRGB = "sRGB-elle-V2-srgbtrc.icc"  # Krita's built-in 8-bit sRGB profile


class UserError(Exception):
    """A problem the user can fix; the message says how."""


@dataclass
class Target:
    """What a finished request writes into: the document, its size then, and the layer to stack results above."""

    document: Any
    width: int
    height: int
    above: Any  # krita.Node or None (top of the stack)


def is_native(node_or_doc: Any) -> bool:
    return (node_or_doc.colorModel(), node_or_doc.colorDepth()) == NATIVE


def document_is_open(krita: Any, doc: Any) -> bool:
    """False once the user closed the document (its methods then return empty values)."""
    return any(d == doc for d in krita.documents())


def top_layer(doc: Any) -> Any:
    """The topmost layer of the root (the global selection mask is a child of the root too: skipped)."""
    layers = [n for n in doc.rootNode().childNodes() if not n.type().endswith("mask")]
    return layers[-1] if layers else None


def all_names(node: Any) -> set[str]:
    """The names of every layer below `node` (groups included)."""
    names = set()
    for child in node.childNodes():
        names.add(child.name())
        names |= all_names(child)
    return names


def layer_anchor(doc: Any) -> Any:
    """The layer results go above: the active layer (the owning layer if a mask is active), else the top one."""
    node = doc.activeNode()
    while node is not None and node.type().endswith("mask"):
        node = node.parentNode()
    if node is None or node.parentNode() is None:  # nothing active, or the root itself
        return top_layer(doc)
    return node


def read_pixels(doc: Any, rect: Rect, source: str, node: Any) -> bytes:
    """B, G, R, A bytes (8-bit) of `rect`: the visible canvas, or the given layer."""
    if source == "layer":
        if node is None:
            raise UserError("There is no active layer to read; choose 'Visible canvas' as the source.")
        if not is_native(node):
            raise UserError(
                f"The active layer is {node.colorModel()}/{node.colorDepth()}; the 'Active layer' source needs an "
                "8-bit RGBA layer. Choose 'Visible canvas' or convert the layer (Layer > Convert > Layer Color Space)."
            )
        return bytes(node.projectionPixelData(rect.x, rect.y, rect.w, rect.h))
    if is_native(doc):
        return bytes(doc.pixelData(rect.x, rect.y, rect.w, rect.h))
    return converted_pixels(doc, rect)


def find_layer(node: Any, name: str) -> Any:
    """The first layer called `name` below `node` (groups searched, top of the stack first); None if there is none."""
    for child in reversed(node.childNodes()):
        if child.name() == name and not child.type().endswith("mask"):
            return child
        found = find_layer(child, name)
        if found is not None:
            return found
    return None


def layer_names(doc: Any) -> list[str]:
    """The names of the document's layers, top of the stack first (groups and their layers; masks left out)."""

    def walk(node: Any) -> list[str]:
        out = []
        for child in reversed(node.childNodes()):
            if not child.type().endswith("mask"):
                out += [child.name(), *walk(child)]
        return out

    return walk(doc.rootNode()) if doc is not None else []


def read_control(doc: Any, settings: Settings, rect: Rect) -> bytes | None:
    """The control layer's B, G, R, A over `rect` (read only: the layer is not changed); None without one. A hidden
    layer is read too: a sketch hidden from the canvas still guides the model."""
    if not control.active(settings):
        return None
    try:
        control.check(settings)
    except RegionError as exc:
        raise UserError(str(exc)) from None
    node = find_layer(doc.rootNode(), settings.control_layer)
    if node is None:
        raise UserError(
            f"The control layer {settings.control_layer!r} is not in this document: choose one of its layers in "
            "the Control section (or None)."
        )
    if not is_native(node):
        raise UserError(
            f"The control layer is {node.colorModel()}/{node.colorDepth()}; a control layer needs to be an 8-bit "
            "RGBA layer (Layer > Convert > Layer Color Space)."
        )
    data = bytes(node.projectionPixelData(rect.x, rect.y, rect.w, rect.h))
    if len(data) != rect.w * rect.h * 4:
        raise UserError("Krita returned incomplete pixels for the control layer; try again.")
    return data


def converted_pixels(doc: Any, rect: Rect) -> bytes:
    """The projection of a non-8-bit-RGBA document as 8-bit sRGB B, G, R, A, converted by Krita."""
    image = doc.thumbnail(doc.width(), doc.height())
    if image.isNull() or (image.width(), image.height()) != (doc.width(), doc.height()):
        raise UserError(
            f"Cannot read this {doc.colorModel()}/{doc.colorDepth()} document; convert it to 8-bit RGBA "
            "(Image > Convert Image Color Space)."
        )
    return argb32_bytes(image.copy(rect.x, rect.y, rect.w, rect.h))


def argb32_bytes(image: Any) -> bytes:
    """A QImage's pixels as ARGB32 rows without padding: B, G, R, A on little-endian machines, Krita's order."""
    image = image.convertToFormat(qt.QtGui.QImage.Format.Format_ARGB32)
    w, h = image.width(), image.height()
    stride, row = image.bytesPerLine(), w * 4
    bits = image.constBits()
    bits.setsize(stride * h)
    raw = bytes(bits)
    if stride != row:
        raw = b"".join(raw[y * stride : y * stride + row] for y in range(h))
    return raw


def capture(doc: Any, settings: Settings, *, mode: str = "selection") -> tuple[Capture, Target]:
    """Read what a request needs, on Krita's thread. `mode`: "selection" (Inpaint: a selection is needed), "new"
    (Generate: without a selection the whole canvas, from nothing), "image" (Refine: without a selection the whole
    canvas's pixels)."""
    if doc is None:
        raise UserError("Open a document first.")
    width, height = doc.width(), doc.height()
    anchor = layer_anchor(doc)
    target = Target(doc, width, height, anchor)
    selection = doc.selection()
    bounds = None
    if selection is not None:
        bounds = Rect(selection.x(), selection.y(), selection.width(), selection.height())
        if bounds.empty:
            bounds = None
    if bounds is None:
        if mode == "selection":
            raise UserError("Select the area to inpaint first (any selection tool; feathered edges are kept).")
        plan = sizes.at_size(plan_canvas(width, height, target=settings.resolution), sizes.parse(settings.size))
        hint = read_control(doc, settings, plan.box)
        if mode == "new":
            return Capture(plan, None, None, hint), target
        image = read_pixels(doc, plan.box, settings.source, anchor)
        if len(image) != plan.box.w * plan.box.h * 4:
            raise UserError("Krita returned incomplete pixels for this layer; choose 'Visible canvas' as the source.")
        return Capture(plan, image, None, hint), target
    plan = _plan(bounds, width, height, settings)
    box = plan.box
    mask = bytes(selection.pixelData(box.x, box.y, box.w, box.h))
    if len(mask) != box.w * box.h:
        raise UserError("Krita returned an incomplete selection; try again.")
    if mask.count(0) == len(mask):
        raise UserError("The selection is empty inside the canvas: select something inside the image.")
    image = read_pixels(doc, box, settings.source, anchor)
    if len(image) != box.w * box.h * 4:
        raise UserError("Krita returned incomplete pixels for this layer; choose 'Visible canvas' as the source.")
    return Capture(plan, image, mask, read_control(doc, settings, box)), target


def capture_canvas(doc: Any) -> tuple[bytes, int, int, Target]:
    """The visible canvas as R, G, B (transparency over white), for Upscale."""
    if doc is None:
        raise UserError("Open a document first.")
    width, height = doc.width(), doc.height()
    data = read_pixels(doc, Rect(0, 0, width, height), "visible", None)
    if len(data) != width * height * 4:
        raise UserError("Krita returned incomplete pixels; try again.")
    return bgra_to_rgb(data), width, height, Target(doc, width, height, None)


def decode_bgra(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, B, G, R, A bytes) of a PNG, decoded by Qt (safe in a worker thread: QImage, no QPixmap)."""
    image = qt.QImage.fromData(data, "PNG")
    if image.isNull():
        raise ValueError("not a PNG Qt can read")
    return image.width(), image.height(), argb32_bytes(image)


def open_upscaled(krita: Any, source: Target, pixels: LayerPixels) -> tuple[Any, Any]:
    """A new document holding the enlarged canvas as one layer; the source document is not touched."""
    rect = pixels.rect
    doc = source.document
    name = f"{doc.name() or 'Untitled'} x{round(rect.w / max(1, source.width))}" if doc is not None else "Upscaled"
    resolution = doc.resolution() if doc is not None else 72.0
    new = krita.createDocument(rect.w, rect.h, name, NATIVE[0], NATIVE[1], "", float(resolution))
    if new is None:
        raise UserError("Krita could not create a document of that size.")
    node = new.createNode(f"Upscaled {rect.w}x{rect.h}", "paintlayer")
    node.setPixelData(pixels.data, 0, 0, rect.w, rect.h)
    new.rootNode().addChildNode(node, None)
    new.setActiveNode(node)
    window = krita.activeWindow()
    if window is not None:
        window.addView(new)
    new.refreshProjection()
    return new, node


def _plan(bounds: Rect, width: int, height: int, settings: Settings) -> Plan:
    try:
        plan = plan_region(
            bounds,
            width,
            height,
            grow=settings.grow,
            feather=settings.feather,
            margin=settings.margin,
            target=settings.resolution,
        )
    except RegionError as exc:
        raise UserError(str(exc)) from None
    return sizes.at_size(plan, sizes.parse(settings.size))


def add_layers(krita: Any, target: Target, candidates: list[Candidate]) -> list[Any]:
    """One new paint layer per candidate, directly above the anchor (first candidate on top and the only visible
    one). Pixels are written before a layer enters the document, so each is one undoable 'add layer'."""
    doc = target.document
    if not document_is_open(krita, doc):
        raise UserError("The document was closed while generating; the results were discarded.")
    if (doc.width(), doc.height()) != (target.width, target.height):
        raise UserError("The canvas was resized while generating; the results were discarded. Try again.")
    above = target.above
    if above is not None and doc.nodeByUniqueID(above.uniqueId()) is None:
        above = None  # the anchor layer was deleted meanwhile: stack on top instead
    if above is None:
        above = top_layer(doc)
    parent = above.parentNode() if above is not None else doc.rootNode()
    native = is_native(doc)
    added = []
    taken = all_names(doc.rootNode())
    for i, candidate in enumerate(candidates):
        name = unique_name(candidate.name, taken)
        taken.add(name)
        node = doc.createNode(name, "paintlayer")
        if not native:
            node.setColorSpace(NATIVE[0], NATIVE[1], SRGB)
        px = candidate.pixels
        if not px.rect.empty:
            node.setPixelData(px.data, px.rect.x, px.rect.y, px.rect.w, px.rect.h)
        node.setVisible(i == 0)
        parent.addChildNode(node, above)
        added.append(node)
    if added:
        doc.setActiveNode(added[0])
    doc.refreshProjection()
    return added
