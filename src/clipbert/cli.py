"""The `clipbert` command: one subcommand per stage, so every stage runs without Snakemake.

Imports are lazy: `clipbert sens info` must not pay for importing torch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

DESCRIPTION = """\
The ClipBERT baseline of SQA3D (situated question answering in ScanNet scenes), one command per
stage: ScanNet .sens scans -> frames -> mp4 -> video LMDB, SQA3D json -> jsonl, then training
and inference. The Snakemake workflow runs these same stages; here each one runs by hand.

Start with `./run snakemake --cores 2` in the checkout: a few minutes on the embedded demo
(synthetic scans and questions in the real formats), after which every example below and in
`clipbert COMMAND ACTION --help` runs as written: they read what the workflow wrote
(work/demo/source, work/demo/frames, work/demo/videos, work/demo/vis_db, work/demo/sqa,
results/model.pt) and write under work/try/.
Without the workflow, `clipbert demo make work/try/demo` writes the demo's inputs alone.

Bad input stops with one line `error: <file>: <where>: <what>` and exit status 1, and leaves
no half-written output."""

# Lists of numbers up to this many characters stay on one line in printed JSON.
_INLINE_WIDTH = 72


def _json_text(obj: object, indent: int = 0) -> str:
    """JSON indented by 2, except that a short list of numbers or strings (a matrix row, a
    shape) stays on one line: a 4x4 matrix prints as 4 rows, not 16 lines."""
    pad, inner = " " * indent, " " * (indent + 2)
    if isinstance(obj, dict) and obj:
        items = [f"{inner}{json.dumps(str(k))}: {_json_text(v, indent + 2)}"
                 for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(obj, list | tuple) and obj:
        flat = json.dumps(list(obj))
        if all(not isinstance(v, dict | list | tuple) for v in obj) and len(flat) <= _INLINE_WIDTH:
            return flat
        return "[\n" + ",\n".join(f"{inner}{_json_text(v, indent + 2)}" for v in obj) + f"\n{pad}]"
    return json.dumps(obj)


def _print_json(obj: object) -> None:
    sys.stdout.write(_json_text(obj) + "\n")


def _write_lines(lines: Sequence[str], out: str | None) -> None:
    """One item per line to `out` (atomically) or to stdout."""
    text = "".join(f"{line}\n" for line in lines)
    if out:
        from clipbert.fsutil import atomic_open

        with atomic_open(out) as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH such as 224x224, got {text!r}") from None
    return w, h


class _HelpFormatter(argparse.HelpFormatter):
    """Prose is wrapped, an indented block (the examples) is kept as written; every option
    with a value to fall back on shows it as `(default: ...)` (unless its help says it)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for par in text.split("\n\n"):
            if any(line.startswith(" ") for line in par.splitlines()):
                paragraphs.append("".join(indent + line for line in par.splitlines(True)))
            else:
                paragraphs.append(textwrap.fill(" ".join(par.split()), width,
                                                initial_indent=indent, subsequent_indent=indent))
        return "\n\n".join(paragraphs)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or action.required or "default" in text
                or default is None or default is False or default == []
                or default is argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


def _examples(*lines: str) -> str:
    """An `Examples:` epilog; `# ...` lines say what the next one does. Every `clipbert ...`
    line runs as written after the demo workflow (see DESCRIPTION), reading its files and
    writing only under work/try/ (tests/test_cli_help.py runs them all)."""
    return "Examples:\n" + "".join(f"  {line}\n" for line in lines)


# Workflow files the examples read (the demo's layout, see README.md).
_SENS = "work/demo/source/scans/scene0000_00/scene0000_00.sens"
_TRAIN_DATA = "--data-dir work/demo/sqa --lmdb work/demo/vis_db --vocab work/demo/source/vocab.txt"


# ---- demo -----------------------------------------------------------------------------------


def _demo_make(a: argparse.Namespace) -> None:
    from clipbert import demo

    _print_json(demo.make_demo(a.out_dir, scenes=a.scenes, seed=a.seed, frames=a.frames))


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="synthetic ScanNet scans and SQA3D questions",
                       description="A synthetic data set in the real formats, to try every "
                       "stage without the real data.")
    s = p.add_subparsers(dest="action", required=True)
    m = s.add_parser(
        "make", help="write the embedded demo data set",
        description="Write OUT_DIR/scans/<scene>/<scene>.sens (ScanNet .sens files of "
        "synthetic rooms), OUT_DIR/sqa_task/ (SQA3D question and annotation files whose "
        "answers can only be read off the video), the scene lists scannetv2.txt and "
        "scannetv2_test.txt, and a WordPiece vocab.txt; print a summary as JSON. The same "
        "arguments give byte-identical files.",
        epilog=_examples("clipbert demo make work/try/demo",
                         "# a smaller one: 6 scenes of 40 frames",
                         "clipbert demo make work/try/demo_small --scenes 6 --frames 40 --seed 1"))
    m.add_argument("out_dir", metavar="OUT_DIR", help="folder to write (replaced if it exists)")
    m.add_argument("--scenes", type=int, default=60,
                   help="number of scenes (at least 5), split by scene into train/val/test")
    m.add_argument("--seed", type=int, default=0, help="random seed of the rooms and questions")
    m.add_argument("--frames", type=int, default=60, help="frames per scan")
    m.set_defaults(func=_demo_make)


# ---- sens / frames --------------------------------------------------------------------------


def _sens_info(a: argparse.Namespace) -> None:
    from clipbert import sens

    _print_json(sens.sens_info(a.file))


def _sens_index(a: argparse.Namespace) -> None:
    from clipbert import sens

    sens.write_index(a.file, a.out_json)


def _sens_export(a: argparse.Namespace) -> None:
    from clipbert import frames

    index = frames.export_frames(
        a.file, a.out_dir, stride=a.stride, depth=a.depth, poses=a.poses
    )
    print(f"{a.out_dir}: {len(index['frames'])} frames")


def _sens_check(a: argparse.Namespace) -> int:
    from clipbert import sens

    bad = 0
    for path in a.files:
        result = sens.check_file(path, on_problem=lambda line: print(line, flush=True))
        print(result.summary(), flush=True)
        bad += not result.ok
    if len(a.files) > 1:
        print(f"{len(a.files) - bad} of {len(a.files)} files sound")
    return 1 if bad else 0


def _sens_scenes(a: argparse.Namespace) -> None:
    from clipbert import scannet

    scenes = scannet.select_scenes(a.all_list, a.test_list, a.questions)
    if a.scans:
        scannet.check_scans(a.scans, scenes)
    _write_lines(scenes, a.out)


def _add_sens(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sens", help="ScanNet .sens files",
                       description="Read ScanNet v2 .sens files (streamed: memory stays flat "
                       "whatever the scan size) and choose the scenes the baseline uses.")
    s = p.add_subparsers(dest="action", required=True)
    i = s.add_parser("info", help="print the header as JSON",
                     description="Print a .sens file's header as JSON: sensor, colour and depth "
                     "sizes and compression, frame count, duration, IMU records, lost-tracking "
                     "frames, and the intrinsic and extrinsic 4x4 matrices (one row a line).",
                     epilog=_examples(f"clipbert sens info {_SENS}"))
    i.add_argument("file", metavar="FILE", help="a ScanNet .sens file")
    i.set_defaults(func=_sens_info)
    x = s.add_parser("index", help="write the per-frame index (offsets, poses, timestamps)",
                     description="Write the header plus every frame's byte offsets, sizes, "
                     "timestamps, camera pose and lost-tracking flag as one JSON file.",
                     epilog=_examples(f"clipbert sens index {_SENS} "
                                      "work/try/index/scene0000_00.json"))
    x.add_argument("file", metavar="FILE", help="a ScanNet .sens file")
    x.add_argument("out_json", metavar="OUT.json", help="index file to write")
    x.set_defaults(func=_sens_index)
    e = s.add_parser("export", help="export every stride-th colour frame as its original JPEG",
                     description="Export colour frames 0, N, 2N, ... (N = --stride) as "
                     "OUT_DIR/frame-{k}.color.jpg, the JPEG bytes copied unchanged, numbered "
                     "0..K-1, plus OUT_DIR/index.json (source frame numbers, timestamps, poses, "
                     "sizes, intrinsics). The folder appears whole or not at all.",
                     epilog=_examples(
                         f"clipbert sens export {_SENS} work/try/frames/scene0000_00",
                         "# every frame, with depth PNGs and pose text files",
                         f"clipbert sens export {_SENS} work/try/frames_all/scene0000_00 "
                         "--stride 1 --depth --poses"))
    e.add_argument("file", metavar="FILE", help="a ScanNet .sens file")
    e.add_argument("out_dir", metavar="OUT_DIR", help="folder to write (replaced if it exists)")
    e.add_argument("--stride", type=int, default=20,
                   help="keep every N-th frame (the published baseline keeps every 20th)")
    e.add_argument("--depth", action="store_true", help="also write 16-bit depth PNGs")
    e.add_argument("--poses", action="store_true", help="also write 4x4 pose text files")
    e.set_defaults(func=_sens_export)
    k = s.add_parser(
        "check", help="read every frame: JPEG start and end markers, depth inflates whole",
        description="Vet scans before a long run: every colour payload must start with a JPEG "
        "SOI (FF D8) and end with an EOI (FF D9), every depth payload must inflate to "
        "width*height*2 bytes. One line per bad frame, a summary per file, progress on stderr; "
        "exit status 1 if any file is bad.",
        epilog=_examples("clipbert sens check work/demo/source/scans/*/*.sens"))
    k.add_argument("files", nargs="+", metavar="FILE", help=".sens files to read through")
    k.set_defaults(func=_sens_check)
    c = s.add_parser("scenes", help="the SQA3D baseline's scene list (_00 scans minus test)",
                     description="Print the scenes the SQA3D baseline uses, one a line: the _00 "
                     "scan of every scene of ALL_LIST that is not in TEST_LIST, sorted.",
                     epilog=_examples(
                         "clipbert sens scenes work/demo/source/scannetv2.txt "
                         "work/demo/source/scannetv2_test.txt",
                         "# only the scenes the questions use; fail naming any scan without its "
                         ".sens",
                         "clipbert sens scenes work/demo/source/scannetv2.txt "
                         "work/demo/source/scannetv2_test.txt --questions "
                         "work/demo/source/sqa_task/balanced/"
                         "v1_balanced_questions_*_scannetv2.json --scans work/demo/source/scans "
                         "--out work/try/scenes.txt"))
    c.add_argument("all_list", metavar="ALL_LIST",
                   help="ScanNet's scannetv2.txt: every scan id, one a line")
    c.add_argument("test_list", metavar="TEST_LIST",
                   help="ScanNet's scannetv2_test.txt: the scans to leave out")
    c.add_argument("--questions", nargs="*", default=[], metavar="Q.json",
                   help="SQA3D question json files: keep only the scenes they use "
                   "(default: every selected scan)")
    c.add_argument("--scans", default=None, metavar="SCANS_DIR",
                   help="ScanNet scans folder: fail listing every scene without its "
                   "<scene>/<scene>.sens (default: no check)")
    c.add_argument("--out", default=None, metavar="FILE",
                   help="write the list here instead of stdout (default: stdout)")
    c.set_defaults(func=_sens_scenes)


# ---- video / lmdb ---------------------------------------------------------------------------


def _video_encode(a: argparse.Namespace) -> None:
    from clipbert import video

    info = video.encode_video(
        a.frames_dir, a.out, size=a.size, fps=a.fps, codec=a.codec,
        keep_aspect=a.keep_aspect, gop=a.gop, preset=a.preset,
    )
    _print_json(info)


def _video_probe(a: argparse.Namespace) -> None:
    from clipbert import video

    _print_json(video.probe_video(a.file))


def _add_video(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("video", help="mp4 encoding and probing",
                       description="Encode a scene's frames into the mp4 ClipBERT reads, and "
                       "read an mp4's size, rate, codec and frame count.")
    s = p.add_subparsers(dest="action", required=True)
    e = s.add_parser("encode", help="encode a folder of frame-{k}.color.jpg into an mp4",
                     description="Encode FRAMES_DIR/frame-{k}.color.jpg (k = 0..K-1, in order) "
                     "into one mp4; the defaults are SQA3D's own encode (its jpg2mp4.py: "
                     "OpenCV's full-size decode and cv2.resize to 224x224, aspect squashed, "
                     "OpenCV's mp4v writer settings, 20 fps). Prints the video's description "
                     "as JSON.",
                     epilog=_examples(
                         "clipbert video encode work/demo/frames/scene0000_00 "
                         "work/try/videos/scene0000_00.mp4",
                         "# larger, keeping the aspect (padded right and bottom), every frame a "
                         "key frame",
                         "clipbert video encode work/demo/frames/scene0000_00 "
                         "work/try/videos_448/scene0000_00.mp4 --size 448x336 --keep-aspect "
                         "--gop 1"))
    e.add_argument("frames_dir", metavar="FRAMES_DIR",
                   help="a scene folder written by `clipbert sens export`")
    e.add_argument("out", metavar="OUT.mp4", help="video file to write")
    e.add_argument("--size", type=_size, default="224x224", metavar="WxH",
                   help="frame size of the video")
    e.add_argument("--fps", type=int, default=20, help="frame rate written into the video")
    e.add_argument("--codec", default="mpeg4",
                   help="FFmpeg encoder name (mpeg4 is MPEG-4 Part 2, what upstream wrote)")
    e.add_argument("--keep-aspect", action="store_true",
                   help="scale the longer side to fit and pad with black instead of squashing")
    e.add_argument("--gop", type=int, default=None, metavar="N",
                   help="frames between key frames (default: 12, as upstream's writer)")
    e.add_argument("--preset", choices=("faithful", "improved"), default="faithful",
                   help="faithful: SQA3D's encode (OpenCV's resize, no antialiasing, its "
                   "writer's bit rate); improved: antialiased resize from a downscaled decode, "
                   "at the bit rate of docs/video.md's curve")
    e.set_defaults(func=_video_encode)
    q = s.add_parser("probe", help="print size, fps, codec and frame count as JSON",
                     description="Print an mp4's width, height, fps, codec and frame count as "
                     "JSON, read from the container (nothing is decoded).",
                     epilog=_examples("clipbert video probe work/demo/videos/scene0000_00.mp4"))
    q.add_argument("file", metavar="FILE.mp4", help="a video file")
    q.set_defaults(func=_video_probe)


def _lmdb_pack(a: argparse.Namespace) -> None:
    from clipbert import vislmdb

    n = vislmdb.pack_lmdb(a.lmdb_dir, a.mp4)
    print(f"{a.lmdb_dir}: {n} videos")


def _lmdb_ls(a: argparse.Namespace) -> None:
    from clipbert import vislmdb

    for row in vislmdb.list_lmdb(a.lmdb_dir):
        print(f"{row['key']}\t{row['size']}\t{row['n_frames']}")


def _lmdb_export(a: argparse.Namespace) -> None:
    from clipbert import vislmdb

    n = vislmdb.export_lmdb(a.lmdb_dir, a.out_dir)
    print(f"{a.out_dir}: {n} videos")


def _add_lmdb(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lmdb", help="the video LMDB (ClipBERT vis_db layout)",
                       description="The video LMDB training and inference read: key = scene "
                       "id, value = the mp4 file's bytes.")
    s = p.add_subparsers(dest="action", required=True)
    k = s.add_parser("pack", help="pack mp4 files (key = file name without .mp4)",
                     description="Pack mp4 files into a new LMDB at LMDB_DIR (replacing it); "
                     "each file must be a readable video, and the key is its name without "
                     ".mp4.",
                     epilog=_examples("clipbert lmdb pack work/try/vis_db work/demo/videos/*.mp4"))
    k.add_argument("lmdb_dir", metavar="LMDB_DIR", help="folder to write (replaced if it exists)")
    k.add_argument("mp4", nargs="+", metavar="MP4", help="video files, one per scene")
    k.set_defaults(func=_lmdb_pack)
    ls = s.add_parser("ls", help="list keys, sizes and frame counts",
                      description="Print one line per video: key, size in bytes and frame "
                      "count, tab-separated, in key order.",
                      epilog=_examples("clipbert lmdb ls work/demo/vis_db"))
    ls.add_argument("lmdb_dir", metavar="LMDB_DIR", help="a video LMDB folder")
    ls.set_defaults(func=_lmdb_ls)
    x = s.add_parser("export", help="write the mp4 files back out, byte-identical",
                     description="Write every video of the LMDB to OUT_DIR/<key>.mp4, "
                     "byte-identical to what was packed.",
                     epilog=_examples("clipbert lmdb export work/demo/vis_db work/try/videos"))
    x.add_argument("lmdb_dir", metavar="LMDB_DIR", help="a video LMDB folder")
    x.add_argument("out_dir", metavar="OUT_DIR", help="folder to write (replaced if it exists)")
    x.set_defaults(func=_lmdb_export)


# ---- sqa ------------------------------------------------------------------------------------


def _sqa_convert(a: argparse.Namespace) -> None:
    from clipbert import sqa

    _print_json(sqa.convert(a.sqa_dir, a.out_dir, splits=a.splits.split(","),
                            answer_dict=a.answer_dict))


def _sqa_scenes(a: argparse.Namespace) -> None:
    from clipbert import sqa

    scenes = sorted({s for path in a.jsonl for s in sqa.split_scenes(path)})
    _write_lines(scenes, a.out)


def _sqa_check(a: argparse.Namespace) -> None:
    from clipbert import sqa

    available = sqa.available_videos(a.videos)
    for path in a.jsonl:
        sqa.check_videos(path, available)
        print(f"{path}: every scene has a video")


def _add_sqa(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sqa", help="SQA3D annotations",
                       description="SQA3D question files -> the jsonl files ClipBERT trains "
                       "on, and checks that every question has its video.")
    s = p.add_subparsers(dest="action", required=True)
    c = s.add_parser("convert", help="SQA3D json -> ClipBERT jsonl + answer vocabulary",
                     description="Validate the SQA3D release, then write OUT_DIR/{split}.jsonl, "
                     "train_ans2label.json (the answer vocabulary) and stats.json (counts per "
                     "split and answer type, which it also prints). Nothing is written if any "
                     "input is wrong; a rerun is byte-identical.",
                     epilog=_examples(
                         "clipbert sqa convert work/demo/source/sqa_task work/try/sqa",
                         "# only the test split, the answer vocabulary given apart",
                         "clipbert sqa convert work/demo/source/sqa_task work/try/sqa_test "
                         "--splits test --answer-dict work/demo/source/sqa_task/answer_dict.json"))
    c.add_argument("sqa_dir", metavar="SQA_DIR",
                   help="SQA3D's sqa_task folder: answer_dict.json and "
                   "balanced/v1_balanced_*_{split}_scannetv2.json")
    c.add_argument("out_dir", metavar="OUT_DIR",
                   help="folder for the jsonl files (other files in it are left alone)")
    c.add_argument("--splits", default="train,val,test", metavar="S1,S2,...",
                   help="comma-separated splits to convert")
    c.add_argument("--answer-dict", default=None, metavar="FILE",
                   help="the answer vocabulary, if not in SQA_DIR (the early-commit layout; "
                   "default: SQA_DIR/answer_dict.json)")
    c.set_defaults(func=_sqa_convert)
    n = s.add_parser("scenes", help="the sorted scene ids the given jsonl splits need",
                     description="Print the sorted scene ids the questions of the given jsonl "
                     "files use, one a line: the scenes whose video must exist.",
                     epilog=_examples("clipbert sqa scenes work/demo/sqa/train.jsonl "
                                      "work/demo/sqa/val.jsonl --out work/try/scenes_trainval.txt"))
    n.add_argument("jsonl", nargs="+", metavar="JSONL", help="jsonl files of `sqa convert`")
    n.add_argument("--out", default=None, metavar="FILE",
                   help="write them here (one a line) instead of stdout (default: stdout)")
    n.set_defaults(func=_sqa_scenes)
    k = s.add_parser("check", help="fail if a question's scene has no video",
                     description="Fail, listing the scenes and questions concerned, if a "
                     "question's scene has no video: what training checks before it starts.",
                     epilog=_examples(
                         "clipbert sqa check work/demo/sqa/train.jsonl work/demo/sqa/val.jsonl "
                         "work/demo/sqa/test.jsonl --videos work/demo/vis_db",
                         "# against a folder of SCENE.mp4",
                         "clipbert sqa check work/demo/sqa/test.jsonl --videos work/demo/videos"))
    k.add_argument("jsonl", nargs="+", metavar="JSONL", help="jsonl files of `sqa convert`")
    k.add_argument("--videos", required=True, metavar="PATH",
                   help="video LMDB folder, folder of SCENE.mp4, or a text file of scene ids")
    k.set_defaults(func=_sqa_check)


# ---- model / train / infer ------------------------------------------------------------------


def _parse_sets(pairs: Sequence[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: --set {pair!r}: expected KEY=VALUE, e.g. "
                             "--set model.num_layers=2")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _settings(a: argparse.Namespace) -> str:
    """The command line's preset and overrides: where a settings error comes from."""
    return " ".join([f"--preset {a.preset}", *(f"--set {pair}" for pair in a.set)])


def _make_config(a: argparse.Namespace):
    """The run's settings from --preset and --set; a bad one names the argument and says what
    it should be."""
    from clipbert.config import make_config
    from clipbert.errors import ClipbertError

    made = None
    for pair in a.set:  # one at a time first, so that an error names its --set
        try:
            make_config(a.preset, _parse_sets([pair]))
        except ClipbertError as e:
            if "unknown preset" not in str(e):
                raise ClipbertError(f"--set {pair}: {e}") from None
    try:
        made = make_config(a.preset, _parse_sets(a.set))
    except ClipbertError as e:
        raise ClipbertError(f"{_settings(a)}: {e}") from None
    return made


def _model_summary(a: argparse.Namespace) -> None:
    from clipbert import model
    from clipbert.errors import ClipbertError

    cfg = _make_config(a)
    try:
        # The dummy pass has the preset's own sizes: image, frames, evaluation clips, text.
        info = model.summary(cfg.model, max_img_size=cfg.max_img_size, num_frm=cfg.num_frm,
                             n_clips=cfg.inference_n_clips, txt_len=cfg.max_txt_len)
    except ClipbertError as e:
        raise ClipbertError(f"{_settings(a)}: {e}") from None
    _print_json(info)


def _model_convert(a: argparse.Namespace) -> None:
    from clipbert import checkpoints

    _print_json(checkpoints.convert(a.input, a.output, a.to))


_PRESET_HELP = "faithful (the published recipe), improved (its mistakes fixed) or tiny (the demo)"
_SET_HELP = ("override one preset value, repeatable; dotted keys reach the model "
             "(e.g. --set epochs=2 --set model.num_layers=4; values are JSON, else strings; "
             "default: the preset's values)")


def _add_model(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="the ClipBERT model",
                       description="Inspect the model of a preset, and convert checkpoints "
                       "between this project's and upstream ClipBERT's tensor names.")
    s = p.add_subparsers(dest="action", required=True)
    m = s.add_parser("summary", help="parameter counts and output shapes as JSON",
                     description="Print the parameter counts of each part (total and "
                     "trainable) and the shapes of one dummy forward pass at the preset's image "
                     "size, frames, evaluation clips and text length, as JSON. Computed on "
                     "PyTorch's meta device: no memory, no arithmetic, seconds for any size. The "
                     "word embeddings and the answer head are as model.vocab_size and "
                     "model.num_labels say; training sizes them from the tokenizer and the "
                     "answers instead (tiny's num_labels 0: one output per answer).",
                     epilog=_examples(
                         "clipbert model summary",
                         "clipbert model summary --preset tiny",
                         "# the blind baseline's model (no CNN); a deeper tiny one, larger frames",
                         "clipbert model summary --preset improved --set model.variant=blind",
                         "clipbert model summary --preset tiny --set model.num_layers=4 "
                         "--set max_img_size=256"))
    m.add_argument("--preset", default="faithful", help=_PRESET_HELP)
    m.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=_SET_HELP)
    m.set_defaults(func=_model_summary)
    c = s.add_parser("convert", help="rename a checkpoint's tensors to the native or upstream "
                     "ClipBERT layout (input layout detected from its keys)",
                     description="Rename a checkpoint's tensors into this project's (native) "
                     "or upstream ClipBERT's key layout and save them as a flat state dict; "
                     "the input's layout (upstream, native, detectron2, torchvision, Hugging "
                     "Face BERT) is detected from its keys. Prints what was kept and dropped.",
                     epilog=_examples(
                         "clipbert model convert results/model.pt work/try/model_upstream.pt "
                         "--to upstream",
                         "clipbert model convert results/model.pt work/try/model_native.pt "
                         "--to native"))
    c.add_argument("input", metavar="IN", help="checkpoint file (or Hugging Face BERT folder)")
    c.add_argument("output", metavar="OUT", help="flat state dict to write")
    c.add_argument("--to", required=True, choices=("native", "upstream"),
                   help="key layout to write")
    c.set_defaults(func=_model_convert)


def _train_init_pair(text: str) -> tuple[str, str]:
    from clipbert.config import WEIGHT_KINDS

    kind, sep, path = text.partition("=")
    if not sep or not path or kind not in WEIGHT_KINDS:
        raise argparse.ArgumentTypeError(
            f"expected KIND=PATH with KIND one of {', '.join(WEIGHT_KINDS)}, got {text!r}")
    return kind, path


def _train_init_weights(pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for kind, path in pairs:
        if kind in out:
            raise SystemExit(f"error: --init {kind}= given twice ({out[kind]} and {path}); "
                             "keep one")
        out[kind] = path
    return out


def _train(a: argparse.Namespace) -> None:
    from clipbert import train
    from clipbert.errors import ClipbertError
    from clipbert.qa import TrainFiles

    if (a.data_dir is None) == (a.train is None):
        raise ClipbertError("give either --data-dir or --train with --answers")
    if a.train is not None and a.answers is None:
        raise ClipbertError(f"--train {a.train}: give its answer map too (--answers)")
    cfg = _make_config(a)
    data = a.data_dir if a.train is None else TrainFiles(
        Path(a.train), Path(a.val) if a.val else None, Path(a.answers))
    train.train(
        cfg, data_dir=data, lmdb_dir=a.lmdb, out=a.out, state_dir=a.state_dir,
        metrics=a.metrics, vocab=a.vocab, weights=_train_init_weights(a.init),
    )


def _infer(a: argparse.Namespace) -> None:
    from clipbert import evaluate

    result = evaluate.infer(
        a.model, jsonl=a.jsonl, lmdb_dir=a.lmdb, predictions=a.predictions, out=a.out,
        n_clips=a.n_clips, device=a.device, answers=a.answers, vocab=a.vocab, preset=a.preset,
        overrides=_parse_sets(a.set),
    )
    shown = {k: result[k] for k in ("overall", "per_type", "n_questions", "ceiling")}
    _print_json({**shown, "majority_baseline": result["majority_baseline"]["overall"]})


def _add_train(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser(
        "train", help="fine-tune ClipBERT on jsonl + video LMDB",
        description="Fine-tune; rerunning with the same --state-dir resumes a killed run. For "
        "several GPUs start it under torchrun (--standalone --nproc_per_node N -m clipbert "
        "train ...): batch_size is then per process.",
        epilog=_examples(
            "# the demo's model (a few minutes on two CPU cores)",
            f"clipbert train --preset tiny {_TRAIN_DATA} --out work/try/model.pt "
            "--state-dir work/try/train_state --metrics work/try/train_log.jsonl",
            "# a quick look: two epochs of a 1-layer model",
            f"clipbert train --preset tiny --set epochs=2 --set model.num_layers=1 {_TRAIN_DATA} "
            "--out work/try/quick.pt --state-dir work/try/quick_state",
            "# the blind baseline: the questions alone, no video",
            "clipbert train --preset tiny --set model.variant=blind --set epochs=2 "
            "--data-dir work/demo/sqa --vocab work/demo/source/vocab.txt --out work/try/blind.pt "
            "--state-dir work/try/blind_state",
            "# fine-tune further from a model file (a ClipBERT checkpoint goes the same way)",
            f"clipbert train --preset tiny --set epochs=2 {_TRAIN_DATA} "
            "--init clipbert=results/model.pt --out work/try/more.pt "
            "--state-dir work/try/more_state"))
    t.add_argument("--preset", default="faithful", help=_PRESET_HELP)
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=_SET_HELP)
    t.add_argument("--data-dir", default=None, metavar="DIR",
                   help="folder with train.jsonl, val.jsonl and train_ans2label.json "
                   "(`clipbert sqa convert`); or name the files with --train, --val, --answers "
                   "(default: none)")
    t.add_argument("--train", default=None, metavar="TRAIN.jsonl",
                   help="the training questions, instead of DIR/train.jsonl (default: none)")
    t.add_argument("--val", default=None, metavar="VAL.jsonl",
                   help="the validation questions (default: DIR/val.jsonl, or none with --train)")
    t.add_argument("--answers", default=None, metavar="ANS2LABEL.json",
                   help="the answer map, instead of DIR/train_ans2label.json (default: none)")
    t.add_argument("--lmdb", default=None, metavar="LMDB_DIR",
                   help="video LMDB folder (no default: required but for the blind baseline, "
                   "model.variant=blind)")
    t.add_argument("--vocab", default=None, metavar="PATH",
                   help="WordPiece vocab.txt or tokenizer folder (no default: training stops "
                   "without one)")
    t.add_argument("--out", required=True, metavar="MODEL.pt", help="the chosen model file")
    t.add_argument("--state-dir", required=True, metavar="DIR",
                   help="resumable checkpoints (not an output; delete it to start over)")
    t.add_argument("--metrics", default=None, metavar="FILE.jsonl",
                   help="also write the metrics log here, one JSON object a line (default: "
                   "printed only, and kept in --state-dir)")
    t.add_argument("--init", action="append", default=[], type=_train_init_pair,
                   metavar="KIND=PATH",
                   help="pretrained weights, repeatable, applied in the order clipbert, "
                   "detectron2, resnet, bert (KIND: clipbert = upstream or native ClipBERT "
                   "file, detectron2 = grid-feat checkpoint, resnet = torchvision ResNet-50 "
                   "state dict, bert = Hugging Face BERT folder; default: random weights)")
    t.set_defaults(func=_train)


def _add_infer(sub: argparse._SubParsersAction) -> None:
    i = sub.add_parser(
        "infer", help="answer a jsonl split and score it",
        description="Answer every question of a jsonl split with a fine-tuned model, write the "
        "predictions and the accuracy json (overall and per answer type, with the "
        "majority-answer baseline), and print the accuracy. The model is this package's model "
        "file, or a bare state dict in the upstream or native layout (such as SQA3D's released "
        "clipbert.pt: fp16 or fp32, module. prefix or a model entry allowed), which then needs "
        "--answers and --vocab and takes its settings from --preset/--set, checked against its "
        "tensors.",
        epilog=_examples(
            "clipbert infer --model results/model.pt --jsonl work/demo/sqa/test.jsonl "
            "--lmdb work/demo/vis_db --predictions work/try/test_predictions.jsonl "
            "--out work/try/test_acc.json",
            "# 4 evaluation clips over each video, on the CPU",
            "clipbert infer --model results/model.pt --jsonl work/demo/sqa/val.jsonl "
            "--lmdb work/demo/vis_db --predictions work/try/val_predictions.jsonl "
            "--out work/try/val_acc.json --n-clips 4 --device cpu",
            "# SQA3D's released clipbert.pt (README: Evaluate the released model)",
            "# clipbert infer --model clipbert.pt --answers SQA_DIR/answer_dict.json --vocab "
            "vocab.txt --jsonl work/scannet/sqa/test.jsonl --lmdb work/scannet/vis_db "
            "--predictions P.jsonl --out acc.json"))
    i.add_argument("--model", required=True, metavar="MODEL.pt",
                   help="a model file written by `clipbert train`, or an upstream/native "
                   "fine-tuned state dict")
    i.add_argument("--answers", default=None, metavar="ANSWERS.json",
                   help="for a bare state dict: train_ans2label.json or SQA3D answer_dict.json, "
                   "the order of the head's rows (default: none; a model file has its own)")
    i.add_argument("--vocab", default=None, metavar="PATH",
                   help="for a bare state dict: WordPiece vocab.txt or tokenizer folder "
                   "(default: none; a model file has its own)")
    i.add_argument("--preset", default="faithful", help="for a bare state dict: its settings, "
                   "faithful, improved or tiny (a model file has its own)")
    i.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="for a bare state dict: override one preset value, as for train "
                   "(default: none)")
    i.add_argument("--jsonl", required=True, metavar="JSONL",
                   help="the questions to answer (`clipbert sqa convert`)")
    i.add_argument("--lmdb", default=None, metavar="LMDB_DIR",
                   help="video LMDB folder (no default: required but for a blind model)")
    i.add_argument("--predictions", required=True, metavar="FILE.jsonl",
                   help="answers to write, one JSON object a question")
    i.add_argument("--out", required=True, metavar="FILE.json", help="accuracy json to write")
    i.add_argument("--n-clips", type=int, default=None, metavar="N",
                   help="evaluation clips per video (default: the model's inference_n_clips)")
    i.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if any)")
    i.set_defaults(func=_infer)


# ---- plot ----------------------------------------------------------------------------------


def _plot(a: argparse.Namespace) -> None:
    """The figure the subcommand names, from its options (named as the figure's arguments),
    through the same function as the workflow's plot rules."""
    from clipbert import report

    inputs = {name: getattr(a, name) for name in a.inputs}
    if a.figure == "frames":
        _make_config(a)  # a bad --set is named as the argument
        inputs["overrides"] = _parse_sets(a.set)
    print(f"{a.out}: {report.draw(a.figure, a.out, **inputs)}")


def _plot_figure(s: argparse._SubParsersAction, name: str, key: str, inputs: tuple[str, ...],
                 **kw) -> argparse.ArgumentParser:
    """`clipbert plot NAME`: the figure `key` of report.FIGURES, from the options `inputs`."""
    f = s.add_parser(name, **kw)
    f.set_defaults(func=_plot, figure=key, inputs=inputs)
    return f


def _add_plot_data_figures(s: argparse._SubParsersAction) -> None:
    d = _plot_figure(
        s, "data", "data", ("stats", "lmdb"),
        help="questions per split and answer type, ceiling, frames per scene",
        description="Questions per split stacked by answer type (with scenes), the share of "
        "'unknown' answers and the accuracy ceiling of each split, and the frames of each "
        "video in the LMDB.",
        epilog=_examples("clipbert plot data --stats work/demo/sqa/stats.json "
                         "--lmdb work/demo/vis_db --out work/try/plots/data.png"))
    d.add_argument("--stats", required=True, metavar="STATS.json",
                   help="stats.json of `clipbert sqa convert`")
    d.add_argument("--lmdb", required=True, metavar="LMDB_DIR", help="the video LMDB folder")
    r = _plot_figure(
        s, "frames", "frames", ("lmdb", "preset", "n_clips", "scenes"),
        help="a contact sheet of evaluation clips as the model sees them",
        description="Each row one scene, each picture one frame of its evaluation clips, "
        "sampled, resized and padded as inference does with the given settings.",
        epilog=_examples(
            "clipbert plot frames --lmdb work/demo/vis_db --preset tiny "
            "--out work/try/plots/frames.png",
            "# 2 scenes, 3 evaluation clips each",
            "clipbert plot frames --lmdb work/demo/vis_db --preset tiny --n-clips 3 --scenes 2 "
            "--out work/try/plots/frames_3clips.png"))
    r.add_argument("--lmdb", required=True, metavar="LMDB_DIR", help="the video LMDB folder")
    r.add_argument("--preset", default="faithful", help=_PRESET_HELP)
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=_SET_HELP)
    r.add_argument("--n-clips", type=int, default=None, metavar="N",
                   help="evaluation clips per video (default: the preset's inference_n_clips)")
    r.add_argument("--scenes", type=int, default=4, metavar="N",
                   help="scenes to show, spread over the sorted scene ids")


def _add_plot_result_figures(s: argparse._SubParsersAction) -> None:
    t = _plot_figure(
        s, "training", "training", ("log", "checkpoint"),
        help="training loss, learning rates and validation accuracy",
        description="Loss, learning rates and validation accuracy against the step, from a "
        "training metrics log; without --log, a figure saying that nothing was trained here "
        "(the model evaluated was the given --checkpoint).",
        epilog=_examples(
            "clipbert plot training --log results/train_log.jsonl "
            "--out work/try/plots/training.png",
            "# a run that only scored a given checkpoint: the figure says so",
            "clipbert plot training --checkpoint clipbert.pt "
            "--out work/try/plots/training_none.png"))
    t.add_argument("--log", default=None, metavar="LOG.jsonl",
                   help="the metrics log of `clipbert train --metrics` (default: none: nothing "
                   "was trained here)")
    t.add_argument("--checkpoint", default=None, metavar="MODEL.pt",
                   help="without --log: the checkpoint evaluated instead, named in the figure "
                   "(default: none)")
    a = _plot_figure(
        s, "test-accuracy", "test_accuracy", ("acc", "source", "blind"),
        help="test accuracy per answer type beside the published figures",
        description="Accuracy overall and per answer type beside the ClipBERT and blind "
        "figures published on the real SQA3D test split (hatched), a blind baseline if given, "
        "the majority answer of the split and its ceiling. --source says which data the run "
        "is on, and the figure says it too: demo numbers are no reproduction of the published "
        "ones.",
        epilog=_examples(
            "clipbert plot test-accuracy --acc results/test_acc.json --source demo "
            "--out work/try/plots/test_accuracy.png",
            "# a real run with its blind baseline",
            "# clipbert plot test-accuracy --acc results/test_acc.json --blind "
            "results/blind/test_acc.json --source scannet --out acc.png"))
    a.add_argument("--acc", required=True, metavar="ACC.json",
                   help="accuracy json of `clipbert infer`")
    a.add_argument("--source", required=True, choices=("demo", "scannet"),
                   help="the data the questions are (the workflow's data.source): the embedded "
                   "demo or SQA3D")
    a.add_argument("--blind", default=None, metavar="ACC.json",
                   help="accuracy json of a blind model on the same questions (default: none)")
    c = _plot_figure(
        s, "confusion", "confusion", ("predictions", "top"),
        help="confusion of the most frequent gold answers",
        description="Gold against predicted answer for the most frequent gold answers, each "
        "row normalised (colour) with counts; (other) collects predictions outside them.",
        epilog=_examples("clipbert plot confusion --predictions results/test_predictions.jsonl "
                         "--top 10 --out work/try/plots/confusion.png"))
    c.add_argument("--predictions", required=True, metavar="PRED.jsonl",
                   help="predictions of `clipbert infer`")
    c.add_argument("--top", type=int, default=15, metavar="N",
                   help="how many of the most frequent gold answers")
    r = _plot_figure(
        s, "runs", "runs", ("summary", "source"),
        help="the seeds and variants of `runs`: spread and paired differences",
        description="Every variant's mean accuracy (overall and per answer type) with one "
        "standard deviation and each seed's result, beside the published figures; the title "
        "gives each variant's difference from the reference paired by seed, with its 95 % "
        "interval.",
        epilog=_examples("clipbert plot runs --summary results/runs/summary.json --source demo "
                         "--out work/try/plots/runs.png"))
    r.add_argument("--summary", required=True, metavar="SUMMARY.json",
                   help="results/runs/summary.json of the workflow's runs")
    r.add_argument("--source", required=True, choices=("demo", "scannet"),
                   help="the data the questions are (the workflow's data.source)")


def _add_plot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="the report's figures, one at a time",
                       description="Draw one figure of the Snakemake report as a PNG, from the "
                       "files the stages wrote: the same figures as the workflow's plot rules "
                       "(results/plots/), with their inputs given by hand. Prints the PNG's "
                       "path and a line saying what it shows (also in the PNG's metadata).")
    s = p.add_subparsers(dest="action", required=True)
    _add_plot_data_figures(s)
    _add_plot_result_figures(s)
    b = _plot_figure(
        s, "benchmarks", "benchmarks", ("folder",),
        help="wall time and peak memory of every rule",
        description="Wall seconds (summed over each rule's jobs, with their number and the "
        "longest) and the peak resident memory of one job, per rule, from the Snakemake "
        "benchmark files (.tsv) under a folder.",
        epilog=_examples("clipbert plot benchmarks --folder logs/benchmarks "
                         "--out work/try/plots/benchmarks.png"))
    b.add_argument("--folder", default="logs/benchmarks", metavar="DIR",
                   help="folder of Snakemake benchmark .tsv files (a subfolder per rule with "
                   "one file a job, or RULE.tsv)")
    for f in s.choices.values():
        f.add_argument("--out", required=True, metavar="FILE.png", help="the PNG to write")


# ---- env ------------------------------------------------------------------------------------


def _env(a: argparse.Namespace) -> int:
    from clipbert import provenance

    rec = provenance.record()
    if a.json:
        _print_json(rec)
    else:
        print(provenance.table(rec))
    return 0 if rec["lock"]["matches"] or not a.check else 1


def _add_env(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "env", help="what made a result: packages, FFmpeg, CUDA, CPU, commit",
        description="Print the provenance record that every result file stores under "
        "`environment`: Python, torch with CUDA, cuDNN and the devices, the packages that decide "
        "results, PyAV's and OpenCV's FFmpeg libraries, this checkout's version and commit "
        "(dirty or not), the CPU and its threads, and whether the installed packages are "
        "exactly envs/requirements.lock's.",
        epilog=_examples("clipbert env", "# the same as JSON", "clipbert env --json"))
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--check", action="store_true",
                   help="exit 1 when the installed packages are not the lock's")
    p.set_defaults(func=_env)


def _finish_help(parser: argparse.ArgumentParser) -> None:
    """Every parser of the tree gets the help formatter; a command family without examples of
    its own shows the first example of each of its actions."""
    parser.formatter_class = _HelpFormatter
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        firsts = []
        for child in action.choices.values():
            _finish_help(child)
            lines = (child.epilog or "").splitlines()
            firsts += [line.strip() for line in lines if line.strip().startswith("clipbert ")][:1]
        if parser.epilog is None and firsts:
            parser.epilog = _examples(*firsts)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clipbert", description=DESCRIPTION,
        epilog=_examples("clipbert demo make work/try/demo", f"clipbert sens info {_SENS}",
                         "clipbert model summary --preset tiny", "clipbert train --help"))
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_demo, _add_sens, _add_video, _add_lmdb, _add_sqa, _add_model, _add_train,
                _add_infer, _add_plot, _add_env):
        add(sub)
    _finish_help(parser)
    return parser


def _silence_stdout() -> None:
    """Point stdout at /dev/null once its reader has gone (`clipbert ... | head -1`), so that
    the interpreter's own flush at exit does not fail a second time."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    from clipbert.errors import ClipbertError, machine_error
    from clipbert.signals import Terminated, sigterm_unwinds

    try:
        try:
            args = build_parser().parse_args(argv)
            with sigterm_unwinds():  # SIGTERM (SLURM, Snakemake) unwinds like Ctrl-C
                status = args.func(args) or 0
        finally:
            sys.stdout.flush()  # here, not at exit, so that a closed pipe is caught below
    except ClipbertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Terminated as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        print("error: interrupted (SIGINT)", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _silence_stdout()
        return 141  # 128 + SIGPIPE: what a shell reports for a writer whose reader went away
    except OSError as e:
        machine = machine_error(e)
        if machine is None:
            raise
        print(f"error: {machine}", file=sys.stderr)
        return 1
    return status
