# Helpers shared by the rules: where each input comes from, which scenes the run needs, and the
# checks that stop a run before any job when the config or a real-data input is wrong.
import json
from pathlib import Path

from clipbert import config as settings
from clipbert import demo, scannet, sqa
from clipbert.errors import ClipbertError
from clipbert.smk import fail, job_resources, local_gpus
from snakemake.io import get_wildcard_names, strip_wildcard_constraints

SOURCE = config["data"]["source"]
DEMO = SOURCE == "demo"
# Each data source has its own work folder, so a checkout that ran the demo never trains a real
# config on the demo's questions or videos (results/ is shared: its rules rerun when their
# inputs change).
WORK = f"work/{SOURCE}"
ENV = "../envs/clipbert.yaml"  # relative to rules/
SPLITS = ("train", "val", "test")
SCENE_PATTERN = r"scene\d{4}_\d{2}"


wildcard_constraints:
    scene=SCENE_PATTERN,


def require(key: str) -> str:
    """A path the real-data config must give; stops the run naming the missing key."""
    value = config
    for part in key.split("."):
        value = value[part]
    if not value:
        fail(f"config: {key} is required when data.source is 'scannet'")
    return value


def require_file(key: str, path: str) -> str:
    """`path` (from config key `key`) must exist before the run starts."""
    if not Path(path).exists():
        fail(f"config: {key}: {path} not found")
    return path


def train_settings(overrides: dict) -> settings.TrainConfig:
    """The training settings of `train.preset` + `overrides`, checked now: a misspelt key stops
    the run before any job, naming it."""
    try:
        return settings.make_config(config["train"]["preset"], overrides)
    except ClipbertError as e:
        fail(f"config: train.overrides: {e}")


DEMO_DIR = "work/demo/source"  # the demo's generated scans, SQA3D files and vocabulary
SCANS = f"{DEMO_DIR}/scans" if DEMO else config["data"]["scans_dir"]
SQA_DIR = f"{DEMO_DIR}/sqa_task" if DEMO else require("data.sqa_dir")
VOCAB = f"{DEMO_DIR}/vocab.txt" if DEMO else require_file("weights.vocab", require("weights.vocab"))
VIDEOS = None if DEMO else config["data"]["videos_dir"]
TRAIN = train_settings(config["train"]["overrides"])
# Evaluation only (infer.model): a fine-tuned checkpoint is scored and nothing is trained, so no
# `train` job is in the DAG; the blind baseline then comes only from baselines.blind_model.
INFER_MODEL = config["infer"]["model"]
BLIND_MODEL = config["baselines"]["blind_model"]
EVAL_ONLY = bool(INFER_MODEL)
BLIND = bool(BLIND_MODEL) or (config["baselines"]["blind"] and not EVAL_ONLY)
for _key, _path, _own in (
    ("infer.model", INFER_MODEL, "results/model.pt"),
    ("baselines.blind_model", BLIND_MODEL, "results/blind/model.pt"),
):
    if _path:
        require_file(_key, _path)
        if Path(_path).resolve() == Path(_own).resolve():
            fail(
                f"config: {_key}: {_path} is where this workflow's training writes; copy the "
                "checkpoint elsewhere to evaluate it"
            )
if not DEMO and not (SCANS or VIDEOS):
    fail("config: data.scans_dir or data.videos_dir is required for real data")
for _kind, _path in config["weights"].items():
    if _path:
        require_file(f"weights.{_kind}", _path)


# The splits converted: evaluating only (nothing trained) needs the test split alone.
SQA_SPLITS = ("test",) if EVAL_ONLY else SPLITS


def sqa_files(kind: str, splits: tuple[str, ...] = SQA_SPLITS) -> list[str]:
    name = sqa.questions_name if kind == "questions" else sqa.annotations_name
    return [f"{SQA_DIR}/balanced/{name(s)}" for s in splits]


def check_real_inputs() -> None:
    """Every SQA3D file the conversion reads exists (named, not silently skipped)."""
    for path in [
        f"{SQA_DIR}/{sqa.ANSWER_DICT}",
        *sqa_files("questions"),
        *sqa_files("sqa_annotations"),
    ]:
        require_file("data.sqa_dir", path)


def check_checkpoints() -> None:
    """Evaluation only: each given checkpoint is a model file whose layout, variant and tensor
    shapes fit the preset in use, checked now (names and shapes only: the file is
    memory-mapped), so that a wrong file stops the run, `-n` too, before any job deletes the
    last results."""
    from clipbert import modelfile  # imports torch: only evaluation-only runs pay for it here

    answers = None if DEMO else len(sqa.load_answer_dict(f"{SQA_DIR}/{sqa.ANSWER_DICT}"))
    overrides = config["train"]["overrides"]
    for key, path, variant, extra in (
        ("infer.model", INFER_MODEL, TRAIN.model.variant, {}),
        ("baselines.blind_model", BLIND_MODEL, "blind", {"model.variant": "blind"}),
    ):
        if not path:
            continue
        try:
            modelfile.check_model_file(
                path,
                preset=config["train"]["preset"],
                overrides={**overrides, **extra},
                variant=variant,
                n_answers=answers,
                hint="set train.preset: {preset}",
            )
        except ClipbertError as e:
            fail(f"config: {key}: {e}")


def scene_list() -> list[str]:
    """Demo: known from the config. Real data: the SQA3D baseline's selection, restricted to the
    scenes the question files use (the test split's alone when only evaluating); released videos
    without scene lists: exactly the scenes the questions use."""
    if DEMO:
        return demo.scene_ids(config["data"]["demo"]["scenes"])
    check_real_inputs()
    asked = sqa_files("questions")
    lists = config["data"]["scene_lists"]
    questions = asked if config["data"]["restrict_to_questions"] else []
    try:
        if VIDEOS and not (lists["all"] or lists["test"]):
            return sorted(set().union(*(sqa.question_scenes(q) for q in asked)))
        return scannet.select_scenes(
            require_file("data.scene_lists.all", require("data.scene_lists.all")),
            require_file("data.scene_lists.test", require("data.scene_lists.test")),
            questions,
        )
    except ClipbertError as e:
        fail(str(e))


def check_weights() -> None:
    """Every `weights.*` file training starts from is checked now, as `infer.model` is: readable
    as plain tensors, the layout of its kind, tensors at the shapes of the preset's model (names
    and shapes only: memory-mapped), so that a wrong or damaged file stops the run, `-n` too,
    before a job deletes the last results."""
    from clipbert import checkpoints, modelfile  # imports torch: only runs with weights pay

    shapes = modelfile.model_shapes(TRAIN)
    for kind, path in config["weights"].items():
        if path and kind in settings.WEIGHT_KINDS:
            try:
                checkpoints.check_pretrained(kind, path, shapes)
            except ClipbertError as e:
                fail(f"config: weights.{kind}: {e}")


SCENES = scene_list()
if INFER_MODEL or BLIND_MODEL:
    check_checkpoints()
# Once, in the Snakemake that plans the run (not again in each cluster job).
if workflow.is_main_process and any(config["weights"].get(k) for k in settings.WEIGHT_KINDS):
    check_weights()


def video_path(scene: str) -> str:
    """A released video when the config names a folder of them, else our own encode."""
    return f"{VIDEOS}/{scene}.mp4" if VIDEOS else f"{WORK}/videos/{scene}.mp4"


def sens_path(scene: str) -> str:
    return f"{SCANS}/{scene}/{scene}.sens"


def check_scene_inputs() -> None:
    """Real data: every scene's released video, or else its scan, is there before any job."""
    if DEMO:
        return
    paths = {s: video_path(s) if VIDEOS else sens_path(s) for s in SCENES}
    missing = [s for s, p in paths.items() if not Path(p).is_file()]
    if missing:
        key, where = ("data.videos_dir", VIDEOS) if VIDEOS else ("data.scans_dir", SCANS)
        shown = ", ".join(paths[s] for s in missing[:3])
        fail(
            f"config: {key}: {len(missing)} of {len(SCENES)} scenes the questions use have "
            f"no {'video' if VIDEOS else 'scan'} in {where}: {shown}"
            f"{', ...' if len(missing) > 3 else ''}"
        )


check_scene_inputs()


def check_released_videos() -> None:
    """Released videos: each is a video of at least one clip's frames (not an image renamed
    .mp4, not empty, not cut short before its header), read from its header before any job
    (707 in ~1 s: benchmarks/bench_probe.py), so that a bad one never costs the last LMDB.
    Once per run: not again in each cluster job, which reads the Snakefile too."""
    if not VIDEOS or not workflow.is_main_process:
        return
    from clipbert import video  # PyAV: only runs on released videos pay for it here

    bad = []
    for scene in SCENES:
        try:
            video.check_video(video_path(scene), TRAIN.num_frm)
        except ClipbertError as e:
            bad.append(str(e))
    if bad:
        more = f" (and {len(bad) - 1} more bad videos)" if len(bad) > 1 else ""
        fail(f"config: data.videos_dir: {bad[0]}{more}")


check_released_videos()


# ---- training and inference jobs ----------------------------------------------------------------

# With a GPU on this machine the default profile's `gpu` resource keeps GPU jobs from
# overlapping; without one the jobs ask for none, so their job lines do not claim one. The SLURM
# profile sets its own.
GPU_JOB = min(local_gpus(), 1)

# Each job's memory and time limit (clipbert.smk.JOB_RESOURCES), in the rule next to its threads
# so that every executor gets them: the data rules at the scale of the data source, training,
# inference and the plots of their results at that of train.preset (`tiny` is the demo's).
SMALL_DATA = DEMO
SMALL_MODEL = config["train"]["preset"] == "tiny"


def job_mem_mb(rule: str, small: bool) -> int:
    return job_resources(rule, demo=small)["mem_mb"]


def job_runtime(rule: str, small: bool) -> int:
    """Minutes (Snakemake's `runtime` unit)."""
    return job_resources(rule, demo=small)["runtime"]


def run_job_resource(rule: str, key: str):
    """A `runs` job's resource: its scale is its variant's preset, a function of the wildcards."""
    return lambda wildcards: job_resources(rule, demo=run_preset(wildcards) == "tiny")[key]


def weight_inputs(blind: bool) -> dict[str, str]:
    """The pretrained weight files training starts from, as named inputs (`weights_KIND`): a
    changed file reruns training. The blind baseline has no CNN, so no CNN-only weights."""
    cnn_only = ("detectron2", "resnet")
    return {
        f"weights_{kind}": path
        for kind, path in config["weights"].items()
        if path and kind in settings.WEIGHT_KINDS and not (blind and kind in cnn_only)
    }


def variant_overrides(blind: bool) -> dict:
    """The config's overrides, and the blind variant for the blind baseline's jobs."""
    return {**config["train"]["overrides"], **({"model.variant": "blind"} if blind else {})}


def tracked_settings(blind: bool) -> str:
    """Every setting that changes the result of a training (or of scoring a bare checkpoint),
    resolved from preset + overrides, speed knobs left out: one sorted JSON string. A plain param,
    so that Snakemake's `params` rerun trigger records it; it leaves out params given as functions
    of a job's input, output, threads or resources."""
    cfg = train_settings(variant_overrides(blind))
    return json.dumps(settings.result_settings(cfg), sort_keys=True)


def untracked(value):
    """`value`, or `value(wildcards)` when it is a function, as a param that the `params` rerun
    trigger leaves out (a function of the job's threads): for the overrides as given, whose speed
    knobs change no result and whose other settings `tracked_settings` (or `run_settings`)
    records, and for paths that are not results."""
    if callable(value):
        return lambda wildcards, threads: value(wildcards)
    return lambda wildcards, threads: value


def train_state_dir(blind: bool) -> str:
    """Resumable state of a training job, outside its outputs (Snakemake deletes those)."""
    return f"{WORK}/train_state" + ("_blind" if blind else "")


def final_targets() -> list[str]:
    """What `snakemake` with no target makes: every result file the README lists (the model,
    its training log, predictions and accuracy; the blind baseline's) and the report's plots.
    Each is asked for by name, so that a missing one (a model whose retrain failed after
    Snakemake deleted it) is remade by a plain run: Snakemake takes a job whose outputs exist as
    done even when an input it could make is missing."""
    trained = [] if EVAL_ONLY else list(rules.train.output)
    blind = [*([] if BLIND_MODEL else rules.train_blind.output), *rules.infer_blind.output]
    return [*trained, *rules.infer.output, *(blind if BLIND else []), *PLOTS.values()]


def run_benchmarks() -> list[str]:
    """The benchmark files of the jobs this config runs: each rule's `benchmark:` over this
    run's scenes, less the rules the config leaves out, so that files an earlier run with
    another config left in logs/benchmarks (other scenes, training before an evaluation-only
    run) are not read. A pattern with another wildcard is globbed."""
    left_out = {
        *(("train", "train_blind") if EVAL_ONLY else ()),
        *(() if BLIND and not BLIND_MODEL else ("train_blind",)),
        *(() if BLIND else ("infer_blind",)),
        *(("scene",) if VIDEOS else ()),
        *(() if DEMO else ("demo_data",)),
    }
    files = []
    for r in workflow.rules:
        if r.name in left_out or not r.benchmark:
            continue
        pattern = strip_wildcard_constraints(str(r.benchmark))
        names = set(get_wildcard_names(pattern))
        if names == {"scene"}:
            files += expand(pattern, scene=SCENES)
        elif names:
            files += [str(p) for p in Path().glob(expand(pattern, **{n: "*" for n in names})[0])]
        else:
            files.append(pattern)
    return files


# ---- runs: seeds and variants (config `runs`, rules/runs.smk) -----------------------------------

import re

from clipbert import runs as run_plan

try:
    VARIANTS = run_plan.plan_variants(config)  # checked now: a bad override stops the dry run
except ClipbertError as e:
    fail(f"config: {e}")
RUN_SEEDS = config["runs"]["seeds"]
RUN_REFERENCE = run_plan.reference_of(config, VARIANTS)
for _name, _variant in VARIANTS.items():
    if _variant.checkpoint:
        require_file(f"runs.variants.{_name}.infer.model", _variant.checkpoint)


def run_variant(wildcards) -> run_plan.Variant:
    return VARIANTS[wildcards.variant]


def run_seed(wildcards) -> int | None:
    """The run's seed (none for a scored checkpoint: folder `checkpoint`)."""
    run = wildcards.run if "run" in wildcards.keys() else f"seed{wildcards.seed}"
    return None if run == run_plan.CHECKPOINT_RUN else int(run.removeprefix("seed"))


# The settings of a run, as functions of the wildcards alone: Snakemake's `params` rerun trigger
# records those (not functions of input or output), so editing one variant reruns its runs only.
def run_preset(wildcards) -> str:
    return run_variant(wildcards).preset


def run_settings(wildcards) -> dict:
    """Every result-changing setting of the run, its seed included, resolved (a changed preset
    value reruns it too): the rerun trigger; the speed knobs are not in it, nor the evaluation
    clips (`run_n_clips`: they rerun the scoring, not the training). A scored checkpoint is read
    with the variant's settings (its seed is irrelevant: 0)."""
    return run_variant(wildcards).result_settings(run_seed(wildcards) or 0)


def run_overrides(wildcards) -> dict:
    """The overrides the job applies to its preset: the main config's, the variant's and the
    seed. Given `untracked`, so that Snakemake leaves it out of the rerun trigger
    (`run_settings` is that): a changed speed knob reruns nothing."""
    variant, seed = run_variant(wildcards), run_seed(wildcards)
    return variant.overrides if seed is None else {**variant.overrides, "seed": seed}


def run_n_clips(wildcards) -> int | None:
    return run_variant(wildcards).n_clips


def run_model_variant(wildcards) -> str:
    return run_variant(wildcards).cfg.model.variant


def run_trained_here(wildcards) -> bool:
    return run_variant(wildcards).trained


def run_state_dir(wildcards) -> str:
    """A run's resumable training state, its own (not an output; given `untracked`)."""
    return f"{WORK}/runs/{wildcards.variant}/seed{wildcards.seed}/train_state"


def run_train_inputs(wildcards) -> dict[str, str]:
    """What a run's training reads: the shared data half, its weights; no video when blind."""
    variant = run_variant(wildcards)
    video = {} if variant.blind else {"lmdb": rules.pack_lmdb.output[0]}
    return {
        **weight_inputs(blind=variant.blind),
        "train": f"{WORK}/sqa/train.jsonl",
        "val": f"{WORK}/sqa/val.jsonl",
        "ans2label": rules.sqa_convert.output.ans2label,
        **video,
        "vocab": VOCAB,
    }


def run_infer_inputs(wildcards) -> dict[str, str]:
    """What a run's scoring reads: its trained model, or the variant's checkpoint (then the
    answer map and vocabulary it is read with too)."""
    variant = run_variant(wildcards)
    video = {} if variant.blind else {"lmdb": rules.pack_lmdb.output[0]}
    given = (
        {"answers": [], "vocab": []}
        if variant.trained
        else {"answers": rules.sqa_convert.output.ans2label, "vocab": VOCAB}
    )
    model = (
        f"results/runs/{wildcards.variant}/{wildcards.run}/model.pt"
        if variant.trained
        else variant.checkpoint
    )
    return {"model": model, "jsonl": f"{WORK}/sqa/test.jsonl", **video, **given}


def run_results() -> list[str]:
    """Every run's test accuracy, variant by variant in the config's order."""
    return [
        f"results/runs/{name}/{run}/test_acc.json"
        for name, variant in VARIANTS.items()
        for run in variant.run_names(RUN_SEEDS)
    ]


def run_files() -> list[str]:
    """Every run's result files besides its accuracy: the model and training log of a trained
    run, the predictions of each (asked for by `runs`, so that a missing one is remade)."""
    files = []
    for name, variant in VARIANTS.items():
        for run in variant.run_names(RUN_SEEDS):
            folder = f"results/runs/{name}/{run}"
            trained = [f"{folder}/model.pt", f"{folder}/train_log.jsonl"]
            files += [*(trained if variant.trained else []), f"{folder}/test_predictions.jsonl"]
    return files


# Only the configured variants match a run's folder, so no other path under results/ can.
RUN_VARIANT_PATTERN = "|".join(map(re.escape, VARIANTS)) or "(?!)"
