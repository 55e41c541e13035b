"""SD Inpaint for Krita: inpaint the selection through a local `sd-core serve`, into new layers.

Inside Krita this registers the docker and actions. Outside Krita (tests, kritarunner scripts) importing the
package does nothing, so the Krita-free modules (`regions`, `generation`, `settings`) import anywhere.
"""

from __future__ import annotations

try:
    import krita as _krita
except ImportError:  # plain Python: no registration
    _krita = None

if _krita is not None and _krita.Krita.instance() is not None and not hasattr(_krita, "_sd_krita_registered"):
    from .plugin import register

    _krita._sd_krita_registered = True  # a second import (e.g. a test importing the package) must not re-register
    register()
