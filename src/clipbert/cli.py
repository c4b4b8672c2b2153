"""The `clipbert` command: one subcommand per stage, so every stage runs without Snakemake.

Imports are lazy: `clipbert sens info` must not pay for importing torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def _print_json(obj: object) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")


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
        raise argparse.ArgumentTypeError(f"expected WxH, got {text!r}") from None
    return w, h


# ---- demo -----------------------------------------------------------------------------------


def _demo_make(a: argparse.Namespace) -> None:
    from clipbert import demo

    _print_json(demo.make_demo(a.out_dir, scenes=a.scenes, seed=a.seed, frames=a.frames))


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="synthetic ScanNet scans and SQA3D questions")
    s = p.add_subparsers(dest="action", required=True)
    m = s.add_parser("make", help="write the embedded demo data set")
    m.add_argument("out_dir")
    m.add_argument("--scenes", type=int, default=60)
    m.add_argument("--seed", type=int, default=0)
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


def _sens_scenes(a: argparse.Namespace) -> None:
    from clipbert import frames

    scenes = frames.select_scenes(a.all_list, a.test_list, a.questions)
    if a.scans:
        frames.check_scans(a.scans, scenes)
    _write_lines(scenes, a.out)


def _add_sens(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sens", help="ScanNet .sens files")
    s = p.add_subparsers(dest="action", required=True)
    i = s.add_parser("info", help="print the header as JSON")
    i.add_argument("file")
    i.set_defaults(func=_sens_info)
    x = s.add_parser("index", help="write the per-frame index (offsets, poses, timestamps)")
    x.add_argument("file")
    x.add_argument("out_json")
    x.set_defaults(func=_sens_index)
    e = s.add_parser("export", help="export every stride-th colour frame as its original JPEG")
    e.add_argument("file")
    e.add_argument("out_dir")
    e.add_argument("--stride", type=int, default=20)
    e.add_argument("--depth", action="store_true", help="also write 16-bit depth PNGs")
    e.add_argument("--poses", action="store_true", help="also write 4x4 pose text files")
    e.set_defaults(func=_sens_export)
    c = s.add_parser("scenes", help="the SQA3D baseline's scene list (_00 scans minus test)")
    c.add_argument("all_list", help="scannetv2.txt")
    c.add_argument("test_list", help="scannetv2_test.txt")
    c.add_argument("--questions", nargs="*", default=[],
                   help="SQA3D question json files: keep only the scenes they use")
    c.add_argument("--scans", default=None,
                   help="ScanNet scans folder: fail listing every scene without its .sens")
    c.add_argument("--out", default=None, help="write the list here instead of stdout")
    c.set_defaults(func=_sens_scenes)


# ---- video / lmdb ---------------------------------------------------------------------------


def _video_encode(a: argparse.Namespace) -> None:
    from clipbert import video

    info = video.encode_video(
        a.frames_dir, a.out, size=a.size, fps=a.fps, codec=a.codec,
        keep_aspect=a.keep_aspect, gop=a.gop,
    )
    _print_json(info)


def _video_probe(a: argparse.Namespace) -> None:
    from clipbert import video

    _print_json(video.probe_video(a.file))


def _add_video(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("video", help="mp4 encoding and probing")
    s = p.add_subparsers(dest="action", required=True)
    e = s.add_parser("encode", help="encode a folder of frame-{k}.color.jpg into an mp4")
    e.add_argument("frames_dir")
    e.add_argument("out")
    e.add_argument("--size", type=_size, default=(224, 224), help="WxH (default 224x224)")
    e.add_argument("--fps", type=int, default=20)
    e.add_argument("--codec", default="mpeg4")
    e.add_argument("--keep-aspect", action="store_true")
    e.add_argument("--gop", type=int, default=None)
    e.set_defaults(func=_video_encode)
    q = s.add_parser("probe", help="print size, fps, codec and frame count as JSON")
    q.add_argument("file")
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
    p = sub.add_parser("lmdb", help="the video LMDB (ClipBERT vis_db layout)")
    s = p.add_subparsers(dest="action", required=True)
    k = s.add_parser("pack", help="pack mp4 files (key = file name without .mp4)")
    k.add_argument("lmdb_dir")
    k.add_argument("mp4", nargs="+")
    k.set_defaults(func=_lmdb_pack)
    ls = s.add_parser("ls", help="list keys, sizes and frame counts")
    ls.add_argument("lmdb_dir")
    ls.set_defaults(func=_lmdb_ls)
    x = s.add_parser("export", help="write the mp4 files back out, byte-identical")
    x.add_argument("lmdb_dir")
    x.add_argument("out_dir")
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
    p = sub.add_parser("sqa", help="SQA3D annotations")
    s = p.add_subparsers(dest="action", required=True)
    c = s.add_parser("convert", help="SQA3D json -> ClipBERT jsonl + answer vocabulary")
    c.add_argument("sqa_dir", help="answer_dict.json + balanced/v1_balanced_*_{split}_*.json")
    c.add_argument("out_dir")
    c.add_argument("--splits", default="train,val,test")
    c.add_argument("--answer-dict", default=None,
                   help="answer_dict.json if not in SQA_DIR (the early-commit layout)")
    c.set_defaults(func=_sqa_convert)
    n = s.add_parser("scenes", help="the sorted scene ids the given jsonl splits need")
    n.add_argument("jsonl", nargs="+")
    n.add_argument("--out", default=None, help="write them here (one a line) instead of stdout")
    n.set_defaults(func=_sqa_scenes)
    k = s.add_parser("check", help="fail if a question's scene has no video")
    k.add_argument("jsonl", nargs="+")
    k.add_argument("--videos", required=True,
                   help="video LMDB folder, folder of SCENE.mp4, or a text file of scene ids")
    k.set_defaults(func=_sqa_check)


# ---- model / train / infer ------------------------------------------------------------------


def _parse_sets(pairs: Sequence[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"error: --set expects KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _model_summary(a: argparse.Namespace) -> None:
    from clipbert import model
    from clipbert.config import make_config

    cfg = make_config(a.preset, _parse_sets(a.set))
    _print_json(model.summary(cfg.model))


def _model_convert(a: argparse.Namespace) -> None:
    from clipbert import checkpoints

    _print_json(checkpoints.convert(a.input, a.output, a.to))


def _add_model(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="the ClipBERT model")
    s = p.add_subparsers(dest="action", required=True)
    m = s.add_parser("summary", help="parameter counts and output shapes as JSON")
    m.add_argument("--preset", default="faithful")
    m.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    m.set_defaults(func=_model_summary)
    c = s.add_parser("convert", help="rename a checkpoint's tensors to the native or upstream "
                     "ClipBERT layout (input layout detected from its keys)")
    c.add_argument("input", metavar="IN", help="checkpoint file (or Hugging Face BERT folder)")
    c.add_argument("output", metavar="OUT", help="flat state dict to write")
    c.add_argument("--to", required=True, choices=("native", "upstream"))
    c.set_defaults(func=_model_convert)


_TRAIN_INIT_KINDS = ("clipbert", "detectron2", "resnet", "bert")


def _train_init_pair(text: str) -> tuple[str, str]:
    kind, sep, path = text.partition("=")
    if not sep or not path or kind not in _TRAIN_INIT_KINDS:
        raise argparse.ArgumentTypeError(
            f"expected KIND=PATH with KIND one of {', '.join(_TRAIN_INIT_KINDS)}, got {text!r}")
    return kind, path


def _train_init_weights(pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for kind, path in pairs:
        if kind in out:
            raise SystemExit(f"error: --init {kind}= given twice")
        out[kind] = path
    return out


def _train(a: argparse.Namespace) -> None:
    from clipbert import train
    from clipbert.config import make_config

    cfg = make_config(a.preset, _parse_sets(a.set))
    train.train(
        cfg, data_dir=a.data_dir, lmdb_dir=a.lmdb, out=a.out, state_dir=a.state_dir,
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
        "train ...): batch_size is then per process.")
    t.add_argument("--preset", default="faithful", help="faithful, improved or tiny")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one preset value (dotted keys reach the model: model.layers=2)")
    t.add_argument("--data-dir", required=True, help="folder with train/val jsonl")
    t.add_argument("--lmdb", default=None,
                   help="video LMDB folder (not for the blind baseline, model.variant=blind)")
    t.add_argument("--vocab", default=None, help="WordPiece vocab.txt or tokenizer folder")
    t.add_argument("--out", required=True, help="the chosen model file")
    t.add_argument("--state-dir", required=True, help="resumable checkpoints (not an output)")
    t.add_argument("--metrics", default=None, help="metrics log (jsonl)")
    t.add_argument("--init", action="append", default=[], type=_train_init_pair,
                   metavar="KIND=PATH",
                   help="pretrained weights, repeatable, applied in the order clipbert, "
                   "detectron2, resnet, bert (KIND: clipbert = upstream or native ClipBERT "
                   "file, detectron2 = grid-feat checkpoint, resnet = torchvision ResNet-50 "
                   "state dict, bert = Hugging Face BERT folder); none: random weights")
    t.set_defaults(func=_train)
    i = sub.add_parser(
        "infer", help="answer a jsonl split and score it",
        description="Score a fine-tuned model: this package's model file, or a bare state dict "
        "in the upstream or native layout (such as SQA3D's released clipbert.pt: fp16 or fp32, "
        "module. prefix or a model entry allowed), which then needs --answers and --vocab and "
        "takes its settings from --preset/--set, checked against its tensors.")
    i.add_argument("--model", required=True,
                   help="native model file, or upstream/native fine-tuned state dict")
    i.add_argument("--answers", default=None,
                   help="for a bare state dict: train_ans2label.json or SQA3D answer_dict.json "
                   "(the order of the head's rows)")
    i.add_argument("--vocab", default=None,
                   help="for a bare state dict: WordPiece vocab.txt or tokenizer folder")
    i.add_argument("--preset", default="faithful",
                   help="for a bare state dict: its settings (faithful, improved or tiny)")
    i.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="for a bare state dict: override one preset value")
    i.add_argument("--jsonl", required=True)
    i.add_argument("--lmdb", default=None, help="video LMDB folder (not for a blind model)")
    i.add_argument("--predictions", required=True)
    i.add_argument("--out", required=True, help="accuracy json")
    i.add_argument("--n-clips", type=int, default=None, help="override inference_n_clips")
    i.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if any)")
    i.set_defaults(func=_infer)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipbert", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_demo, _add_sens, _add_video, _add_lmdb, _add_sqa, _add_model, _add_train):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from clipbert.errors import ClipbertError

    try:
        args.func(args)
    except ClipbertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
