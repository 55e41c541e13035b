"""Build the Krita plugin zip (Tools > Scripts > Import Python Plugin from File), or install the plugin directly.

    python scripts/build_krita_plugin.py                      # -> dist/sd_krita-<version>.zip
    python scripts/build_krita_plugin.py --install            # -> ~/.local/share/krita/pykrita (+ enable it)
    python scripts/build_krita_plugin.py --install DIR --no-enable

The zip holds `sd_krita.desktop` and the `sd_krita/` package at its top level, with explicit folder entries:
Krita's importer finds the package by its `sd_krita/` entry and an `__init__.py` inside it. The shared client
(`sd_krita/sd_client.py`, a symlink to `sd_core/client.py` in the repository) is stored as a real file.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "krita_plugin"
MODULE = "sd_krita"
SKIP_DIRS = {"__pycache__"}
SKIP_SUFFIXES = {".pyc", ".pyo"}
FIXED_TIME = (2024, 1, 1, 0, 0, 0)  # same bytes for the same sources


def version() -> str:
    text = (REPO / "sd_core" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__ = "([^"]+)"', text, re.MULTILINE)
    return match.group(1) if match else "0"


def plugin_files() -> list[tuple[str, Path]]:
    """(name inside the plugin, real file) for the .desktop file and every package file, symlinks resolved."""
    files = [(f"{MODULE}.desktop", PLUGIN / f"{MODULE}.desktop")]
    package = PLUGIN / MODULE
    for root, dirs, names in os.walk(package):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        for name in sorted(names):
            path = Path(root) / name
            if path.suffix in SKIP_SUFFIXES:
                continue
            real = path.resolve(strict=True)  # a dangling symlink is an error, not a silently missing module
            files.append((path.relative_to(PLUGIN).as_posix(), real))
    return files


def folders(names: list[str]) -> list[str]:
    out = set()
    for name in names:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            out.add("/".join(parts[:i]) + "/")
    return sorted(out)


def build_zip(out: Path) -> Path:
    files = plugin_files()
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for folder in folders([name for name, _ in files]):
            info = zipfile.ZipInfo(folder, FIXED_TIME)
            info.external_attr = (0o40755 << 16) | 0x10
            zf.writestr(info, b"")
        for name, real in files:
            info = zipfile.ZipInfo(name, FIXED_TIME)
            info.external_attr = 0o100644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, real.read_bytes())
    return out


def default_pykrita() -> Path:
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA", Path.home())) / "krita" / "pykrita"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "krita" / "pykrita"
    data = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data / "krita" / "pykrita"


def default_kritarc() -> Path:
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA", Path.home())) / "kritarc"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Preferences" / "kritarc"
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "kritarc"


def install(pykrita: Path) -> Path:
    """Copy the plugin into a `pykrita` folder (replacing an older copy), symlinks resolved."""
    target = pykrita / MODULE
    if target.exists():
        shutil.rmtree(target)
    for name, real in plugin_files():
        dest = pykrita / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(real, dest)
    return target


def enable(kritarc: Path) -> None:
    """Set `[python] enable_sd_krita=true`, keeping the rest of kritarc as it is."""
    text = kritarc.read_text(encoding="utf-8") if kritarc.exists() else ""
    if "[python]" not in text.splitlines():
        kritarc.parent.mkdir(parents=True, exist_ok=True)
        kritarc.write_text(text + ("\n" if text and not text.endswith("\n") else "") + "[python]\n", encoding="utf-8")
        text = kritarc.read_text(encoding="utf-8")
    lines = text.splitlines()
    start = lines.index("[python]")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines))
    key = f"enable_{MODULE}="
    body = [line for line in lines[start + 1 : end] if not line.startswith(key)]
    lines[start + 1 : end] = [f"{key}true", *body]
    kritarc.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="zip path (default: dist/sd_krita-<version>.zip)")
    parser.add_argument(
        "--install",
        nargs="?",
        type=Path,
        const=default_pykrita(),
        default=None,
        metavar="PYKRITA",
        help="copy the plugin into this pykrita folder instead of building a zip",
    )
    parser.add_argument("--kritarc", type=Path, default=default_kritarc(), help="kritarc to enable the plugin in")
    parser.add_argument("--no-enable", action="store_true", help="with --install: leave kritarc alone")
    args = parser.parse_args(argv)
    if args.install is not None:
        target = install(args.install)
        if not args.no_enable:
            enable(args.kritarc)
        print(target)
        return 0
    out = args.out or REPO / "dist" / f"{MODULE}-{version()}.zip"
    print(build_zip(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
