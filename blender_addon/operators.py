"""Operators. Each generation operator only says what to ask for and what to make of the answer (`prepare`);
`_Generation` runs it: modal with a timer in the UI (Blender stays responsive), blocking in `execute()` (scripts and
background mode, where timers never fire)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import bpy
import numpy as np
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, StringProperty

from . import materials, pixels, projection, props
from .engine import Request, Result, UserError, client, size_choices
from .renders import render_scene, render_viewport
from .runs import PREVIEW_NAME, SESSION, Finish, Run, new_preview_image, remove_images
from .task import State

TIMER_SECONDS = 0.1
TEXTURE_FOLDER = "//sd_textures"


def _name_from(text: str, fallback: str, prefix: str = "") -> str:
    """A datablock name from a prompt: one line, at most 60 bytes (Blender's limit is 63)."""
    name = prefix + (re.sub(r"\s+", " ", text).strip() or fallback)
    while len(name.encode("utf-8")) > 60:
        name = name[:-1]
    return name.rstrip()


def _store(image: Any, result: Result, index: int, pack: bool) -> None:
    """Keep the image with the .blend (packed) or as a PNG next to it, and note how it was made."""
    if index < len(result.infotexts) and result.infotexts[index]:
        image["sd_parameters"] = result.infotexts[index]
    if index < len(result.seeds):
        image["sd_seed"] = result.seeds[index]
    if pack:
        image.pack()
        return
    folder = bpy.path.abspath(TEXTURE_FOLDER)
    os.makedirs(folder, exist_ok=True)
    seed = f"-{image['sd_seed']}" if "sd_seed" in image else ""
    path = os.path.join(folder, f"{bpy.path.clean_name(image.name)}{seed}.png")
    image.filepath_raw = path
    image.file_format = "PNG"
    image.save()
    image.filepath = bpy.path.relpath(path)


def _check_storage(pack: bool) -> None:
    if not pack and not bpy.data.is_saved:
        raise UserError(
            "Save the .blend file first: unpacked textures are written next to it in "
            f"{TEXTURE_FOLDER}/ (or turn on 'Pack into .blend')"
        )


def _fit(rgba: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize uint8 HxWx4 pixels to width x height with Blender's own scaler (results may come back a multiple
    of 8 smaller or larger than the source)."""
    if rgba.shape[:2] == (height, width):
        return rgba
    image = pixels.new_image(".sd_core_resize", rgba)
    try:
        image.scale(width, height)
        return pixels.to_srgb8(image)
    finally:
        bpy.data.images.remove(image)


def _show(context: Any, image: Any) -> None:
    space = getattr(context, "space_data", None)
    if space is not None and space.type == "IMAGE_EDITOR" and not space.use_image_pin:
        space.image = image


def _source_image(context: Any, name: str) -> Any:
    if name:
        image = bpy.data.images.get(name)
        if image is None:
            raise UserError(f"There is no image named '{name}'")
        return image
    space = getattr(context, "space_data", None)
    image = getattr(space, "image", None) if space is not None and space.type == "IMAGE_EDITOR" else None
    if image is None or image.name == PREVIEW_NAME:
        raise UserError("Open an image in the Image Editor first")
    return image


def _editor_image(context: Any) -> Any:
    space = getattr(context, "space_data", None)
    return getattr(space, "image", None) if space is not None and space.type == "IMAGE_EDITOR" else None


def _base_color_image(obj: Any) -> Any:
    """The image on the Base Color of `obj`'s active material, if any (the texture Generate Texture put there)."""
    material = obj.active_material if obj is not None and obj.type == "MESH" else None
    if material is None or material.node_tree is None:
        return None
    for node in material.node_tree.nodes:
        if node.type == "BSDF_PRINCIPLED":
            for link in node.inputs["Base Color"].links:
                if link.from_node.type == "TEX_IMAGE" and link.from_node.image is not None:
                    return link.from_node.image
    return None


def _img2img_request(settings: Any, rgba: np.ndarray, kind: str = "img2img", seamless: bool = True) -> Request:
    """A request on uint8 top-down pixels, at the size the engine makes of theirs (rounded to a multiple of 8);
    `seamless` False: an ordinary image whatever the panel's Seamless says."""
    request = props.make_request(settings, kind, image=np.ascontiguousarray(rgba[:, :, :3]))
    request.width = request.height = None  # the panel's size is for new textures; a restyle keeps the source's
    if not seamless:
        request.tiling = ""
    return request


# Restyling a render is not texture work: tiling would turn the object into a full-frame pattern. The panel's
# Seamless applies to it only when the operator is asked to (scripts: seamless=True).
_RENDER_SEAMLESS = BoolProperty(
    name="Seamless",
    default=False,
    description="Use the panel's Seamless setting for this restyle too (off: an ordinary image, as renders are)",
)


class _Generation:
    """Shared run logic; subclasses implement `prepare(context) -> (request, label, finish)`."""

    bl_options = {"UNDO"}  # one undo step for what the run made; no redo panel (it would generate again)
    makes_images = True  # stores images (checked before anything starts) and goes into the history
    _run: Run | None = None
    _timer: Any = None

    def prepare(self, context: Any) -> tuple[Request, str, Finish]:
        raise NotImplementedError

    def _begin(self, context: Any) -> Run | None:
        settings = props.settings(context)
        try:
            if self.makes_images:
                _check_storage(settings.pack)
            request, label, finish = self.prepare(context)
            run = SESSION.start(context, request, label, finish)
            if self.makes_images:
                props.remember(settings, request)
        except UserError as exc:
            SESSION.last_error = str(exc)
            self.report({"ERROR"}, str(exc))
            return None
        return run

    def _end(self, run: Run) -> set[str]:
        SESSION.note(run)
        level, message = run.report()
        self.report({level}, message)
        return {"FINISHED"} if level == "INFO" else {"CANCELLED"}

    def execute(self, context: Any) -> set[str]:
        run = self._begin(context)
        if run is None:
            return {"CANCELLED"}
        run.wait()
        return self._end(run)

    def invoke(self, context: Any, event: Any) -> set[str]:
        if bpy.app.background or context.window is None:
            return self.execute(context)
        run = self._begin(context)
        if run is None:
            return {"CANCELLED"}
        self._run = run
        if run.step():
            return self._end(run)
        _show(context, bpy.data.images.get(PREVIEW_NAME) or new_preview_image())
        wm = context.window_manager
        self._timer = wm.event_timer_add(TIMER_SECONDS, window=context.window)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context: Any, event: Any) -> set[str]:
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        assert self._run is not None
        if not self._run.step():
            return {"PASS_THROUGH"}
        context.window_manager.event_timer_remove(self._timer)
        self._timer = None
        return self._end(self._run)

    def cancel(self, context: Any) -> None:
        """Blender ends the modal (file load, quit): stop the run rather than leave it unattended."""
        if self._timer is not None:
            context.window_manager.event_timer_remove(self._timer)
            self._timer = None
        if self._run is not None:  # only the plain-Python task: Blender may be unloading the file right now
            self._run.task.cancel()
            self._run.task.wait(timeout=10.0)


def _make_images(decoded: list[np.ndarray], result: Result, pack: bool, build: Callable[[np.ndarray], Any]) -> list:
    """One stored datablock per decoded image, by `build(rgba)`; all or nothing."""
    made: list[Any] = []
    try:
        for index, rgba in enumerate(decoded):
            made.append(build(rgba))
            _store(made[-1], result, index, pack)
    except Exception:
        remove_images(made)
        raise
    return made


def _keep(image: Any, pack: bool) -> None:
    """A derived image (no generation of its own): packed, or saved next to the .blend as the textures are."""
    if pack:
        image.pack()
        return
    folder = bpy.path.abspath(TEXTURE_FOLDER)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{bpy.path.clean_name(image.name)}.png")
    image.filepath_raw, image.file_format = path, "PNG"
    image.save()
    image.filepath = bpy.path.relpath(path)


def _pbr_for(texture: Any, obj: Any, pack: bool, seamless: str) -> list[Any]:
    """Normal, height and roughness images from `texture` (stored like it), wired into `obj`'s material when given
    (its base colour becomes `texture`); all or nothing."""
    maps = materials.make_pbr_images(texture, materials.seamless_axes(texture, seamless))
    try:
        for image in maps.values():
            _keep(image, pack)
        if obj is not None:
            materials.wire_pbr(materials.apply_texture(obj, texture), maps)
    except Exception:
        remove_images(list(maps.values()))
        raise
    return list(maps.values())


def _texture_finish(context: Any, request: Request, settings: Any) -> Finish:
    obj = context.active_object if settings.apply_material else None
    obj_name = obj.name if obj is not None and obj.type == "MESH" else ""
    name, pack, with_pbr = _name_from(request.prompt, "SD texture"), settings.pack, settings.pbr

    def finish(decoded: list[np.ndarray], result: Result) -> list[Any]:
        made = _make_images(decoded, result, pack, lambda rgba: pixels.new_image(name, rgba))
        target = bpy.data.objects.get(obj_name) if obj_name else None
        try:
            if target is not None:
                materials.apply_texture(target, made[0])
            if with_pbr:
                made += _pbr_for(made[0], target, pack, request.tiling)
        except Exception:
            remove_images(made)
            raise
        return made

    return finish


def _new_images_finish(name: str, pack: bool, size: tuple[int, int] | None = None) -> Finish:
    """Results as new packed/saved images named `name` (scaled to `size` when given)."""

    def finish(decoded: list[np.ndarray], result: Result) -> list[Any]:
        return _make_images(
            decoded, result, pack, lambda rgba: pixels.new_image(name, _fit(rgba, *size) if size else rgba)
        )

    return finish


class SDCORE_OT_generate_texture(_Generation, bpy.types.Operator):
    """Generate a texture from the prompt: a new image packed into the .blend, optionally on the active object"""

    bl_idname = "sdcore.generate_texture"
    bl_label = "Generate Texture"

    def prepare(self, context: Any) -> tuple[Request, str, Finish]:
        settings = props.settings(context)
        request = props.make_request(settings, "txt2img")
        return request, "Generate texture", _texture_finish(context, request, settings)


def _restyle(context: Any, source: np.ndarray, label: str, seamless: bool) -> tuple[Request, str, Finish]:
    settings = props.settings(context)
    name = _name_from(settings.prompt, "render", prefix="Restyled ")
    return _img2img_request(settings, source, seamless=seamless), label, _new_images_finish(name, settings.pack)


class SDCORE_OT_restyle_viewport(_Generation, bpy.types.Operator):
    """Restyle what the 3D viewport shows with img2img (background mode: the active camera's render)"""

    bl_idname = "sdcore.restyle_viewport"
    bl_label = "Restyle Viewport"

    seamless: _RENDER_SEAMLESS

    def prepare(self, context: Any) -> tuple[Request, str, Finish]:
        source, how = render_viewport(context)
        return _restyle(context, source, f"Restyle viewport ({how})", self.seamless)


class SDCORE_OT_restyle_render(_Generation, bpy.types.Operator):
    """Render the active camera with the scene's engine and restyle the render with img2img"""

    bl_idname = "sdcore.restyle_render"
    bl_label = "Restyle Render"

    seamless: _RENDER_SEAMLESS

    def prepare(self, context: Any) -> tuple[Request, str, Finish]:
        return _restyle(context, render_scene(context.scene), "Restyle render", self.seamless)


class _ImageGeneration(_Generation):
    """Works on an image: the one named by `image`, else the Image Editor's; subclasses implement
    `prepare_image(settings, source)`."""

    image: StringProperty(name="Image", default="", description="Image to use; empty: the Image Editor's image")

    def prepare(self, context: Any) -> tuple[Request, str, Finish]:
        return self.prepare_image(props.settings(context), _source_image(context, self.image))

    def prepare_image(self, settings: Any, source: Any) -> tuple[Request, str, Finish]:
        raise NotImplementedError


class SDCORE_OT_img2img_image(_ImageGeneration, bpy.types.Operator):
    """Restyle the image open in the Image Editor with img2img, into a new image"""

    bl_idname = "sdcore.img2img_image"
    bl_label = "Restyle Image"

    def prepare_image(self, settings: Any, source: Any) -> tuple[Request, str, Finish]:
        request = _img2img_request(settings, pixels.to_srgb8(source))
        name = _name_from(source.name, "image", prefix="Restyled ")
        return request, "Restyle image", _new_images_finish(name, settings.pack, tuple(source.size))


class SDCORE_OT_inpaint_image(_ImageGeneration, bpy.types.Operator):
    """Fill the transparent area of the Image Editor's image; opaque pixels stay exactly as they are"""

    bl_idname = "sdcore.inpaint_image"
    bl_label = "Inpaint Transparent Area"

    def prepare_image(self, settings: Any, source: Any) -> tuple[Request, str, Finish]:
        stored = pixels.read_rgba(source)
        alpha = stored[:, :, 3]
        if float(alpha.min()) >= 1.0:
            raise UserError(
                f"The image '{source.name}' has no transparent pixels to fill: erase the area to repaint "
                "(Texture Paint, brush blend 'Erase Alpha') or use Restyle Image"
            )
        request = _img2img_request(settings, pixels.to_srgb8(source), "inpaint")
        request.mask = np.where(alpha < 1.0, 255, 0).astype(np.uint8)
        width, height = source.size
        name = _name_from(source.name, "image", prefix="Inpainted ")
        linear, float_buffer = pixels.is_linear(source), source.is_float
        colorspace, pack = source.colorspace_settings.name, settings.pack

        def build(generated: np.ndarray) -> Any:
            fill = _fit(generated, width, height)[:, :, :3].astype(np.float32) / 255.0
            if linear:
                fill = pixels.srgb_to_linear(fill)
            a = alpha[:, :, None]
            out = np.ones_like(stored)
            out[:, :, :3] = np.where(a >= 1.0, stored[:, :, :3], stored[:, :, :3] * a + fill * (1.0 - a))
            image = bpy.data.images.new(name, width, height, alpha=True, float_buffer=float_buffer)
            image.colorspace_settings.name = colorspace
            pixels.write_rgba(image, out)
            return image

        def finish(decoded: list[np.ndarray], result: Result) -> list[Any]:
            return _make_images(decoded, result, pack, build)

        return request, "Inpaint", finish


class SDCORE_OT_pbr_maps(bpy.types.Operator):
    """Derive normal, height and roughness maps from a texture (seamless like it) and, with 'Apply to active
    object', wire them into the active object's material"""

    bl_idname = "sdcore.pbr_maps"
    bl_label = "Make PBR Maps"
    bl_options = {"REGISTER", "UNDO"}

    image: StringProperty(name="Image", default="", description="Texture to use; empty: the Image Editor's image")

    def execute(self, context: Any) -> set[str]:
        settings = props.settings(context)
        obj = context.active_object if settings.apply_material else None
        try:
            _check_storage(settings.pack)
            texture = _base_color_image(obj) if not self.image and _editor_image(context) is None else None
            texture = texture or _source_image(context, self.image)
            if obj is not None and obj.type != "MESH":
                raise UserError("Select a mesh object to wire the maps into (or turn off 'Apply to active object')")
            fallback = "" if settings.seamless == "NONE" else settings.seamless.lower()  # if the image does not say
            made = _pbr_for(texture, obj, settings.pack, fallback)
        except UserError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"PBR maps: made {', '.join(repr(image.name) for image in made)}")
        return {"FINISHED"}


def _multiple_of_8(value: int) -> int:
    return max(8, value // 8 * 8)


class Projection:
    """Project Texture's plan, in plain Python so the operator, the blocking path and tests share it: the cameras
    in turn, one `Run` each (started by `SESSION`, so it is ticked, previewed and cancelled like every run).

    `advance()` moves to the next camera with something to do (returns False when none is left), `prepare()` renders
    its depth and makes the request (txt2img while nothing is covered yet, else an inpaint of what the textures'
    coverage leaves open, seen from that camera), and the run's finish bakes the picture. `finished(run)` after
    a successful run moves on. Nothing is baked for a cancelled or failed run."""

    def __init__(
        self,
        context: Any,
        cameras: str = "",
        controlnet: str = "",
        control_weight: float = 1.0,
        fill_strength: float = 1.0,
        texture_size: int = projection.TEXTURE_SIZE,
    ) -> None:
        scene = context.scene
        names = [n.strip() for n in cameras.split(",") if n.strip()]
        if not names and scene.camera is not None:
            names = [scene.camera.name]
        if not names:
            raise UserError("The scene has no active camera to project from: add one and make it active")
        for name in names:
            obj = bpy.data.objects.get(name)
            if obj is None or obj.type != "CAMERA":
                raise UserError(f"There is no camera named '{name}'")
        meshes = [o for o in context.selected_objects if o.type == "MESH"]
        if not meshes:
            raise UserError("Select the mesh objects to project onto")
        for obj in meshes:
            materials.ensure_uvs(obj.data)
            projection.texture_for(obj, texture_size)
        self.scene_name = scene.name
        self.camera_names, self.object_names = names, [o.name for o in meshes]
        self.controlnet, self.control_weight, self.fill_strength = controlnet, control_weight, fill_strength
        self.index = 0
        self._pending: tuple[np.ndarray, np.ndarray] | None = None

    def objects(self) -> list[Any]:
        return [bpy.data.objects[n] for n in self.object_names if n in bpy.data.objects]

    def advance(self) -> bool:
        """Move to the next camera that has something to do; False when none is left."""
        scene = bpy.data.scenes[self.scene_name]
        while self.index < len(self.camera_names):
            objects = self.objects()
            covered = any((projection.read_texture(projection.texture_for(o))[:, :, 3] > 0.5).any() for o in objects)
            if not covered:
                self._pending = None
                return True
            camera = bpy.data.objects[self.camera_names[self.index]]
            init, mask, holes = projection.inpaint_inputs(scene, camera, objects)
            if holes > 0:
                self._pending = (init, mask)
                return True
            self.index += 1
        return False

    def prepare(self, context: Any) -> tuple[Request, str, Finish]:
        scene, settings = bpy.data.scenes[self.scene_name], props.settings(context)
        camera_name = self.camera_names[self.index]
        width, height = projection.render_size(scene)
        depth = projection.render_depth(scene, bpy.data.objects[camera_name])
        if self._pending is None:
            request = props.make_request(settings, "txt2img", hires_scale=None, tile=None)
            request.width, request.height = _multiple_of_8(width), _multiple_of_8(height)
        else:
            init, mask = self._pending
            request = _img2img_request(settings, init, kind="inpaint", seamless=False)
            request.mask, request.strength = mask, self.fill_strength
        request.tiling = ""  # a view of the scene, not a tile
        request.control_image = projection.depth_control_image(depth)
        request.control_model = self.controlnet or settings.controlnet
        request.control_weight = self.control_weight
        object_names, scene_name = list(self.object_names), self.scene_name
        label = f"Project texture from '{camera_name}' ({self.index + 1} of {len(self.camera_names)})"

        def finish(decoded: list[np.ndarray], result: Result) -> list[Any]:
            picture = _fit(decoded[0], width, height)
            objects = [bpy.data.objects[n] for n in object_names if n in bpy.data.objects]
            camera = bpy.data.objects[camera_name]
            projection.project_picture(bpy.data.scenes[scene_name], camera, objects, picture[:, :, :3], depth)
            made = []
            for obj in objects:
                texture = projection.texture_for(obj)
                if result.infotexts and result.infotexts[0]:
                    texture["sd_parameters"] = result.infotexts[0]
                materials.apply_texture(obj, texture)
                made.append(texture)
            return made

        return request, label, finish

    def finished(self, run: Run, pack: bool) -> bool:
        """After a run: on success keep the textures (packed when asked) and go on; True if another camera has
        something to do."""
        if run.state is not State.DONE:
            return False
        if pack:
            for obj in self.objects():
                projection.texture_for(obj).pack()
        self.index += 1
        return self.advance()


class SDCORE_OT_project_texture(_Generation, bpy.types.Operator):
    """Generate from each camera with a depth ControlNet and project the picture onto the selected meshes' UVs,
    baked into a texture per object (alpha = covered) wired into its material. Each further camera inpaints only
    what earlier views did not cover"""

    bl_idname = "sdcore.project_texture"
    bl_label = "Project Texture"

    cameras: StringProperty(
        name="Cameras",
        default="",
        description="Camera objects to project from in turn, comma-separated; empty: the scene's active camera",
    )
    controlnet: StringProperty(
        name="ControlNet", default="", description="The server's depth ControlNet; empty: the panel's ControlNet"
    )
    control_weight: FloatProperty(name="ControlNet weight", default=1.0, min=0.0, max=2.0)
    fill_strength: FloatProperty(
        name="Fill strength",
        default=1.0,
        min=0.0,
        max=1.0,
        description="Denoising strength of the further cameras' inpainting (1: the holes are made anew)",
    )
    texture_size: IntProperty(name="Texture size", default=projection.TEXTURE_SIZE, min=64, max=8192)

    _plan: Projection | None = None
    _NOTHING = "Project texture: every texel the cameras see is covered already"

    def _setup(self, context: Any) -> set[str] | None:
        """The plan, moved to its first camera with work; None when there is one, else the operator's (reported)
        outcome: nothing left to do, or refused."""
        try:
            self._plan = Projection(
                context, self.cameras, self.controlnet, self.control_weight, self.fill_strength, self.texture_size
            )
            if not self._plan.advance():
                self.report({"INFO"}, self._NOTHING)
                return {"FINISHED"}
        except UserError as exc:
            SESSION.last_error = str(exc)
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        return None

    def prepare(self, context: Any) -> tuple[Request, str, Finish]:
        assert self._plan is not None
        return self._plan.prepare(context)

    def execute(self, context: Any) -> set[str]:
        refused = self._setup(context)
        if refused is not None:
            return refused
        assert self._plan is not None
        while True:
            run = self._begin(context)
            if run is None:
                return {"CANCELLED"}
            run.wait()
            if not self._plan.finished(run, props.settings(context).pack):
                return self._end(run)
            SESSION.note(run)

    def invoke(self, context: Any, event: Any) -> set[str]:
        if bpy.app.background or context.window is None:
            return self.execute(context)
        refused = self._setup(context)
        if refused is not None:
            return refused
        return _Generation.invoke(self, context, event)

    def modal(self, context: Any, event: Any) -> set[str]:
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        assert self._run is not None and self._plan is not None
        if not self._run.step():
            return {"PASS_THROUGH"}
        if self._plan.finished(self._run, props.settings(context).pack):
            SESSION.note(self._run)
            run = self._begin(context)
            if run is not None:
                self._run = run
                return {"PASS_THROUGH"}
        context.window_manager.event_timer_remove(self._timer)
        self._timer = None
        return self._end(self._run)


class SDCORE_OT_cancel(bpy.types.Operator):
    """Stop the running generation; nothing is made from it"""

    bl_idname = "sdcore.cancel"
    bl_label = "Cancel"

    def execute(self, context: Any) -> set[str]:
        if not SESSION.busy:
            self.report({"INFO"}, "Nothing is running")
            return {"CANCELLED"}
        SESSION.cancel()
        return {"FINISHED"}


class SDCORE_OT_release(bpy.types.Operator):
    """Free the GPU: stop the local server this add-on started, or unload the model"""

    bl_idname = "sdcore.release"
    bl_label = "Release"

    def execute(self, context: Any) -> set[str]:
        try:
            done = SESSION.release()
        except Exception as exc:  # the server may already be gone; releasing must never trap the user
            self.report({"WARNING"}, f"Release: {exc}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Release: {done}")
        return {"FINISHED"}


class SDCORE_OT_test_connection(_Generation, bpy.types.Operator):
    """Check that the engine answers with a tiny image (starts the local server if that is the connection)"""

    bl_idname = "sdcore.test_connection"
    bl_label = "Test Connection"
    bl_options = {"REGISTER"}  # nothing to undo
    makes_images = False

    def prepare(self, context: Any) -> tuple[Request, str, Finish]:
        sampler = props.settings(context).sampler
        request = Request(prompt="test", width=64, height=64, steps=1, seed=0, sampler=sampler)
        return request, "Test connection", lambda decoded, result: []


class SDCORE_OT_history_recall(bpy.types.Operator):
    """Put these settings back into the panel (with the seed that was used)"""

    bl_idname = "sdcore.history_recall"
    bl_label = "Recall"
    bl_options = {"REGISTER", "UNDO"}

    index: IntProperty(default=0, min=0)

    def execute(self, context: Any) -> set[str]:
        settings = props.settings(context)
        if self.index >= len(settings.history):
            self.report({"ERROR"}, "No such history entry")
            return {"CANCELLED"}
        props.recall(settings, self.index)
        return {"FINISHED"}


def _search(names: list[str]) -> Callable[[Any, Any, str], list[str]]:
    """A StringProperty search callback over `names`, the engine's list read when the dialog opens (a search callback
    must not block on the engine)."""
    return lambda _self, _context, _text: names


def _open_picker(op: Any, context: Any, names: list[str], listing: str, what: str, empty: str = "") -> set[str]:
    """Fill `names` from the engine's `listing` method, then open `op`'s dialog. The list is a convenience: a failure
    is a warning, and any name can still be typed."""
    try:
        names[:] = getattr(SESSION.engine_for(context), listing)()
    except Exception as exc:
        op.report({"WARNING"}, f"Could not list the {what}: {exc}")
    if not names and empty:
        op.report({"INFO"}, empty)
    return context.window_manager.invoke_props_dialog(op)


_LORA_NAMES: list[str] = []


class SDCORE_OT_add_lora(bpy.types.Operator):
    """Add one of the engine's LoRAs with a weight (it becomes a <lora:name:weight> tag after the prompt)"""

    bl_idname = "sdcore.add_lora"
    bl_label = "Add LoRA"
    bl_options = {"REGISTER", "UNDO"}

    name: StringProperty(name="LoRA", default="", search=_search(_LORA_NAMES))
    weight: FloatProperty(name="Weight", default=0.8, soft_min=-2.0, soft_max=2.0)

    def invoke(self, context: Any, event: Any) -> set[str]:
        return _open_picker(self, context, _LORA_NAMES, "loras", "LoRAs")

    def execute(self, context: Any) -> set[str]:
        if not self.name.strip():
            self.report({"ERROR"}, "Choose a LoRA")
            return {"CANCELLED"}
        s = props.settings(context)
        try:
            s.loras = client.add_lora(s.loras, self.name.strip(), self.weight)
        except ValueError as exc:
            self.report({"ERROR"}, f"LoRAs: {exc}")
            return {"CANCELLED"}
        return {"FINISHED"}


_MODEL_NAMES: list[str] = []


class SDCORE_OT_choose_model(bpy.types.Operator):
    """Choose one of the server's models for the panel's generations (the server keeps its own for others)"""

    bl_idname = "sdcore.choose_model"
    bl_label = "Choose Model"
    bl_options = {"REGISTER", "UNDO"}

    name: StringProperty(name="Model", default="", search=_search(_MODEL_NAMES))

    def invoke(self, context: Any, event: Any) -> set[str]:
        empty = "This engine has one model (set in the add-on preferences)"
        return _open_picker(self, context, _MODEL_NAMES, "models", "models", empty)

    def execute(self, context: Any) -> set[str]:
        props.settings(context).model = self.name.strip()  # empty: back to the engine's own
        return {"FINISHED"}


_CONTROLNET_NAMES: list[str] = []


class SDCORE_OT_choose_controlnet(bpy.types.Operator):
    """Choose one of the server's ControlNets for Project Texture (a depth ControlNet)"""

    bl_idname = "sdcore.choose_controlnet"
    bl_label = "Choose ControlNet"
    bl_options = {"REGISTER", "UNDO"}

    name: StringProperty(name="ControlNet", default="", search=_search(_CONTROLNET_NAMES))

    def invoke(self, context: Any, event: Any) -> set[str]:
        empty = "The engine lists no ControlNet (a server started with --controlnet-dir does)"
        return _open_picker(self, context, _CONTROLNET_NAMES, "controlnets", "ControlNets", empty)

    def execute(self, context: Any) -> set[str]:
        props.settings(context).controlnet = self.name.strip()
        return {"FINISHED"}


class SDCORE_OT_history_clear(bpy.types.Operator):
    """Forget the recent prompts"""

    bl_idname = "sdcore.history_clear"
    bl_label = "Clear History"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context: Any) -> set[str]:
        props.settings(context).history.clear()
        return {"FINISHED"}


_SIZE_ITEMS: list[tuple[str, str, str]] = []  # Blender keeps no reference to a dynamic enum's strings: we must


def _size_items(_self: Any, _context: Any) -> list[tuple[str, str, str]]:
    known = SESSION.engine is not None and bool(SESSION.engine.model_sizes)
    why = "one of the model's sizes" if known else "the engine names the model's own once it has seen the model"
    _SIZE_ITEMS[:] = [
        (f"{w}x{h}", f"{w} x {h}", f"Width {w}, height {h} ({why})") for w, h in size_choices(SESSION.engine)
    ]
    return _SIZE_ITEMS


class SDCORE_OT_size(bpy.types.Operator):
    """Width and height from the model's sizes (SDXL models: the sizes they were trained at)"""

    bl_idname = "sdcore.size"
    bl_label = "Model Sizes"
    bl_property = "size"
    bl_options = {"REGISTER", "UNDO"}

    size: EnumProperty(name="Size", items=_size_items)

    def execute(self, context: Any) -> set[str]:
        settings = props.settings(context)
        settings.width, settings.height = (int(v) for v in self.size.split("x"))
        return {"FINISHED"}


CLASSES = (
    SDCORE_OT_size,
    SDCORE_OT_generate_texture,
    SDCORE_OT_restyle_viewport,
    SDCORE_OT_restyle_render,
    SDCORE_OT_img2img_image,
    SDCORE_OT_inpaint_image,
    SDCORE_OT_pbr_maps,
    SDCORE_OT_project_texture,
    SDCORE_OT_cancel,
    SDCORE_OT_release,
    SDCORE_OT_test_connection,
    SDCORE_OT_history_recall,
    SDCORE_OT_history_clear,
    SDCORE_OT_add_lora,
    SDCORE_OT_choose_model,
    SDCORE_OT_choose_controlnet,
)


register, unregister = bpy.utils.register_classes_factory(CLASSES)
