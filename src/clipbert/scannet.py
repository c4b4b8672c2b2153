"""ScanNet's layout and the SQA3D baseline's scene selection.

Which scans a run needs: the `_00` scan of every scene of `scannetv2.txt` minus the scenes of
`scannetv2_test.txt` (707 scenes), optionally only those the question files use; where each
scan lives (`<scans_dir>/<scene>/<scene>.sens`). The `.sens` format itself is `sens.py`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from clipbert.errors import ClipbertError, machine_error
from clipbert.sqa import question_scenes


def read_list(path: str | os.PathLike) -> list[str]:
    """The scan ids of a ScanNet list file, one per line."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise machine_error(e, path) or ClipbertError(
            f"{path}: cannot read scene list ({e.strerror})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def select_scenes(
    all_list: str | os.PathLike,
    test_list: str | os.PathLike,
    question_files: Sequence[str | os.PathLike] = (),
) -> list[str]:
    """The SQA3D baseline's scenes: `_00` scans of `all_list` not in `test_list` (sorted).

    With question files, only the scenes they use; a question on a scene outside that set is an
    error, since the baseline would have no video for it.
    """
    test = set(read_list(test_list))
    scenes = sorted({s for s in read_list(all_list) if s.endswith("_00") and s not in test})
    if not question_files:
        return scenes
    chosen = set(scenes)
    used: set[str] = set()
    for qf in question_files:
        q = question_scenes(qf)
        outside = sorted(q - chosen)
        if outside:
            shown = ", ".join(outside[:10]) + (" ..." if len(outside) > 10 else "")
            raise ClipbertError(
                f"{qf}: {len(outside)} scene(s) not among the selected scans of {all_list}: "
                f"{shown}"
            )
        used |= q
    return sorted(used)


def sens_path(scans_dir: str | os.PathLike, scene: str) -> Path:
    """ScanNet's layout: `<scans_dir>/<scene>/<scene>.sens`."""
    return Path(scans_dir) / scene / f"{scene}.sens"


def check_scans(scans_dir: str | os.PathLike, scenes: Sequence[str]) -> None:
    """Fail listing every scene whose `.sens` file is missing (not just the first)."""
    missing = [s for s in scenes if not sens_path(scans_dir, s).is_file()]
    if missing:
        raise ClipbertError(
            f"{scans_dir}: {len(missing)} of {len(scenes)} scenes have no "
            f"<scene>/<scene>.sens: {', '.join(missing)}"
        )
