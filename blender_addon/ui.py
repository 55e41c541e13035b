"""Sidebar panels (N panel, tab "SD Core") in the Image Editor and the Shader Editor."""

from __future__ import annotations

import time
from typing import Any

import bpy

from . import props
from .runs import PREVIEW_NAME, SESSION

CATEGORY = "SD Core"


def draw_status(layout: Any) -> None:
    """Progress with the live preview and Cancel while running; the last error otherwise."""
    run = SESSION.run
    if SESSION.busy and run is not None:
        task = run.task
        box = layout.box()
        step = f"step {task.step}/{task.total}" if task.total else task.text or task.state.value
        if task.total and task.phases > 1:
            step = f"pass {task.phase}/{task.phases}, {step}"
        box.progress(factor=task.fraction, type="BAR", text=f"{run.label}: {step}")
        preview = bpy.data.images.get(PREVIEW_NAME)
        if preview is not None and preview.preview is not None:
            box.template_icon(icon_value=preview.preview.icon_id, scale=6.0)
        box.operator("sdcore.cancel", icon="CANCEL")
    elif SESSION.last_error:
        box = layout.box()
        box.alert = True
        for index, line in enumerate(_wrap(SESSION.last_error, 48)):
            box.label(text=line, icon="ERROR" if index == 0 else "BLANK1")


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + ([line] if line else [])


def _value_or_auto(layout: Any, s: Any, value: str, auto: str, **toggle: Any) -> None:
    """A value greyed out while the toggle beside it (`auto`: random seed, the model's CFG) is on."""
    row = layout.row(align=True)
    sub = row.row(align=True)
    sub.enabled = not getattr(s, auto)
    sub.prop(s, value)
    row.prop(s, auto, toggle=True, **toggle)


def _model_cfg_text(s: Any = None) -> str:
    """The toggle's label, with the model's own value once the engine has seen the model (the chosen model's, from
    the server's list, when the panel names one)."""
    engine = SESSION.engine
    cfg = engine.model_cfg_scale if engine is not None else None
    if engine is not None and s is not None and s.model:
        cfg = engine.listed_cfg_scales.get(s.model)
    return "Model's CFG" if cfg is None else f"Model's CFG ({cfg:g})"


def draw_settings(layout: Any, s: Any) -> None:
    row = layout.row(align=True)
    row.prop(s, "model", text="", icon="FILE_3D", placeholder="The engine's model")
    row.operator("sdcore.choose_model", text="", icon="DOWNARROW_HLT")
    col = layout.column(align=True)
    col.prop(s, "prompt", text="")
    col.prop(s, "negative_prompt", text="", icon="REMOVE")
    row = col.row(align=True)
    row.prop(s, "loras", text="", icon="MODIFIER")
    row.operator("sdcore.add_lora", text="", icon="ADD")
    col = layout.column(align=True)
    row = col.row(align=True)
    row.prop(s, "width")
    row.prop(s, "height")
    row.operator_menu_enum("sdcore.size", "size", text="", icon="PRESET")  # the model's sizes (SDXL's for SDXL)
    col.prop(s, "steps")
    _value_or_auto(col, s, "cfg_scale", "model_cfg", text=_model_cfg_text(s))
    layout.prop(s, "sampler")
    _value_or_auto(layout, s, "seed", "random_seed", icon="FILE_REFRESH")
    row = layout.row(align=True)
    row.label(text="Seamless")
    row.prop(s, "seamless", expand=True)
    row = layout.row(align=True)
    row.label(text="Texture")
    row.prop(s, "texture_size", expand=True)
    layout.prop(s, "batch_size")


class _Panel:
    bl_region_type = "UI"
    bl_category = CATEGORY
    bl_label = "Stable Diffusion"

    def draw(self, context: Any) -> None:
        layout = self.layout
        s = props.settings(context)
        draw_status(layout)
        draw_settings(layout, s)
        busy = SESSION.busy
        col = layout.column(align=True)
        col.enabled = not busy
        col.operator("sdcore.generate_texture", icon="TEXTURE")
        row = col.row(align=True)
        row.prop(s, "apply_material", toggle=True, icon="MATERIAL")
        row.prop(s, "pbr", toggle=True, icon="NODE_MATERIAL")
        row.prop(s, "pack", toggle=True, icon="PACKAGE")
        col.operator("sdcore.pbr_maps", icon="NODE_MATERIAL")
        if context.space_data.type == "NODE_EDITOR":  # the shader editor: about objects and their materials
            col = layout.column(align=True)
            col.enabled = not busy
            row = col.row(align=True)
            row.prop(s, "controlnet")
            row.operator("sdcore.choose_controlnet", text="", icon="DOWNARROW_HLT")
            col.operator("sdcore.project_texture", icon="MOD_UVPROJECT")
        col = layout.column(align=True)
        col.enabled = not busy
        col.prop(s, "strength", slider=True)
        col.operator("sdcore.restyle_viewport", icon="VIEW3D")
        col.operator("sdcore.restyle_render", icon="RENDER_STILL")
        if context.space_data.type == "IMAGE_EDITOR":
            col.operator("sdcore.img2img_image", icon="IMAGE_DATA")
            col.operator("sdcore.inpaint_image", icon="BRUSH_DATA")
        row = layout.row()
        engine = SESSION.engine
        row.label(text=engine.describe() if engine is not None else "engine: not started", icon="PLUGIN")
        row.operator("sdcore.release", text="", icon="X")


class SDCORE_PT_image_editor(_Panel, bpy.types.Panel):
    bl_idname = "SDCORE_PT_image_editor"
    bl_space_type = "IMAGE_EDITOR"


class SDCORE_PT_shader_editor(_Panel, bpy.types.Panel):
    bl_idname = "SDCORE_PT_shader_editor"
    bl_space_type = "NODE_EDITOR"

    @classmethod
    def poll(cls, context: Any) -> bool:
        return getattr(context.space_data, "tree_type", "") == "ShaderNodeTree"


class _HistoryPanel:
    bl_region_type = "UI"
    bl_category = CATEGORY
    bl_label = "History"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context: Any) -> None:
        s = props.settings(context)
        layout = self.layout
        if not s.history:
            layout.label(text="Nothing generated yet")
            return
        for index, entry in enumerate(s.history):
            row = layout.row(align=True)
            age = _age(entry.when)
            text = f"{entry.prompt or '(no prompt)'} · {entry.width}x{entry.height} · seed {entry.used_seed} · {age}"
            op = row.operator("sdcore.history_recall", text=text, icon="RECOVER_LAST", emboss=False)
            op.index = index
        layout.operator("sdcore.history_clear", icon="TRASH")


def _age(when: float) -> str:
    seconds = max(0, int(time.time() - when))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return "just now"


class SDCORE_PT_image_history(_HistoryPanel, bpy.types.Panel):
    bl_idname = "SDCORE_PT_image_history"
    bl_space_type = "IMAGE_EDITOR"
    bl_parent_id = "SDCORE_PT_image_editor"


class SDCORE_PT_shader_history(_HistoryPanel, bpy.types.Panel):
    bl_idname = "SDCORE_PT_shader_history"
    bl_space_type = "NODE_EDITOR"
    bl_parent_id = "SDCORE_PT_shader_editor"


CLASSES = (SDCORE_PT_image_editor, SDCORE_PT_shader_editor, SDCORE_PT_image_history, SDCORE_PT_shader_history)


register, unregister = bpy.utils.register_classes_factory(CLASSES)
