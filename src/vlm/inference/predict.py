"""Batched, resumable predictions for a named group, through LLaMA-Factory's ``do_predict`` or vLLM.

Documents are predicted in chunks, greedy. The ``llamafactory`` backend runs each
chunk through ``llamafactory-cli train`` (``do_predict`` + ``predict_with_generate``);
the ``vllm`` backend (``vlm.inference.vllm_backend``) starts one vLLM engine on the model (with
the adapter merged in) and encodes prompts with LLaMA-Factory's own template. Each finished chunk is committed to the
SQLite store in one transaction, so a killed run resumes with only the missing
documents. The template, prompt and image resolution come from the training
config, so inference sees exactly what training saw.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vlm.data.augmented_dataset import split_dataset_name
from vlm.data.records import (
    ground_truth,  # a QA record's accepted answers, else the JSON target
    load_documents,
)
from vlm.data.registry import sharegpt_entry
from vlm.errors import VlmError
from vlm.fsutil import atomic_write_json, atomic_write_text, sha256_file
from vlm.inference.constrain import Constraint, resolve_constraint
from vlm.inference.parsing import parse_prediction
from vlm.inference.store import Prediction, Store
from vlm.inference.token_scores import Generated
from vlm.inference.transformers_backend import TransformersGenerator
from vlm.inference.vllm_backend import VLLM_KEYS, VllmGenerator, as_bool, choose_backend, merged_model
from vlm.lf.cli import find_llamafactory_cli
from vlm.lf.data import lf_default, read_dataset_info
from vlm.lf.inputs import model_type, mrope_model_types
from vlm.output import progress, warn
from vlm.procs import log_tail, run_child
from vlm.training.checkpoints import resolve_checkpoint, weights_hash
from vlm.training.config import load_config

# Settings that must match between training and inference (train/inference skew).
SKEW_KEYS = ("template", "image_max_pixels", "image_min_pixels", "cutoff_len")


@dataclass
class PredictSpec:
    """One prediction run: which model, which documents, how to generate."""

    group: str
    config: Path | None = None
    model: str | None = None
    adapter: str | None = None
    no_adapter: bool = False
    dataset: str | None = None
    dataset_dir: str | None = None
    split: str = "test"
    store: Path = Path("runs/predictions.sqlite")
    work_dir: Path = Path("runs/predict")
    batch_size: int = 8
    max_new_tokens: int = 1024
    chunk_size: int | None = None  # 32 documents per LLaMA-Factory run, 256 per vLLM call
    limit: int | None = None
    overwrite: bool = False
    backend: str = "auto"
    overrides: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None  # best (vlm select's winner), final, N or checkpoint-N of the config's run
    weights_hash: str | None = None  # vlm select's hash of a whole model's weights (its model hash names no weights)
    constrain: str = "none"  # none, json (any object) or schema (CORD's, or json_schema's): vlm.inference.constrain
    json_schema: Path | None = None


def resolve_settings(spec: PredictSpec) -> dict[str, Any]:
    """Merge the training config, the run manifest and the command line; warn about skew."""
    cfg = load_config(spec.config) if spec.config else {}
    trained = {}
    if cfg.get("output_dir"):
        manifest = Path(cfg["output_dir"]) / "vlm_run.json"
        if manifest.is_file():
            trained = json.loads(manifest.read_text()).get("config", {}) or {}
            for key in SKEW_KEYS:
                if key in trained and key in cfg and trained[key] != cfg[key]:
                    warn(f"{key} is {cfg[key]!r} in {spec.config} but the run was trained with {trained[key]!r}; "
                         "using the trained value")
    base = {**cfg, **{k: trained[k] for k in SKEW_KEYS if k in trained}}
    settings = {
        "model_name_or_path": spec.model or base.get("model_name_or_path"),
        "template": base.get("template"),
        "dataset_dir": spec.dataset_dir or base.get("dataset_dir"),
        "cutoff_len": base["cutoff_len"] if "cutoff_len" in base else lf_default("cutoff_len"),
        "image_max_pixels": base.get("image_max_pixels"),
        "image_min_pixels": base.get("image_min_pixels"),
        "trust_remote_code": base.get("trust_remote_code", True),
    }
    for key, value in spec.overrides.items():
        if key in SKEW_KEYS and key in base and base[key] != value:
            warn(f"{key}={value!r} differs from training ({base[key]!r}): predictions will not see what training saw")
        settings[key] = value
    adapter = None if spec.no_adapter else (spec.adapter or (cfg.get("output_dir") if spec.config else None))
    if spec.checkpoint:
        if not spec.config or spec.adapter or spec.model or spec.no_adapter:
            raise VlmError("--checkpoint picks one of the saved models of the --config run",
                           hint="pass --config TRAIN_YAML, and drop --adapter, --model and --no-adapter.")
        adapter = str(resolve_checkpoint(cfg, spec.config, spec.checkpoint, spec.split))
        if cfg.get("finetuning_type") in ("full", "freeze") and not spec.weights_hash:
            # A whole model's hash is its path and config.json, which a run retrained in place keeps: name the
            # weights too, or the group's old predictions would be taken for this checkpoint's.
            spec.weights_hash = weights_hash(Path(adapter))
    if adapter and not spec.adapter and not spec.model and cfg.get("finetuning_type") in ("full", "freeze"):
        # A full (or freeze) fine-tune saves a whole model, not an adapter: predict with it.
        if not (Path(adapter) / "config.json").is_file():
            raise VlmError(f"no fine-tuned model in {adapter}",
                           hint="train first (vlm train CONFIG), or --no-adapter for the base model.")
        settings["model_name_or_path"], adapter = str(adapter), None
    if adapter and not (Path(adapter) / "adapter_config.json").is_file():
        raise VlmError(f"no LoRA adapter in {adapter}",
                       hint="train first (vlm train CONFIG), pass --adapter DIR, or --no-adapter for the base model.")
    settings["adapter_name_or_path"] = adapter
    missing = [k for k in ("model_name_or_path", "template", "dataset_dir") if not settings.get(k)]
    if missing:
        raise VlmError(f"missing {', '.join(missing)}",
                       hint="pass --config TRAIN_YAML, or --model/--dataset-dir options.")
    if settings["image_max_pixels"] is None:
        settings.pop("image_max_pixels")
    if settings["image_min_pixels"] is None:
        settings.pop("image_min_pixels")
    base_ds = cfg.get("dataset", "cord_train")
    base_ds = base_ds.split(",")[0].strip() if isinstance(base_ds, str) else base_ds[0]

    settings["dataset"] = spec.dataset or split_dataset_name(base_ds, spec.split)
    return settings


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _model_hash(model: str) -> str:
    cfg = Path(model) / "config.json"
    return _digest({"model": model, "config": sha256_file(cfg) if cfg.is_file() else None})


def _adapter_hash(adapter: str | None) -> str | None:
    if not adapter:
        return None
    weights = sorted(Path(adapter).glob("adapter_model.*"))
    return _digest([sha256_file(w) for w in weights] or adapter)


def _chunk_yaml(settings: dict[str, Any], spec: PredictSpec, chunk_dir: Path) -> dict[str, Any]:
    cfg = {k: v for k, v in settings.items()
           if k not in ("dataset", "dataset_dir", *VLLM_KEYS) and v is not None}
    cfg.update(
        stage="sft", do_predict=True, predict_with_generate=True, finetuning_type="lora",
        eval_dataset="chunk", dataset_dir=str(chunk_dir), output_dir=str(chunk_dir / "out"),
        overwrite_output_dir=True, per_device_eval_batch_size=spec.batch_size, max_new_tokens=spec.max_new_tokens,
        do_sample=False, report_to="none", preprocessing_num_workers=1, overwrite_cache=True,
    )
    return cfg


def _run_chunk(records: list[dict[str, Any]], settings: dict[str, Any], spec: PredictSpec,
               chunk_dir: Path) -> list[str]:
    """Predict one chunk with the real ``llamafactory-cli``; return the raw generations in order."""
    chunk_dir.mkdir(parents=True, exist_ok=True)
    data = chunk_dir / "chunk.json"
    atomic_write_json(data, [{"messages": r["messages"], "images": r["images"]} for r in records])
    atomic_write_json(chunk_dir / "dataset_info.json", {"chunk": sharegpt_entry(data, chunk_dir / "dataset_info.json")})
    cfg_path = chunk_dir / "predict.yaml"
    atomic_write_text(cfg_path, yaml.safe_dump(_chunk_yaml(settings, spec, chunk_dir), sort_keys=False))
    out_file = chunk_dir / "out" / "generated_predictions.jsonl"
    if out_file.exists():
        out_file.unlink()
    log = chunk_dir / "predict.log"
    env = {**os.environ, "DISABLE_VERSION_CHECK": "1"}
    code = run_child([find_llamafactory_cli(), "train", str(cfg_path)], log, env=env)
    if code != 0:
        raise VlmError(f"llamafactory-cli predict failed (exit {code}):\n{log_tail(log)}",
                       hint=f"full log: {log}", exit_code=code)
    lines = [json.loads(line) for line in out_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(lines) != len(records):
        raise VlmError(f"LLaMA-Factory returned {len(lines)} predictions for {len(records)} documents",
                       hint=f"some examples were dropped; see {log}")
    return [line.get("predict", "") for line in lines]


def run_hashes(settings: dict[str, Any], prompt: str, spec: PredictSpec, backend: str,
               constraint: Constraint | None = None) -> tuple[dict[str, Any], dict[str, str | None]]:
    """Generation settings and the hashes that tell one group's runs apart (mixing them is refused)."""
    if constraint is None:
        constraint = resolve_constraint(spec.constrain, spec.json_schema)
    gen: dict[str, Any] = {"max_new_tokens": spec.max_new_tokens, "do_sample": False}
    if backend == "llamafactory":  # the same keys as before the other backends, so stored groups stay resumable
        gen["batch_size"] = spec.batch_size
    elif backend == "transformers":
        gen.update(backend=backend, **{k: settings.get(k) for k in ("infer_dtype", "repetition_penalty")})
    else:
        gen.update(backend=backend, runtime_lora=as_bool(settings.get("vllm_lora", False)),
                   **{k: settings.get(k) for k in ("infer_dtype", "vllm_config", "repetition_penalty")})
    gen.update(constraint.settings())  # nothing for --constrain none: unconstrained groups keep their hashes
    model_hash = _model_hash(settings["model_name_or_path"])
    if spec.weights_hash:  # a checkpoint retrained in place keeps its path and config.json, not its weights
        model_hash = _digest([model_hash, spec.weights_hash])
    hashes = {"model_hash": model_hash,
              "adapter_hash": _adapter_hash(settings["adapter_name_or_path"]),
              "prompt_hash": _digest(prompt), "gen_hash": _digest({**gen, **{k: settings.get(k) for k in SKEW_KEYS}})}
    return gen, hashes


def _generator(backend: str, settings: dict[str, Any], spec: PredictSpec, chunk_dir: Path,
               pending: list[dict[str, Any]], constraint: Constraint
               ) -> Callable[[list[dict[str, Any]]], list[Generated]]:
    """A function from a chunk of records to their raw generations, for the chosen backend (LLaMA-Factory's
    do_predict writes text only: its answers have no token scores)."""
    if backend == "llamafactory":
        return lambda chunk: [Generated(text) for text in _run_chunk(chunk, settings, spec, chunk_dir)]

    _, info = read_dataset_info(settings["dataset_dir"])
    if backend == "transformers":
        return TransformersGenerator(settings, info, spec.max_new_tokens, spec.batch_size, constraint).generate
    return vllm_generator(settings, info, spec, pending, constraint).generate


def vllm_generator(settings: dict[str, Any], info: dict[str, Any], spec: PredictSpec,
                   pending: list[dict[str, Any]], constraint: Constraint | None = None) -> VllmGenerator:
    """The vLLM engine for these settings: an adapter is merged first (cached under the work dir) unless
    ``vllm_lora`` applies it at run time; room is reserved for the most images one pending document has."""
    merged = None
    if settings.get("adapter_name_or_path") and not as_bool(settings.get("vllm_lora", False)):
        key = _digest([_model_hash(settings["model_name_or_path"]), _adapter_hash(settings["adapter_name_or_path"])])
        merged = merged_model(settings, key, spec.work_dir / "merged")
    max_images = max(len(d.get("images") or []) for d in pending)
    return VllmGenerator(settings, info, spec.max_new_tokens, merged=merged, max_images=max_images,
                         constraint=constraint)


def _stored_backend(spec: PredictSpec) -> str | None:
    """The backend a group's stored predictions were made with (groups from before vLLM: llamafactory)."""
    if not spec.store.is_file() or spec.overwrite:
        return None
    with Store(spec.store) as store:
        run = store.last_run(spec.group, spec.split)
    return ((run or {}).get("generation") or {}).get("backend", "llamafactory") if run else None


def _plan(spec: PredictSpec, docs: list[dict[str, Any]], hashes: dict[str, str | None],
          backend: str) -> list[dict[str, Any]]:
    """The documents to predict, read from the store without touching it.

    Without --overwrite, documents already stored are skipped and a group made with other settings is
    refused. With --overwrite every document is redone, and its old row is replaced only when its new
    one is committed; so a redo that would leave rows made otherwise outside this run is refused first.
    """
    if not spec.store.exists():
        return docs
    current = (hashes["model_hash"], hashes["adapter_hash"], hashes["prompt_hash"], hashes["gen_hash"])
    with Store(spec.store) as store:
        other = store.ids_made_otherwise(spec.group, spec.split, current)
        done = store.done_ids(spec.group, spec.split)
    ids = {d["id"] for d in docs}
    if spec.overwrite:
        left = other - ids
        if left:
            raise VlmError(f"--overwrite would redo {len(ids)} {spec.split} predictions of group {spec.group!r} "
                           f"but leave {len(left)} others made with different settings (e.g. {min(left)})",
                           hint="drop --limit so the whole split is redone, or use a new --group name.")
        return docs
    if other:
        raise VlmError(
            f"group {spec.group!r} already holds {len(other)} {spec.split} predictions made with a different model, "
            f"adapter, prompt or generation settings (backend now: {backend})",
            hint="pass --overwrite to redo them, or use a new --group name.")
    return [d for d in docs if d["id"] not in done]


def _prepare(spec: PredictSpec, constraint: Constraint | None = None,
             ) -> tuple[str, dict[str, Any], list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """The backend, settings, documents, generation settings and hashes of a run; writes nothing."""
    if constraint is None:
        constraint = resolve_constraint(spec.constrain, spec.json_schema)
    # auto keeps the backend a group already has, so installing vLLM does not strand half-predicted groups.
    stored = _stored_backend(spec) if spec.backend == "auto" else None
    backend = choose_backend(stored or spec.backend)
    settings = resolve_settings(spec)
    if constraint.active and backend == "llamafactory":
        raise VlmError(f"--constrain {constraint.kind} needs the transformers or vllm backend "
                       "(LLaMA-Factory's do_predict takes no logits processor)",
                       hint="use --backend transformers or --backend vllm.")
    check_backend(backend, settings["model_name_or_path"], stored=stored is not None)
    docs = load_documents(settings["dataset_dir"], settings["dataset"])
    if spec.limit:
        docs = docs[: spec.limit]
    prompt = docs[0]["messages"][0]["content"] if docs else ""
    gen, hashes = run_hashes(settings, prompt, spec, backend, constraint)
    return backend, settings, docs, gen, hashes


def prediction_status(spec: PredictSpec) -> dict[str, Any]:
    """What ``run_predict`` would find, read without writing or loading a model: the documents, those already
    stored with these settings, and those stored with other ones (which it would refuse without --overwrite)."""
    backend, settings, docs, _, hashes = _prepare(spec)
    ids = [d["id"] for d in docs]
    stored = other = set()
    if spec.store.exists():
        current = (hashes["model_hash"], hashes["adapter_hash"], hashes["prompt_hash"], hashes["gen_hash"])
        with Store(spec.store) as store:
            other = store.ids_made_otherwise(spec.group, spec.split, current) & set(ids)
            stored = store.done_ids(spec.group, spec.split) & set(ids) - other
    return {"backend": backend, "dataset": settings["dataset"], "ids": ids, "stored": len(stored),
            "made_otherwise": len(other), "model": settings["model_name_or_path"],
            "adapter": settings["adapter_name_or_path"]}


def run_predict(spec: PredictSpec, show_progress: bool = True) -> dict[str, Any]:
    """Predict every pending document of ``spec.split`` for ``spec.group`` and store the results.

    Nothing is written until the inputs, the store and the generator are known to be good; then each
    chunk is committed in one transaction as it finishes.
    """
    constraint = resolve_constraint(spec.constrain, spec.json_schema)  # a bad --json-schema fails first
    backend, settings, docs, gen, hashes = _prepare(spec, constraint)
    pending = _plan(spec, docs, hashes, backend)
    for doc in pending:  # before the model loads and anything is written
        missing = [p for p in doc.get("images") or [] if isinstance(p, str) and not Path(p).is_file()]
        if missing:
            raise VlmError(f"image {missing[0]} of document {doc['id']} not found",
                           hint="re-export the data (vlm save-cord-dataset-in-sharegpt-format DIR), or fix the path.")
    work = spec.work_dir / spec.group / spec.split
    generate = (_generator(backend, settings, spec, work / f"chunk-{os.getpid()}", pending, constraint)
                if pending else None)
    with Store(spec.store, write=True) as store:
        store.log_run(spec.group, spec.split, {"settings": settings, "generation": gen, **hashes,
                                               "pending": len(pending), "spec": asdict(spec)})
        with progress() if show_progress and pending else nullcontext() as bar:
            task = (bar.add_task(f"predict {spec.group}", total=len(docs), completed=len(docs) - len(pending))
                    if bar else None)
            replaceable = {d["id"] for d in docs} if spec.overwrite else set()
            predicted = 0
            size = chunk_size(spec, backend)
            for start in range(0, len(pending), size):
                chunk = pending[start: start + size]
                if not spec.overwrite:  # another run of the same settings may have stored some meanwhile
                    done = store.done_ids(spec.group, spec.split)
                    kept = [d for d in chunk if d["id"] not in done]
                    if bar:
                        bar.advance(task, len(chunk) - len(kept))
                    chunk = kept
                    if not chunk:
                        continue
                t0 = time.perf_counter()
                gens = generate(chunk)
                latency = (time.perf_counter() - t0) / len(chunk)
                rows = []
                for doc, gen in zip(chunk, gens):
                    parsed = parse_prediction(gen.text)
                    rows.append(Prediction(spec.group, spec.split, doc["id"], gen.text, parsed.value, parsed.error,
                                           parsed.repairs, ground_truth(doc), latency,
                                           **hashes, scores=gen.scores))
                store.put_many(rows, replaceable)
                predicted += len(rows)
                if bar:
                    bar.advance(task, len(chunk))
    shutil.rmtree(work / f"chunk-{os.getpid()}", ignore_errors=True)
    return {"group": spec.group, "split": spec.split, "backend": backend, "dataset": settings["dataset"],
            "documents": len(docs),
            "predicted": predicted, "skipped_done": len(docs) - predicted, "store": str(spec.store),
            "adapter": settings["adapter_name_or_path"], "model": settings["model_name_or_path"],
            "constrain": constraint.label(), **hashes}


def chunk_size(spec: PredictSpec, backend: str) -> int:
    """Documents per committed chunk: one batch for transformers (the model stays loaded, so small chunks
    cost nothing and a kill loses at most a batch), 32 per llamafactory-cli run, 256 per vLLM call."""
    if spec.chunk_size:
        return spec.chunk_size
    return {"transformers": spec.batch_size, "llamafactory": 32}.get(backend, 256)


def check_backend(backend: str, model: str, stored: bool = False) -> None:
    """Refuse LLaMA-Factory's do_predict for M-RoPE models: under transformers 5.6 it generates without
    ``mm_token_type_ids``, so image tokens get 1-D text positions instead of the 3-D ones training used."""
    if backend != "llamafactory":
        return

    kind = model_type(model)
    if kind in mrope_model_types() or kind is None:
        what = f"a {kind} model" if kind else f"{model} (its model type could not be read)"
        raise VlmError(
            f"LLaMA-Factory's do_predict would give {what} the wrong image positions "
            "(it calls generate without mm_token_type_ids, so M-RoPE falls back to 1-D text positions)"
            + ("; this group's stored predictions were made that way" if stored else ""),
            hint="use --backend transformers (or auto)" + (" with --overwrite to redo them" if stored else "") + ".")
