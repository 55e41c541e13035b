"""The detectors against a person's eye: images of the built-in model labelled by looking at them
(`tests/training/data/labelled/`, the rule in its README). Each detector's agreement with the labels, over the images
not marked unsure, must be at least 90%; `python tests/training/test_labelled_set.py` prints the table and the
disagreements."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sd_core.training import data, detectors

FOLDER = Path(__file__).parent / "data" / "labelled"
MIN_AGREEMENT = 0.9


CHECK_BATCH = 384
"""Files from 384 on were labelled after the detectors were final and never used to change them."""


@cache
def labelled(check_only: bool = False) -> list[tuple[dict, np.ndarray]]:
    """(label, image) for every image labelled sure (`check_only`: of the check batch only)."""
    labels = json.loads((FOLDER / "labels.json").read_text())
    out = []
    for entry in labels:
        if check_only and int(entry["file"][:3]) < CHECK_BATCH:
            continue
        if not entry["unsure"]:
            with Image.open(FOLDER / entry["file"]) as im:
                out.append((entry, np.asarray(im.convert("RGB"))))
    return out


def wrong_colour(entry: dict) -> str:
    """A colour the label does not name, chosen by the file's index (a fixed, spread choice)."""
    others = [c for c in data.COLOURS if c not in entry["colours"]]
    return others[int(entry["file"][:3]) % len(others)]


@cache
def agreement(check_only: bool = False) -> dict[str, dict]:
    """Per detector: {"n", "agree", "rate", "positives" (labelled yes), "found" (of those, detector yes), "misses"
    (files where it disagrees)}."""
    rows: dict[str, dict] = {}

    def add(name: str, file: str, detector: bool, label: bool) -> None:
        row = rows.setdefault(name, {"n": 0, "agree": 0, "positives": 0, "found": 0, "misses": []})
        row["n"] += 1
        row["positives"] += int(label)
        if detector == label:
            row["agree"] += 1
            row["found"] += int(label)
        else:
            row["misses"].append(file)

    for entry, image in labelled(check_only):
        file, pattern = entry["file"], entry["pattern"]
        for name in data.PATTERNS:
            add(name, file, detectors.is_pattern(image, name), pattern == name)
        add(
            "detect_pattern (exact)",
            file,
            detectors.detect_pattern(image) == (None if pattern == "none" else pattern),
            True,
        )
        colours = entry["colours"]
        if len(colours) == 2:
            wrong = (colours[0], wrong_colour(entry))
            add("colours: both named present", file, detectors.colours_present(image, colours, pattern), True)
            add("colours: a wrong one absent", file, detectors.colours_present(image, wrong, pattern), False)
        if pattern in detectors.ROLE_PATTERNS and (entry["figure"] or entry["background"]):
            want = (entry["figure"], entry["background"])
            seen = detectors.roles(image, pattern)
            same = all(w is None or w == s for w, s in zip(want, seen, strict=True))
            add("roles: figure on background", file, same, True)
            if all(want):
                add("roles: swapped refused", file, seen == want[::-1], False)
    for row in rows.values():
        row["rate"] = row["agree"] / row["n"]
    return rows


def table(check_only: bool = False) -> str:
    lines = [
        "| detector | sure images | labelled yes: found | labelled no: refused | agreement |",
        "|---|---|---|---|---|",
    ]
    for name, row in agreement(check_only).items():
        pos, neg = row["positives"], row["n"] - row["positives"]
        found = f"{row['found']}/{pos}" if pos else "-"
        refused = f"{row['agree'] - row['found']}/{neg}" if neg else "-"
        lines.append(f"| {name} | {row['n']} | {found} | {refused} | {row['agree']}/{row['n']} = {row['rate']:.3f} |")
    return "\n".join(lines)


def test_the_set_is_complete_and_mostly_sure():
    labels = json.loads((FOLDER / "labels.json").read_text())
    assert len(labels) == len(list(FOLDER.glob("[0-9][0-9][0-9].png"))) >= 400
    assert {e["pattern"] for e in labels} == {*data.PATTERNS, "none"}
    assert len(labelled()) >= 150


@pytest.mark.parametrize("name", list(data.PATTERNS) + ["detect_pattern (exact)"])
def test_pattern_detectors_agree_with_the_labels(name):
    row = agreement()[name]
    print(table())
    assert row["rate"] >= MIN_AGREEMENT, (name, row["misses"])


@pytest.mark.parametrize(
    "name",
    [
        "colours: both named present",
        "colours: a wrong one absent",
        "roles: figure on background",
        "roles: swapped refused",
    ],
)
def test_colour_and_role_checks_agree_with_the_labels(name):
    row = agreement()[name]
    assert row["rate"] >= MIN_AGREEMENT, (name, row["misses"])


def test_agreement_on_the_check_batch():
    """The images labelled after the detectors were final: the same agreement on images no choice saw."""
    rows = agreement(check_only=True)
    print(table(check_only=True))
    low = {name: row["misses"] for name, row in rows.items() if row["rate"] < MIN_AGREEMENT}
    assert not low, low


if __name__ == "__main__":
    print(table())
    print("\ncheck batch only (labelled after the detectors were final):\n")
    print(table(check_only=True))
    for name, row in agreement(check_only=True).items():
        print("check:", name, row["misses"])
    for name, row in agreement().items():
        print(name, row["misses"])
