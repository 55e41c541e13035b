"""Build the Blender extension zip with Blender's own extension tool, then validate it with that tool.

    python scripts/build_blender_addon.py [--blender-python .venv-bpy50/bin/python] [--output-dir dist]
                                          [--validate-with .venv-bpy42/bin/python ...]

The add-on needs the stdlib HTTP client `sd_core/client.py` and the numpy-only PBR and projection maths
`sd_core/pbr.py` and `sd_core/projection.py`. Rather than keeping second copies in `blender_addon/`, the source is
staged in a temporary folder with them copied in as `sd_client.py`, `sd_pbr.py` and `sd_projection.py`, and the zip
is built from
there (Blender's builder skips symlinks, so a link would not do). The tool (`blender_ext.py`) ships inside the `bpy`
wheel; `scripts/install_bpy.sh` makes the venvs that have it. Prints the zip's path last; exits non-zero on failure.
"""

from __future__ import annotations

import argparse
import ast
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "blender_addon"
CLIENT = REPO / "sd_core" / "client.py"
VENDORED_NAME = "sd_client.py"
PBR = REPO / "sd_core" / "pbr.py"  # numpy only: the PBR maps are made in Blender's own Python
PBR_NAME = "sd_pbr.py"
PROJECTION = REPO / "sd_core" / "projection.py"  # numpy only: Project Texture's geometry
PROJECTION_NAME = "sd_projection.py"
DEFAULT_PYTHON = REPO / ".venv-bpy50" / "bin" / "python"


def extension_tool(python: Path) -> Path:
    """`blender_ext.py` inside the bpy package of `python`'s environment (found without importing bpy)."""
    out = subprocess.run(
        [str(python), "-c", "import importlib.util as u; print(u.find_spec('bpy').submodule_search_locations[0])"],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise SystemExit(f"{python} has no bpy; run: bash scripts/install_bpy.sh\n{out.stderr.strip()}")
    found = sorted(Path(out.stdout.strip()).glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    if not found:
        raise SystemExit(f"Blender's extension tool (blender_ext.py) is not in {out.stdout.strip()}")
    return found[-1]


def check_standalone(path: Path, allowed: tuple[str, ...] = ()) -> None:
    """A vendored module may import only the standard library (and `allowed`, e.g. numpy, which Blender ships)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            raise SystemExit(f"{path}:{node.lineno}: relative import; the vendored client must stand alone")
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        for name in names:
            top = name.split(".")[0]
            if top != "__future__" and top not in sys.stdlib_module_names and top not in allowed:
                raise SystemExit(f"{path}:{node.lineno}: imports {name!r}, which Blender's Python does not have")


def stage(into: Path) -> Path:
    """A copy of the add-on source with the client (and the PBR maths) vendored in."""
    staged = into / "sd_core_blender"
    shutil.copytree(SOURCE, staged, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.zip"))
    check_standalone(CLIENT)
    shutil.copyfile(CLIENT, staged / VENDORED_NAME)
    check_standalone(PBR, allowed=("numpy",))
    shutil.copyfile(PBR, staged / PBR_NAME)
    check_standalone(PROJECTION, allowed=("numpy",))
    shutil.copyfile(PROJECTION, staged / PROJECTION_NAME)
    return staged


def run_tool(python: Path, *args: str) -> None:
    cmd = [str(python), str(extension_tool(python)), *args]
    out = subprocess.run(cmd, capture_output=True, text=True)
    sys.stdout.write(out.stdout)
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"failed ({out.returncode}): {' '.join(cmd)}")


def build(output_dir: Path, python: Path, validate_with: list[Path]) -> Path:
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sd_core_blender_") as tmp:
        staged = stage(Path(tmp))
        before = set(output_dir.glob("*.zip"))
        run_tool(python, "build", "--source-dir", str(staged), "--output-dir", str(output_dir))
    built = sorted(set(output_dir.glob("*.zip")) - before) or sorted(output_dir.glob("sd_core_blender-*.zip"))
    if not built:
        raise SystemExit(f"the build wrote no zip into {output_dir}")
    zip_path = max(built, key=lambda p: p.stat().st_mtime)
    for validator in [python, *validate_with]:
        run_tool(validator, "validate", str(zip_path))
    return zip_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--blender-python",
        type=Path,
        default=DEFAULT_PYTHON,
        help="a Python with the bpy wheel, whose extension tool builds the zip",
    )
    parser.add_argument("--output-dir", type=Path, default=REPO / "dist")
    parser.add_argument(
        "--validate-with",
        type=Path,
        action="append",
        default=[],
        help="more bpy Pythons whose extension tool must also accept the zip (repeatable)",
    )
    args = parser.parse_args(argv)
    if not args.blender_python.exists():
        raise SystemExit(f"{args.blender_python} does not exist; run: bash scripts/install_bpy.sh")
    print(build(args.output_dir.resolve(), args.blender_python, args.validate_with))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
