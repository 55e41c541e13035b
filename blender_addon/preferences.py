"""Add-on preferences: how to reach the engine (server URL, a local server to start, or in-process)."""

from __future__ import annotations

from typing import Any

import bpy
from bpy.props import EnumProperty, IntProperty, StringProperty

from .engine import Engine, UserError
from .inprocess import InProcessEngine, sd_core_importable
from .server_engine import LocalServerEngine, ServerEngine

ADDON_ID = __package__  # "bl_ext.<repo>.sd_core_blender" when installed as an extension

BUILTIN_PLACEHOLDER = "Built-in texture model"  # what an empty Model field means, shown in the empty field
CONNECTIONS = [
    (
        "LOCAL",
        "Start a local server",
        "Start 'sd-core serve' with the Python interpreter and model below (Blender's own Python has no torch)",
    ),
    ("SERVER", "Server URL", "Use an 'sd-core serve' (or A1111-compatible) server that is already running"),
    ("INPROCESS", "In Blender's Python", "Run sd_core inside Blender; needs sd_core and torch in Blender's Python"),
]


class SDCORE_AP_preferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    connection: EnumProperty(name="Engine", items=CONNECTIONS, default="LOCAL")
    url: StringProperty(name="URL", default="http://127.0.0.1:7860", description="Address of the running server")
    token: StringProperty(
        name="Token", default="", subtype="PASSWORD", description="Bearer token, if the server was started with one"
    )
    python: StringProperty(
        name="Python",
        default="",
        subtype="FILE_PATH",
        description="Python interpreter that has sd-core installed (e.g. .../venv/bin/python)",
    )
    model: StringProperty(
        name="Model",
        default="",
        subtype="FILE_PATH",
        description="Checkpoint (.safetensors, .ckpt) or diffusers folder; empty: sd-core's built-in texture model",
    )
    port: IntProperty(name="Port", default=0, min=0, max=65535, description="0: any free port")
    lora_dir: StringProperty(
        name="LoRA folder",
        default="",
        subtype="DIR_PATH",
        description="Folder of LoRA files (.safetensors) the panel's LoRAs name (a running server has its own)",
    )

    def draw(self, context: Any) -> None:
        layout = self.layout
        layout.prop(self, "connection")
        col = layout.column()
        if self.connection == "SERVER":
            col.prop(self, "url")
            col.prop(self, "token")
        elif self.connection == "LOCAL":
            col.prop(self, "python")
            col.prop(self, "model", placeholder=BUILTIN_PLACEHOLDER)
            col.prop(self, "port")
            col.prop(self, "lora_dir")
        else:
            col.prop(self, "model", placeholder=BUILTIN_PLACEHOLDER)
            col.prop(self, "lora_dir")
            if not sd_core_importable():
                col.label(text="sd_core and torch are not importable in Blender's Python", icon="ERROR")
        row = layout.row()
        row.operator("sdcore.test_connection", icon="PLUGIN")
        row.operator("sdcore.release", icon="X")


def preferences(context: Any) -> Any:
    return context.preferences.addons[ADDON_ID].preferences


def engine_key(prefs: Any) -> tuple:
    """What identifies an engine: changing any of these makes a new one (and releases the old)."""
    if prefs.connection == "SERVER":
        return ("SERVER", prefs.url.strip(), prefs.token)
    model = bpy.path.abspath(prefs.model) if prefs.model else ""
    loras = bpy.path.abspath(prefs.lora_dir) if prefs.lora_dir else ""
    if prefs.connection == "LOCAL":
        python = bpy.path.abspath(prefs.python) if prefs.python else ""
        return ("LOCAL", python, model, prefs.port, prefs.token, loras)
    return ("INPROCESS", model, loras)


def make_engine(key: tuple) -> Engine:
    kind = key[0]
    if kind == "SERVER":
        _, url, token = key
        if not url:
            raise UserError("No server URL: set it in the add-on preferences")
        return ServerEngine(url, token=token)
    if kind == "LOCAL":
        _, python, model, port, token, loras = key
        return LocalServerEngine(python, model, port=port or None, token=token, lora_dir=loras)
    return InProcessEngine(key[1], lora_dir=key[2])


def register() -> None:
    bpy.utils.register_class(SDCORE_AP_preferences)


def unregister() -> None:
    bpy.utils.unregister_class(SDCORE_AP_preferences)
