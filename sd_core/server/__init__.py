"""`sd-core serve`: a local generation server that speaks the AUTOMATIC1111 web UI API.

Existing A1111 clients (webuiapi, editor plugins, scripts) work unchanged for the features the engine has. Needs
the `server` extra (fastapi, uvicorn). Entry points: `sd-core serve ...` and `python -m sd_core.server ...`.
"""

from __future__ import annotations

from .main import main, serve

__all__ = ["main", "serve"]
