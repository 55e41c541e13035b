"""SD Core Textures: a Blender extension (4.2 LTS to 5.x) that makes textures from prompts and restyles renders
with sd-core, without freezing Blender.

Nothing here imports bpy at module level: `engine`, `task` and `png` are plain Python and are tested outside
Blender; the Blender modules load in `register()`.
"""

from __future__ import annotations

import atexit

_MODULES = ("props", "preferences", "operators", "ui")


def _modules() -> list:
    import importlib

    return [importlib.import_module(f".{name}", __package__) for name in _MODULES]


def _release_at_exit() -> None:
    """Blender quitting: stop the local server this add-on started, so no orphan keeps the GPU; a server at a URL is
    someone else's and keeps its model."""
    from .runs import SESSION

    try:
        SESSION.shutdown()
    except Exception:
        pass


def _cancel_on_load(*_args: object) -> None:
    """A file is being loaded: a run's results would land in the wrong file, so it stops."""
    from .runs import SESSION

    SESSION.cancel()


def register() -> None:
    import bpy

    for module in _modules():
        module.register()
    bpy.app.handlers.persistent(_cancel_on_load)  # kept across file loads, which it exists for
    bpy.app.handlers.load_pre.append(_cancel_on_load)
    atexit.register(_release_at_exit)


def unregister() -> None:
    import bpy

    if _cancel_on_load in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(_cancel_on_load)
    atexit.unregister(_release_at_exit)
    _release_at_exit()
    for module in reversed(_modules()):
        module.unregister()
