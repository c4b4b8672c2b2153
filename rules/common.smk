# Helpers shared by the rules: where each input comes from, and which scenes the run needs.
from pathlib import Path

from clipbert import demo, frames, sqa

DEMO = config["data"]["source"] == "demo"
WORK = "work"
ENV = "../envs/clipbert.yaml"  # relative to rules/
SPLITS = ("train", "val", "test")


def require(key: str) -> str:
    """A path the real-data config must give; stops the run naming the missing key."""
    value = config
    for part in key.split("."):
        value = value[part]
    if not value:
        raise ValueError(f"config: {key} is required when data.source is 'scannet'")
    return value


SCANS = f"{WORK}/demo/scans" if DEMO else config["data"]["scans_dir"]
SQA_DIR = f"{WORK}/demo/sqa_task" if DEMO else require("data.sqa_dir")
VOCAB = f"{WORK}/demo/vocab.txt" if DEMO else require("weights.vocab")
VIDEOS = None if DEMO else config["data"]["videos_dir"]
BLIND = config["baselines"]["blind"]
if not DEMO and not (SCANS or VIDEOS):
    raise ValueError("config: data.scans_dir or data.videos_dir is required for real data")


def sqa_files(kind: str) -> list[str]:
    name = sqa.questions_name if kind == "questions" else sqa.annotations_name
    return [f"{SQA_DIR}/balanced/{name(s)}" for s in SPLITS]


def scene_list() -> list[str]:
    """Demo: known from the config. Real data: the SQA3D baseline's selection, restricted to the
    scenes the question files use."""
    if DEMO:
        return demo.scene_ids(config["data"]["demo"]["scenes"])
    questions = sqa_files("questions") if config["data"]["restrict_to_questions"] else []
    return frames.select_scenes(
        require("data.scene_lists.all"),
        require("data.scene_lists.test"),
        [q for q in questions if Path(q).exists()],
    )


SCENES = scene_list()


def video_path(scene: str) -> str:
    """A released video when the config names a folder of them, else our own encode."""
    return f"{VIDEOS}/{scene}.mp4" if VIDEOS else f"{WORK}/videos/{scene}.mp4"


def sens_path(scene: str) -> str:
    return f"{SCANS}/{scene}/{scene}.sens"
