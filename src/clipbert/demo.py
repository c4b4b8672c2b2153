"""The embedded demo: synthetic rooms as real ScanNet `.sens` scans and SQA3D-format questions.

Each scene is a small room seen by a slowly panning camera: a coloured wall, a coloured floor,
a coloured cabinet on the left or the right, and one to three boxes on the floor. Every answer
is read off the frames (colours, the count of boxes, the cabinet's side), and each attribute is
drawn independently per scene, so no answer type can be guessed from the text alone: a model
beats the majority answer only by looking. The attributes are large and the questions few,
so that a small model trained from scratch on two CPU cores learns to look within minutes.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from clipbert import sens
from clipbert.errors import ClipbertError
from clipbert.fsutil import atomic_dir
from clipbert.sqa import annotations_name, questions_name
from clipbert.tokenizer import build_vocab

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (200, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 70, 200),
    "yellow": (230, 210, 50),
    "white": (235, 235, 235),
    "black": (25, 25, 25),
}
NUMBERS = ("one", "two", "three")
BOX_COLOR = (120, 72, 30)
COLOR_SIZE = (160, 120)
DEPTH_SIZE = (80, 60)
QUESTIONS_PER_TEMPLATE = 2  # each from another situation
SPLITS = (("train", 0.6), ("val", 0.2), ("test", 0.2))
LANDMARKS = ("ottoman", "toolbox", "sofa", "door", "window", "desk", "bed", "lamp", "shelf",
             "piano", "trash can", "radiator", "mirror", "bookcase", "sink", "printer")
ACTIONS = ("standing by", "sitting on", "leaning against", "facing", "walking past")


def scene_ids(n: int) -> list[str]:
    """The demo's scene ids, known without generating anything (the workflow needs them to
    build its DAG)."""
    return [f"scene{i:04d}_00" for i in range(n)]


def split_of(scenes: list[str]) -> dict[str, list[str]]:
    """Scenes are split, as in SQA3D, by scene: 60 % train, 20 % val, 20 % test."""
    n = len(scenes)
    n_train, n_val = round(n * SPLITS[0][1]), round(n * SPLITS[1][1])
    return {
        "train": scenes[:n_train],
        "val": scenes[n_train : n_train + n_val],
        "test": scenes[n_train + n_val :],
    }


@dataclass
class Room:
    wall: str
    floor: str
    cabinet: str
    cabinet_side: str
    n_boxes: int



def balanced(rng: np.random.Generator, values: list, n: int) -> list:
    """`n` draws that use every value equally often (up to one), in random order: with few
    scenes per split, independent draws would let a blind majority answer get lucky."""
    seq = [values[i % len(values)] for i in range(n)]
    return [seq[i] for i in rng.permutation(n)]


def draw_rooms(rng: np.random.Generator, n: int) -> list[Room]:
    """`n` rooms with each attribute balanced over the rooms and independent of the others."""
    names = list(COLORS)
    walls = balanced(rng, list(range(len(names))), n)
    floor_off = balanced(rng, list(range(1, len(names))), n)
    cabinet_step = balanced(rng, list(range(1, len(names) - 1)), n)
    sides = balanced(rng, ["left", "right"], n)
    boxes = balanced(rng, list(range(1, len(NUMBERS) + 1)), n)
    rooms = []
    for i in range(n):
        floor = (walls[i] + floor_off[i]) % len(names)
        cabinet = (walls[i] + (floor_off[i] - 1 + cabinet_step[i]) % (len(names) - 1) + 1)
        rooms.append(Room(names[walls[i]], names[floor], names[cabinet % len(names)], sides[i],
                          boxes[i]))
    return rooms


def render(room: Room, frame: int, n_frames: int, seed: int) -> np.ndarray:
    """One RGB frame: the camera pans a little, so the layout stays readable in every frame."""
    w, h = COLOR_SIZE
    shift = int(round(8 * math.sin(2 * math.pi * frame / max(n_frames, 1))))
    img = Image.new("RGB", (w, h), COLORS[room.wall])
    d = ImageDraw.Draw(img)
    horizon = int(h * 0.5)
    d.rectangle([0, horizon, w, h], fill=COLORS[room.floor])
    cx = 8 if room.cabinet_side == "left" else w - 48
    d.rectangle([cx + shift, 16, cx + shift + 40, horizon + 16], fill=COLORS[room.cabinet])
    for i in range(room.n_boxes):
        bx = 58 + i * 16 + shift
        d.rectangle([bx, horizon + 24, bx + 11, horizon + 35], fill=BOX_COLOR)
    noise = np.random.default_rng([seed, frame]).normal(0, 4, (h, w, 3))
    return np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8)


def maker_key() -> str:
    """The versions that decide the demo's bytes (Pillow draws and JPEG-encodes the frames,
    numpy's generator makes their noise): the demo_data rule's param, so that an upgrade makes
    the demo again instead of mixing old and new frames."""
    from importlib.metadata import version

    return f"pillow {version('pillow')} numpy {version('numpy')}"


def jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def pose(frame: int, n_frames: int) -> np.ndarray:
    """A camera at 1.5 m height, yawing slowly around the room's centre."""
    yaw = 0.2 * math.sin(2 * math.pi * frame / max(n_frames, 1))
    c, s = math.cos(yaw), math.sin(yaw)
    m = np.eye(4, dtype=np.float32)
    m[:3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    m[:3, 3] = [1.0, 1.5, 1.0]
    return m


def intrinsic(width: int, height: int) -> np.ndarray:
    m = np.eye(4, dtype=np.float32)
    m[0, 0] = m[1, 1] = width * 0.9
    m[0, 2], m[1, 2] = width / 2, height / 2
    return m


def write_scan(path: Path, room: Room, n_frames: int, seed: int) -> None:
    """Write one scene as a ScanNet `.sens` file (JPEG colour, zlib depth, poses, IMU)."""
    header = sens.SensHeader(
        version=4, sensor_name="StructureSensor",
        intrinsic_color=intrinsic(*COLOR_SIZE), extrinsic_color=np.eye(4, dtype=np.float32),
        intrinsic_depth=intrinsic(*DEPTH_SIZE), extrinsic_depth=np.eye(4, dtype=np.float32),
        color_compression=2, depth_compression=1,
        color_width=COLOR_SIZE[0], color_height=COLOR_SIZE[1],
        depth_width=DEPTH_SIZE[0], depth_height=DEPTH_SIZE[1],
        depth_shift=1000.0, num_frames=n_frames)
    yy = np.linspace(1500, 3000, DEPTH_SIZE[1], dtype=np.float32)[:, None]
    depth = np.broadcast_to(yy, DEPTH_SIZE[::-1]).astype(np.uint16)

    def frames() -> Iterator:
        for f in range(n_frames):
            t = 1_000_000 + f * 33_333
            yield sens.SensFrame(
                camera_to_world=pose(f, n_frames), color_timestamp=t, depth_timestamp=t,
                color_bytes=jpeg(render(room, f, n_frames, seed)),
                depth_bytes=sens.encode_depth(depth))

    imu = [sens.ImuRecord(rotation_rate=(0.0, 0.01, 0.0), acceleration=(0.0, -9.81, 0.0),
                          magnetic_field=(0.2, 0.0, 0.4), attitude=(0.0, 0.0, 0.0),
                          gravity=(0.0, -1.0, 0.0), timestamp=1_000_000 + i * 10_000)
           for i in range(4)]
    sens.write_sens(path, header, frames(), imu)


def questions_for(room: Room) -> list[tuple[str, str]]:
    """(question, answer) pairs about one room; every answer is read off the frames, and each
    attribute is drawn independently per scene, so the wording alone does not give it."""
    left = "yes" if room.cabinet_side == "left" else "no"
    right = "yes" if room.cabinet_side == "right" else "no"
    return [
        ("What color is the wall in front of me?", room.wall),
        ("What color is the floor I am standing on?", room.floor),
        ("What color is the cabinet?", room.cabinet),
        ("Is the cabinet on my left?", left),
        ("How many boxes are on the floor?", NUMBERS[room.n_boxes - 1]),
        ("Can I touch the cabinet with my right hand?", right),
        ("Which side is the cabinet on?", room.cabinet_side),
        ("Tell me the color of the wall.", room.wall),
        ("On which side of me is the cabinet?", room.cabinet_side),
    ]


def situation(rng: np.random.Generator) -> str:
    a, b = rng.choice(len(LANDMARKS), size=2, replace=False)
    return f"I am {rng.choice(ACTIONS)} the {LANDMARKS[a]} and the {LANDMARKS[b]} is behind me."


def make_demo(out_dir, scenes: int = 60, seed: int = 0, frames: int = 60) -> dict:
    """Write `scans/<scene>/<scene>.sens`, `sqa_task/` (SQA3D layout), the scene lists and a
    WordPiece vocabulary covering every demo word. Deterministic in (scenes, seed, frames)."""
    if scenes < 5:
        raise ClipbertError(f"{out_dir}: the demo needs at least 5 scenes (got {scenes})")
    ids = scene_ids(scenes)
    splits = split_of(ids)
    rooms = {}
    for k, members in enumerate(splits.values()):
        rooms.update(zip(members, draw_rooms(np.random.default_rng([seed, k]), len(members)),
                         strict=True))
    texts: list[str] = []
    answers: set[str] = set()
    with atomic_dir(out_dir) as tmp:
        for i, scene in enumerate(ids):
            (tmp / "scans" / scene).mkdir(parents=True)
            write_scan(tmp / "scans" / scene / f"{scene}.sens", rooms[scene], frames, seed + i)
        balanced = tmp / "sqa_task" / "balanced"
        balanced.mkdir(parents=True)
        qid = 220602000000
        for split, members in splits.items():
            qs, anns = [], []
            for scene in members:
                rng = np.random.default_rng([seed, int(scene[5:9]), 7])
                for question, answer in questions_for(rooms[scene]) * QUESTIONS_PER_TEMPLATE:
                    sit = situation(rng)
                    alt = situation(rng)
                    qs.append({"alternative_situation": [alt], "question": question,
                               "question_id": qid, "scene_id": scene, "situation": sit})
                    anns.append({
                        "answer_type": "other", "answers": [
                            {"answer": answer, "answer_confidence": "yes", "answer_id": 1}],
                        "position": {"x": 1.0, "y": 1.0, "z": 0.0},
                        "question_id": qid, "question_type": "N/A",
                        "rotation": {"_w": 1.0, "_x": 0.0, "_y": 0.0, "_z": 0.0},
                        "scene_id": scene})
                    texts += [sit, alt, question]
                    if split == "train":
                        answers.add(answer)
                    qid += 1
            head = {"info": {"description": f"Synthetic SQA3D-format demo ({split})",
                             "version": "1.0", "year": 2026, "contributor": "clipbert demo"},
                    "license": {"name": "CC0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"},
                    "data_type": "scannet", "data_subtype": "v2"}
            for name, key, items, extra in (
                (questions_name(split), "questions", qs,
                 {"task_type": "Situated question answering"}),
                (annotations_name(split), "annotations", anns, {}),
            ):
                (balanced / name).write_text(json.dumps({**head, **extra, key: items}))
        ans = sorted(answers)
        answer_dict = [{a: i for i, a in enumerate(ans)}, {str(i): a for i, a in enumerate(ans)}]
        (tmp / "sqa_task" / "answer_dict.json").write_text(json.dumps(answer_dict))
        (tmp / "scannetv2.txt").write_text("".join(s + "\n" for s in ids))
        (tmp / "scannetv2_test.txt").write_text("")
        n_vocab = build_vocab(texts, tmp / "vocab.txt")
    return {"out_dir": str(out_dir), "scenes": scenes, "frames_per_scene": frames,
            "splits": {k: len(v) for k, v in splits.items()}, "answers": len(ans),
            "vocab_size": n_vocab}
