"""``kdistill run`` of a ``task: encoder`` config: a pretrained sentence encoder (the teacher, frozen) -> its
embeddings of every sentence, cached -> for every student size and seed: the student as initialised (``init``),
trained without the teacher (``scratch``: SimCSE on the same sentences, same steps, same initialisation) and
distilled (``kd``) -> mean cosine and neighbour agreement with the teacher on held-out sentences (with
``eval.int8``, also of per-row int8 copies of the teacher and the first seed's students; with
``eval.onnxruntime``, of their onnxruntime int8 copies) -> params, FLOPs and
CPU latency of the teacher and the students (and copies), timed together -> ONNX export with an onnxruntime
parity check -> summary, report. ``device`` says where the teacher embeds and the students train and are scored
(a GPU when there is one); latency is measured and ONNX exported on CPU copies. The run directory::

    config.yaml, data.json        the resolved config; sentences per split, truncations, tokenizer
    <student>-<role>-seed<k>/     metrics.jsonl, last.pt, best.pt, row.json, hf/ (save_pretrained + tokenizer +
                                  sentence-transformers module files)
    export/<student>/student.onnx the first seed's kd student, checked in onnxruntime
    onnxruntime/<model>/          eval.onnxruntime: the teacher's and each timed student's ONNX files, float32 and int8
    summary.json, summary.md, report.html

The teacher's embeddings of each split live in ``<output_dir>/_teacher_cache/encoder/``, shared between runs.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdistill.caches import state_fingerprint
from kdistill.config import ConfigError
from kdistill.data import Split
from kdistill.data.store import fingerprint
from kdistill.deploy import measure_many, on_cpu
from kdistill.dist import resolve_device
from kdistill.encoder.config import EncoderExperimentConfig, StudentSpec
from kdistill.encoder.evaluate import embed, linear_map, mean_cosine, neighbour_agreement
from kdistill.encoder.models import (
    SentenceEncoder,
    build_encoder,
    layer_count,
    load_encoder,
    save_encoder,
    shrink,
)
from kdistill.encoder.objectives import ContrastiveScratch, EncoderDistiller
from kdistill.encoder.sentences import SPLITS, Sentences, TokenizedSplit, tokenize
from kdistill.experiment.context import log, open_run_dir, plain_run_dir
from kdistill.experiment.teachers import shared_file
from kdistill.export import check_onnx, export_onnx
from kdistill.io import atomic_save, atomic_write_text, safe_load
from kdistill.lock import run_lock
from kdistill.models import count_params
from kdistill.precision import int8_copy
from kdistill.report.encoder import write_encoder_summary
from kdistill.runtime import (  # onnxruntime itself is imported only when a copy is made
    OnnxRuntimeModel,
    onnx_copy,
    quantize_onnx,
    require_onnxruntime,
)
from kdistill.taps import freeze
from kdistill.teacher import FrozenTeacher
from kdistill.text.tokenizers import TextError
from kdistill.trainer import fit

MAP_ROWS = 20_000  # training sentences the least-squares map of a row is fitted on
SMOKE = {"train": 48, "val": 8, "test": 24, "steps": 3, "queries": 8, "k": 3, "repeats": 2}


@dataclass
class Tokens:
    """The sentences of every split as one tokenizer's ids."""

    splits: dict[str, TokenizedSplit]
    tokenizer: Any

    def __getitem__(self, split: str) -> TokenizedSplit:
        return self.splits[split]


@dataclass
class EncoderRun:
    cfg: EncoderExperimentConfig
    smoke: bool
    resume: bool
    run_dir: Path
    sentences: dict[str, list[str]]
    teacher: SentenceEncoder
    tokens: Tokens  # the teacher's tokenization
    cache: dict[str, torch.Tensor]  # the teacher's embeddings per split
    max_length: int
    device: torch.device
    student_tokens: dict[str, Tokens] = field(default_factory=dict)  # per student name: what it reads


def run_encoder(cfg: EncoderExperimentConfig, smoke: bool = False, resume: bool = False) -> dict:
    with run_lock(plain_run_dir(cfg, smoke)):  # one writer per run directory
        return _run_encoder(cfg, smoke, resume)


def _run_encoder(cfg: EncoderExperimentConfig, smoke: bool, resume: bool) -> dict:
    device = resolve_device(cfg.device)  # before any work: device=cuda without a GPU is an error at once
    if cfg.eval.onnxruntime:  # before any training: a missing runtime would fail the run at its very end
        try:
            require_onnxruntime()
        except RuntimeError as e:
            raise ConfigError(f"eval.onnxruntime is on, but {e}; or set eval.onnxruntime=false") from None
    run_dir, resolved = open_run_dir(cfg, smoke, resume)

    teacher, tok, tdir = load_encoder(cfg.teacher.path)
    teacher.eval().to(device)
    log(
        f"teacher: {tdir} ({count_params(teacher):,} parameters, {layer_count(teacher)} layers × {teacher.width}); "
        f"device {device}"
    )
    sentences, read = _sentences(cfg, smoke)
    max_length = min(cfg.sentences.max_length, int(teacher.hf.config.max_position_embeddings))
    tokens = Tokens({s: tokenize(tok, sentences[s], max_length) for s in SPLITS}, tok)
    data = _describe(cfg, sentences, tokens, tdir, max_length, read)
    atomic_write_text(run_dir / "data.json", json.dumps(data, indent=1) + "\n")
    log(f"sentences: {data['sentences']}; truncated at {max_length} tokens: {data['truncated']}")
    run = EncoderRun(cfg, smoke, resume, run_dir, sentences, teacher, tokens, {}, max_length, device)
    _check_students(run)
    run.cache = _teacher_cache(run)

    rows = [_teacher_row(run)]
    students: dict[str, SentenceEncoder] = {}
    timed_role: dict[str, str] = {}
    for spec in cfg.students:
        for seed in cfg.seeds:
            for role in cfg.roles:
                row, model = _student(run, spec, role, seed)
                rows.append(row)
                if seed == cfg.seeds[0] and (role == "kd" or spec.name not in students):
                    students[spec.name] = model  # what is timed and exported: kd when trained, else as it is
                    timed_role[spec.name] = role
    copies = _int8_copies(run, students, timed_role, rows) if cfg.eval.int8 else {}
    if cfg.eval.onnxruntime:
        copies |= _served_copies(run, students, timed_role, rows)
    deploy = _deploy(run, students, copies)
    exports = _export(run, students) if cfg.eval.onnx and "kd" in cfg.roles else {}
    return write_encoder_summary(run_dir, resolved, rows, data, deploy, exports, smoke)


def _sentences(cfg: EncoderExperimentConfig, smoke: bool) -> tuple[dict[str, list[str]], Sentences]:
    """The sentences of each split (the first few of each in a smoke run), and what the reader counted."""
    read = cfg.sentences.read()
    if read.augmented:
        log(f"augment: {read.augmented:,} variants of the training sentences added")
    if read.transfer:
        n, files = read.transfer["sentences"], read.transfer["files"]
        log(f"transfer set: {n:,} more training sentences from {files:,} file(s)")
    if smoke:
        return {k: v[: SMOKE[k]] for k, v in read.text.items()}, read
    return read.text, read


def _describe(
    cfg: EncoderExperimentConfig,
    sentences: dict[str, list[str]],
    tokens: Tokens,
    tdir: Path,
    max_length: int,
    read: Sentences,
) -> dict:
    t = cfg.sentences.transfer
    return {
        "source": cfg.sentences.source,
        # the training-only source and what it added (sentences, files, filtered, duplicates of this corpus)
        "transfer": {"source": t.source, "paths": t.paths, **read.transfer} if t is not None else None,
        "augmented": read.augmented,  # variants of the training sentences in the training split
        "sentences": {s: len(sentences[s]) for s in SPLITS},
        "truncated": {s: tokens[s].truncated for s in SPLITS},
        "max_length": max_length,
        "median_tokens": {s: float(tokens[s].lengths.float().median()) for s in SPLITS},
        "tokenizer": type(tokens.tokenizer).__name__,
        "vocab_size": len(tokens.tokenizer),
        "teacher_dir": str(tdir),
        "fingerprint": _fingerprint(tokens),
    }


def _teacher_cache(run: EncoderRun) -> dict[str, torch.Tensor]:
    """The teacher's embeddings of every split, shared by every run under ``output_dir``
    (:func:`teacher_embeddings`)."""
    splits = {s: run.tokens[s].split for s in SPLITS}
    return teacher_embeddings(run.teacher, splits, Path(run.cfg.output_dir) / "_teacher_cache")[0]


def teacher_embeddings(
    teacher: SentenceEncoder, splits: dict[str, Split], root: Path
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The teacher's embeddings of each split, computed once per split and teacher and kept under
    ``root/encoder/``: runs of other students over the same sentences (and benchmarks given the same ``root``)
    read them back, and a run with a larger transfer set recomputes only its training split. Also returns the
    names of the splits computed rather than read back."""
    # the weights, and what turns token states into the embedding (pooling is fixed; normalisation is not)
    key = f"{state_fingerprint(teacher)}-normalize={teacher.normalize}"
    cache, computed = {}, []
    for s, split in splits.items():
        t0 = time.perf_counter()

        def compute(split: Split = split) -> dict:
            return {"embeddings": embed(teacher, split, teacher.pad_id)}

        ids = [f"{tuple(split.x.shape)}", fingerprint(split.x)]  # the token ids, as the image caches key inputs
        got, reused = shared_file(root, "encoder", [key, *ids], compute)
        cache[s] = got["embeddings"]
        if not reused:
            computed.append(s)
            log(f"teacher: {len(split):,} {s} sentence embeddings cached in {time.perf_counter() - t0:.1f}s")
    return cache, computed


def _fingerprint(tokens: Tokens) -> str:
    h = hashlib.sha256()
    for s in SPLITS:
        h.update(tokens[s].split.x.numpy().tobytes())
    return h.hexdigest()[:20]


def _teacher_row(run: EncoderRun) -> dict:
    return {
        "student": "teacher",
        "role": "teacher",
        "seed": 0,
        "params": count_params(run.teacher),
        "layers": layer_count(run.teacher),
        "width": run.teacher.width,
        "cos": 1.0,
        "cos_map": 1.0,
        "agreement": 1.0,
    }


# ----------------------------------------------------------------------------- students


def build_student(run: EncoderRun, spec: StudentSpec) -> tuple[SentenceEncoder, Tokens]:
    """The student as its spec says, and the tokens it reads: the teacher's, unless it has its own tokenizer;
    kept in ``run.student_tokens`` so that the sentences are tokenized once per student."""
    if spec.kwargs is not None:
        config = {"vocab_size": len(run.tokens.tokenizer), "pad_token_id": run.teacher.pad_id, **spec.kwargs}
        student, tok = build_encoder(config, run.teacher.pad_id, run.teacher.normalize), run.tokens.tokenizer
    elif spec.path is None:
        student = shrink(
            run.teacher, spec.layers, spec.hidden, spec.heads, spec.intermediate, spec.init, spec.copy_layers
        )
        tok = run.tokens.tokenizer
    else:
        student, tok, _ = load_encoder(spec.path)
    freeze(student.hf, spec.freeze)  # the same for every role: the no-teacher row trains what kd trains
    if spec.name not in run.student_tokens:
        run.student_tokens[spec.name] = _tokens_for(run, spec, tok)
    return student, run.student_tokens[spec.name]


def _tokens_for(run: EncoderRun, spec: StudentSpec, tok: Any) -> Tokens:
    """The teacher's tokens when the student's tokenizer maps every token as the teacher's does; else, with
    ``distill.retokenize``, the sentences tokenized by the student's own tokenizer; else an error naming both."""
    if tok is run.tokens.tokenizer or tok.get_vocab() == run.tokens.tokenizer.get_vocab():
        return run.tokens
    t_name = getattr(run.tokens.tokenizer, "name_or_path", "?")
    s_name = getattr(tok, "name_or_path", "?")
    d = run.cfg.distill
    if not d.retokenize:
        raise TextError(
            f"teacher tokenizer {t_name!r} ({len(run.tokens.tokenizer):,} tokens) and student {spec.name!r} tokenizer "
            f"{s_name!r} ({len(tok):,} tokens) differ: token-level terms need one tokenization. Give the student the "
            "teacher's tokenizer, or set distill.retokenize: true to tokenize the sentences once per model "
            "(sentence embeddings only)"
        )
    if d.hidden or d.relations > 0:
        raise TextError(
            f"student {spec.name!r} has its own tokenizer {s_name!r}: hidden-state and relation terms compare tokens "
            "and need the teacher's tokenizer; with distill.retokenize use the embedding terms (cosine, mse) only"
        )
    return Tokens({s: tokenize(tok, run.sentences[s], run.max_length) for s in SPLITS}, tok)


def _into_teacher_space(run: EncoderRun, student: SentenceEncoder) -> SentenceEncoder:
    """A kd student narrower than the teacher gets a linear head into its space (saved as ``2_Dense``)."""
    if student.dim != run.teacher.dim:
        student.head = nn.Linear(student.width, run.teacher.dim)
    return student


def _check_students(run: EncoderRun) -> None:
    """Build every student and its distillation objective once, before the teacher's embeddings are computed: a
    tokenizer that differs, a layer name that does not exist or widths that do not split into relation heads
    are errors now, not after minutes of work."""
    for spec in run.cfg.students:
        student, _ = build_student(run, spec)
        if "kd" in run.cfg.roles:
            _objective(run, _into_teacher_space(run, student), "kd")


def _student(run: EncoderRun, spec: StudentSpec, role: str, seed: int) -> tuple[dict, SentenceEncoder]:
    cfg = run.cfg
    name = f"{spec.name}-{role}-seed{seed}"
    out = run.run_dir / name
    torch.manual_seed(seed)
    student, tokens = build_student(run, spec)
    if role == "kd":
        _into_teacher_space(run, student)
    student.to(run.device)
    if run.resume and (out / "row.json").is_file():
        log(f"{name}: finished before the interruption, kept")
        student.load_state_dict(safe_load(out / "weights.pt"))
        return json.loads((out / "row.json").read_text()), student
    tc = cfg.train_for(spec)
    if run.smoke:
        tc = tc.model_copy(update={"steps": SMOKE["steps"], "batch_size": 8, "eval_batch_size": 8})
    seconds, steps, best = 0.0, 0, 0
    if role != "init":
        objective = _objective(run, student, role)
        res = fit(
            objective,
            tokens["train"].split,
            tokens["val"].split,
            tc,
            seed=seed,
            out_dir=out,
            desc=name,
            resume=run.resume,
            device=run.device,
        )
        seconds, steps, best = res.train_seconds, res.steps, res.best_epoch
    save_encoder(student, tokens.tokenizer, out / "hf", run.max_length)
    atomic_save({k: v.cpu() for k, v in student.state_dict().items()}, out / "weights.pt")
    row = {
        "student": spec.name,
        "role": role,
        "seed": seed,
        "params": count_params(student),
        "layers": layer_count(student),
        "width": student.width,
        **_scores(run, student, tokens),
        "train_seconds": seconds,
        "steps": steps,
        "best_epoch": best,
    }
    atomic_write_text(out / "row.json", json.dumps(row) + "\n")
    log(f"{name}: cosine {_f(row['cos'])} (linear map {row['cos_map']:.4f}), neighbours {row['agreement']:.3f}")
    return row, student


def _f(x: float | None) -> str:
    return "–" if x is None else f"{x:.4f}"


def _objective(run: EncoderRun, student: SentenceEncoder, role: str) -> nn.Module:
    if role == "scratch":
        return ContrastiveScratch(student, run.cfg.scratch.temperature)
    d = run.cfg.distill
    rel = d.relation_layers
    if d.relations > 0 and rel is None:
        last_s, last_t = layer_count(student) - 1, layer_count(run.teacher) - 1
        rel = (f"encoder.layer.{last_s}.attention.self", f"encoder.layer.{last_t}.attention.self")
    return EncoderDistiller(
        student,
        FrozenTeacher(run.teacher),
        cache=run.cache.get("train"),  # none yet when the students are checked
        val_cache=run.cache.get("val"),
        cosine=d.cosine,
        mse=d.mse,
        hidden=[tuple(p) for p in d.hidden],
        hidden_weight=d.hidden_weight,
        relations=d.relations,
        relation_layers=rel,
        relation_heads=d.relation_heads,
        similarity=d.similarity,
        similarity_temperature=d.similarity_temperature,
        similarity_mse=d.similarity_mse,
        **_bank(run),
    )


def _bank(run: EncoderRun) -> dict[str, torch.Tensor]:
    """The similarity terms' anchors: the teacher's embeddings of ``distill.similarity_bank`` training sentences
    (drawn once, the same for every student and seed), or of all of them."""
    d, train = run.cfg.distill, run.cache.get("train")
    if d.similarity <= 0 and d.similarity_mse <= 0:
        return {}
    if train is None:  # the students are checked before the teacher's embeddings exist: a stand-in of its shape
        return {"bank": torch.zeros(2, run.teacher.dim)}
    rows = torch.arange(len(train))
    if d.similarity_bank is not None and d.similarity_bank < len(train):
        rows = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[: d.similarity_bank]
    return {"bank": train[rows], "bank_rows": rows}


def _scores(run: EncoderRun, student: nn.Module, tokens: Tokens, pad_id: int | None = None) -> dict:
    """Cosine with the teacher on the test sentences (in the student's own space when it is the teacher's, and
    through a least-squares map fitted on the first ``MAP_ROWS`` training sentences: a 384-wide map is settled
    long before that, and embedding a large transfer set for it would cost more than training), and neighbour
    agreement. ``pad_id``: the padding id of a student that does not carry its own (an onnxruntime copy)."""
    queries, k = (SMOKE["queries"], SMOKE["k"]) if run.smoke else (run.cfg.eval.queries, run.cfg.eval.k)
    pad = student.pad_id if pad_id is None else pad_id
    test = embed(student, tokens["test"].split, pad)
    t_test = run.cache["test"]
    rows = torch.arange(min(MAP_ROWS, len(tokens["train"].split)))
    train = embed(student, tokens["train"].split.take(rows), pad)
    mapped = nn.functional.normalize(linear_map(train, run.cache["train"][rows])(test).detach(), dim=-1)
    return {
        "cos": mean_cosine(test, t_test) if test.shape == t_test.shape else None,
        "cos_map": mean_cosine(mapped, t_test),
        "agreement": neighbour_agreement(test, t_test, queries, min(k, len(t_test) - 1)),
    }


# ----------------------------------------------------------------------------- deployment


Copies = dict[str, tuple[nn.Module, str]]  # name -> (a copy of a model, the name of the model it copies)


def _int8_copies(
    run: EncoderRun, students: dict[str, SentenceEncoder], timed_role: dict[str, str], rows: list[dict]
) -> Copies:
    """``eval.int8``: a per-row int8 copy (SmoothQuant first with ``eval.int8_smooth``; the Linears that read one
    input, a layer's query, key and value, fused into one) of the teacher and of each timed student, named
    ``"<model> int8"``, scored like the students (one row each: role ``int8`` for the teacher's copy, the copied
    student's role for the others, so that a kd student's copy gets its own goal line, against the float32
    teacher)."""
    e = run.cfg.eval
    copies: Copies = {}
    for name, (model, tokens, role) in _sources(run, students, timed_role, "int8").items():
        # calibrated either way: the sentences also show which Linears read one input (fused: one quantisation)
        q = int8_copy(model, calibrate=_calibration(run, tokens), alpha=e.int8_smooth)
        copies[f"{name} int8"] = (q, name)
        rows.append(_copy_row(run, f"{name} int8", role, model, q, tokens))
    return copies


def _served_copies(
    run: EncoderRun, students: dict[str, SentenceEncoder], timed_role: dict[str, str], rows: list[dict]
) -> Copies:
    """``eval.onnxruntime``: the teacher and each timed student exported to ONNX and run by onnxruntime, as
    exported (``"<model> onnx"``, timed only: it answers as the model does) and dynamically quantised to int8
    (``"<model> onnx-int8"``, SmoothQuant first with ``eval.int8_smooth``; scored like the int8 copies). The
    files go to ``onnxruntime/<model>/`` in the run directory."""
    smooth = run.cfg.eval.int8_smooth
    copies: Copies = {}
    for name, (model, tokens, role) in _sources(run, students, timed_role, "onnx-int8").items():
        model = on_cpu(model).eval()
        where = run.run_dir / "onnxruntime" / name
        example = tokens["test"].split.x[:2]
        served = onnx_copy(model, "onnx", example, where, dynamic=(0, 1), name="float32")
        copies[f"{name} onnx"] = (served, name)
        if smooth is None:  # quantise the file just written
            quantize_onnx(served.path, where / "int8.onnx")
            q: nn.Module = OnnxRuntimeModel(where / "int8.onnx")
        else:  # a smoothed float copy is exported and quantised
            calibrate = _calibration(run, tokens)
            q = onnx_copy(
                model, "onnx-int8-sq", example, where, calibrate=calibrate, alpha=smooth, dynamic=(0, 1), name="int8"
            )
        copies[f"{name} onnx-int8"] = (q, name)
        rows.append(_copy_row(run, f"{name} onnx-int8", role, model, q, tokens))
    return copies


def _sources(
    run: EncoderRun, students: dict[str, SentenceEncoder], timed_role: dict[str, str], teacher_role: str
) -> dict[str, tuple[SentenceEncoder, Tokens, str]]:
    """The models a copy is made of: the teacher (its copy's row gets ``teacher_role``) and each timed student
    (its copy's row gets the student's role, so that a kd student's copy gets its own goal line)."""
    sources = {"teacher": (run.teacher, run.tokens, teacher_role)}
    return sources | {name: (m, run.student_tokens[name], timed_role[name]) for name, m in students.items()}


def _copy_row(run: EncoderRun, name: str, role: str, model: SentenceEncoder, q: nn.Module, tokens: Tokens) -> dict:
    """The quality row of ``q``, a copy of ``model``, scored against the float32 teacher like the students."""
    row = {"student": name, "role": role, "seed": run.cfg.seeds[0], "params": count_params(model)}
    row |= {"layers": layer_count(model), "width": model.width, **_scores(run, q, tokens, model.pad_id)}
    log(f"{name}: cosine {_f(row['cos'])}, neighbours {row['agreement']:.3f}")
    return row


def _calibration(run: EncoderRun, tokens: Tokens) -> Callable[[nn.Module], torch.Tensor]:
    """What an int8 copy is calibrated on (SmoothQuant's ranges, which Linears share an input): the model's
    embeddings of the first ``eval.int8_calibration`` training sentences (never the test sentences it is scored
    on)."""
    train = tokens["train"].split
    sample = train.take(torch.arange(min(run.cfg.eval.int8_calibration, len(train))))
    return lambda model: embed(model, sample, model.pad_id)


def _deploy(run: EncoderRun, students: dict[str, SentenceEncoder], copies: Copies) -> dict:
    """Params, FLOPs and CPU latency (1 thread) of the teacher and each student (and their copies: int8,
    onnxruntime), timed together."""
    e = run.cfg.eval
    L = e.latency_tokens or max(2, round(statistics.median(run.tokens["test"].lengths.tolist())))
    # ids every model has (a student with its own tokenizer may have fewer), above padding and special tokens
    vocab = min(int(m.hf.config.vocab_size) for m in (run.teacher, *students.values()))
    lo = min(1000, vocab // 2)

    def ids(b: int, g: torch.Generator) -> torch.Tensor:
        return torch.randint(lo, vocab, (b, L), generator=g)

    models = {"teacher": run.teacher, **students, **{name: q for name, (q, _) in copies.items()}}
    t0 = time.perf_counter()
    figures = measure_many(
        models,
        (L,),
        threads=1,
        repeats=SMOKE["repeats"] if run.smoke else e.repeats,
        batch_sizes=e.batch_sizes,
        make_input=ids,
    )
    for name, (q, of) in copies.items():
        # packed int8 weights are not parameters, the FLOP counter skips quantised matmuls and sees nothing inside
        # onnxruntime: a copy has the params and FLOPs of the model it copies
        figures[name] |= {"params": figures[of]["params"], "flops_per_sample": figures[of]["flops_per_sample"]}
        if isinstance(q, OnnxRuntimeModel):  # its weights are in its file, not in a state_dict
            figures[name]["weights_bytes"] = q.path.stat().st_size
    log(
        f"deploy: {len(models)} models timed at {L} tokens, batches {e.batch_sizes}, in {time.perf_counter() - t0:.0f}s"
    )
    return {"tokens": L, "figures": figures}


def _export(run: EncoderRun, students: dict[str, SentenceEncoder]) -> dict:
    """ONNX of each first-seed kd student (one input: token ids, batch and length dynamic), checked against
    PyTorch in onnxruntime on test sentences."""
    results = {}
    for name, model in students.items():
        model = on_cpu(model)
        x = run.student_tokens[name]["test"].split.x[:16]
        path = run.run_dir / "export" / name / "student.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        model.eval()
        with torch.no_grad():
            reference = model(x)
        export_onnx(model, x[:2], path, name, dynamic=(0, 1))
        results[name] = {"path": str(path.relative_to(run.run_dir)), **check_onnx(path, x, reference, None)}
        log(f"export: {path} (max |difference| {results[name]['max_abs_diff']:.2e} in onnxruntime)")
    return results
