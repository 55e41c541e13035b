"""A 4096 px seamless texture from the Blender add-on's panel operator, in background mode (issue 37, acceptance 3).

    python benchmarks/blender_texture_4096.py [--bpy .venv-bpy50/bin/python] [--out /tmp/blender4096]

Builds the extension zip, then in real Blender (the bpy wheel): installs it, sets the preferences to "Start a local
server" with an empty Model field (the built-in texture model), the panel to 512x512, 20 steps, Euler, seed 1,
Seamless XY, Texture 4K, prompt "large black and white checkerboard", and runs `bpy.ops.sdcore.generate_texture()`
(blocking, as background mode does), sampling the run's progress every 2 s. Back here: the texture's seam ratio as
the model card measures it (`sd_core.training.evaluate.wrap_ratio`), written with the timings to
`--out/blender-4096.json` and the texture to `--out/texture4096.png`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPT = "large black and white checkerboard"


def inside_blender(zip_path: str, python: str, out: str) -> None:
    import importlib

    import bpy
    import numpy as np

    result = bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default", enable_on_install=True)
    assert result == {"FINISHED"}
    name = "bl_ext.user_default.sd_core_blender"
    addon = importlib.import_module(name)
    prefs = bpy.context.preferences.addons[name].preferences
    prefs.connection, prefs.python, prefs.model = "LOCAL", python, ""  # empty: the built-in model
    s = bpy.context.scene.sd_core
    s.prompt, s.width, s.height, s.steps, s.sampler = PROMPT, 512, 512, 20, "Euler"
    s.seed, s.random_seed, s.seamless, s.texture_size, s.apply_material, s.pack = 1, False, "XY", "4K", False, True
    log: list = []
    stop = threading.Event()

    def watch() -> None:
        start = time.monotonic()
        while not stop.wait(2.0):
            run = addon.runs.SESSION.run
            if run is not None:
                t = run.task
                log.append([round(time.monotonic() - start, 1), t.state.value, t.phase, t.phases, t.step, t.total,
                            round(t.fraction, 4)])  # fmt: skip

    threading.Thread(target=watch, daemon=True).start()
    start = time.monotonic()
    done = bpy.ops.sdcore.generate_texture()
    seconds = time.monotonic() - start
    stop.set()
    image = bpy.data.images[PROMPT]
    width, height = image.size
    flat = np.empty(width * height * 4, dtype=np.float32)
    image.pixels.foreach_get(flat)
    rgb = np.round(flat.reshape(height, width, 4)[::-1, :, :3] * 255).astype(np.uint8)
    np.save(os.path.join(out, "texture4096.npy"), rgb)
    record = {"operator": sorted(done), "seconds": round(seconds, 1), "size": [width, height],
              "parameters": image["sd_parameters"], "progress": log, "blender": bpy.app.version_string}  # fmt: skip
    Path(out, "bpy-run.json").write_text(json.dumps(record, indent=1))
    addon.runs.SESSION.release()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bpy", type=Path, default=REPO / ".venv-bpy50" / "bin" / "python")
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="blender4096_")))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    built = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_blender_addon.py"), "--blender-python", str(args.bpy),
         "--output-dir", str(args.out)], capture_output=True, text=True, check=True,
    )  # fmt: skip
    zip_path = built.stdout.strip().splitlines()[-1]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="blender4096_user_"))
    load_before = os.getloadavg()[0]
    subprocess.run([str(args.bpy), __file__, "--inside", zip_path, sys.executable, str(args.out)], env=env, check=True)
    import numpy as np
    from PIL import Image

    from sd_core.training import evaluate

    record = json.loads((args.out / "bpy-run.json").read_text())
    texture = np.load(args.out / "texture4096.npy")
    Image.fromarray(texture).save(args.out / "texture4096.png")
    record.update(
        command=" ".join(sys.argv),
        wrap_ratio=round(evaluate.wrap_ratio([texture]), 3),
        wrap_ratio_x=round(evaluate.wrap_ratio([texture], "x"), 3),
        wrap_ratio_y=round(evaluate.wrap_ratio([texture], "y"), 3),
        load_average_1min=[round(load_before, 2), round(os.getloadavg()[0], 2)],
        cpus=os.cpu_count(),
    )
    (args.out / "blender-4096.json").write_text(json.dumps(record, indent=1))
    print(json.dumps({k: v for k, v in record.items() if k != "progress"}, indent=1))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--inside":
        inside_blender(*sys.argv[2:5])
    else:
        raise SystemExit(main())
