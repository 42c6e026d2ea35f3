"""Do two ways of running a model write the same answers? The comparison behind ``vlm merge --verify`` (adapter
against merged model) and ``vlm parity`` (one backend against another, or one setting against another).

Both sides predict the same documents, greedy, and the answers are compared byte for byte. Where two answers
differ, the first differing token is found, and each side scores the prefix both sides generated, teacher-forced
(one forward pass over the prompt and that prefix), for the two tokens there:

    margin_a = score_A(token_a) - score_A(token_b)     # how much side A preferred its own token
    margin_b = score_B(token_b) - score_B(token_a)     # how much side B preferred its own token

Scores are logits (transformers) or log-probabilities (vLLM's top 20); a difference of log-probabilities at one
position is the difference of the logits, so the margins mean the same on both backends.

A divergence is a **near-tie** when both margins are at most ``NEAR_TIE`` logits: the two tokens were about
equally likely on both sides, and rounding (bf16 weights, another kernel or batch shape) decided which one won.
It is **drift** when either side preferred its token by more (or a token is outside vLLM's top 20): the two sides
compute different functions. Only drift fails the check. Why 0.5: bf16 keeps 8 significant bits, so a logit near
30 is rounded by up to 0.06 each time it is stored; a few such roundings stay well under 0.5 (a bf16 copy of a
float32 merge moved the medium test model's logits by at most 0.09), while a wrong weight or image resolution moved
the winning token's lead by 1.3 to 13 logits (docs/prediction.md has the numbers).

``vlm merge --verify N`` (``merge_and_verify`` below) merges a LoRA adapter with ``vlm.training.merge``
(``llamafactory-cli export``) and then compares the merged model with its adapter here: the check needs the
prediction engines, which live in this stage, so the step that does both is here and ``vlm merge`` calls it. The
first N documents of the run's validation split are predicted on the transformers backend, once by the base model
with the adapter (as ``vlm predict`` loads it) and once by the merged model.

When both sides run on transformers, each document's largest logit difference over the tokens both sides generated
is reported too (``max_logit_diff``): byte-identical answers can hide a damaged model, and this number shows it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from vlm.data.records import load_documents
from vlm.errors import VlmError
from vlm.inference.predict import PredictSpec, resolve_settings, vllm_generator
from vlm.inference.transformers_backend import TransformersGenerator
from vlm.inference.vllm_backend import choose_backend, stdout_to_stderr
from vlm.lf.cli import LaunchPlan
from vlm.lf.data import read_dataset_info
from vlm.lf.inputs import mm_token_type_ids
from vlm.output import info
from vlm.training.merge import MergeSpec, merge

NEAR_TIE = 0.5  # logits; see the module docstring
VLLM_TOP = 20  # log-probabilities vLLM returns per position (its default max_logprobs)
PARITY_BACKENDS = ("transformers", "vllm")
VERIFY_SPLIT = "validation"


@dataclass
class Side:
    """One way of running the model: a label for the report, a backend and its resolved settings."""

    label: str
    backend: str
    settings: dict[str, Any]


@dataclass
class DocResult:
    """One document: equal answers, or where and how strongly the two sides parted."""

    id: str
    verdict: str  # match, near-tie or drift
    tokens_a: int
    tokens_b: int
    position: int | None = None  # the first differing token (0 = the first generated one)
    token_a: str | None = None
    token_b: str | None = None
    margin_a: float | None = None
    margin_b: float | None = None
    context: str = ""  # the end of the shared prefix, for reading the report
    max_logit_diff: float | None = None  # over the shared tokens, teacher-forced (transformers on both sides)
    text_a: str = ""
    text_b: str = ""


@dataclass
class ParityReport:
    a: str
    b: str
    near_tie: float
    documents: list[DocResult] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def count(self, verdict: str) -> int:
        return sum(d.verdict == verdict for d in self.documents)

    def max_logit_diff(self) -> float | None:
        """The largest logit difference between the sides over the tokens both generated (None: not measured)."""
        diffs = [d.max_logit_diff for d in self.documents if d.max_logit_diff is not None]
        return max(diffs) if diffs else None

    @property
    def ok(self) -> bool:
        return self.count("drift") == 0

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "documents": len(self.documents), "matches": self.count("match"),
                "near_ties": self.count("near-tie"), "drifts": self.count("drift"), "ok": self.ok,
                "near_tie_threshold": self.near_tie, "max_logit_diff": self.max_logit_diff(), "seconds": self.seconds,
                "per_document": [asdict(d) for d in self.documents]}

    def lines(self) -> list[str]:
        """The report as text: the counts, then one line per document that differs."""
        n = len(self.documents)
        head = (f"{self.a} vs {self.b}: {self.count('match')}/{n} byte-identical, {self.count('near-tie')} near-ties "
                f"(both margins <= {self.near_tie:g}), {self.count('drift')} drifts")
        rows = [head]
        if self.max_logit_diff() is not None:
            rows.append(f"  largest logit difference over the tokens both sides generated: {self.max_logit_diff():.3g}")
        for d in self.documents:
            if d.verdict == "match":
                continue
            rows.append(f"  {d.id}: {d.verdict} at token {d.position} after {d.context!r}: "
                        f"{self.a} {d.token_a!r} (margin {_fmt(d.margin_a)}) vs "
                        f"{self.b} {d.token_b!r} (margin {_fmt(d.margin_b)})")
        rows.append("  " + ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items()))
        return rows


def _fmt(margin: float | None) -> str:
    return "n/a" if margin is None else f"{margin:+.3f}"


class _Transformers:
    """The transformers backend: greedy ids from ``TransformersGenerator``, teacher-forced logits."""

    def __init__(self, settings: dict[str, Any], info: dict[str, Any], max_new_tokens: int, batch_size: int):
        self.gen = TransformersGenerator(settings, info, max_new_tokens, batch_size)
        self.tokenizer, self.stops = self.gen.encoder.tokenizer, set(self.gen.encoder.stop_token_ids)

    def ids(self, records: list[dict[str, Any]]) -> list[list[int]]:
        return [_until_stop(row, self.stops) for row in self.gen.generate_ids(records)]

    def scores(self, record: dict[str, Any], prefix: list[int], tokens: list[int]) -> list[float | None]:
        row = self.logits(record, prefix)[-1]
        return [float(row[t]) for t in tokens]

    def logits(self, record: dict[str, Any], prefix: list[int]) -> Any:
        """Teacher-forced logits over the prompt and ``prefix``: the rows that predict each prefix token, and the
        next one (a float32 tensor on the CPU, ``len(prefix) + 1`` rows)."""
        import torch

        inputs = self.gen.encoder.batch([record], self.gen.model)
        ids = torch.cat([inputs["input_ids"], torch.tensor([prefix], dtype=torch.long)], dim=1)
        inputs.update(input_ids=ids, attention_mask=torch.ones_like(ids))
        types = mm_token_type_ids(self.gen.model, ids)  # the prefix is text: its rows get type 0
        if types is not None:
            inputs["mm_token_type_ids"] = types
        inputs = {k: v.to(self.gen.device) if hasattr(v, "to") else v for k, v in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.gen.model.dtype)
        with torch.inference_mode():
            return self.gen.model(**inputs).logits[0, -(len(prefix) + 1):].float().cpu()


class _Vllm:
    """The vLLM backend: greedy ids from vLLM, and its top log-probabilities after the shared prefix."""

    def __init__(self, settings: dict[str, Any], info: dict[str, Any], max_new_tokens: int,
                 records: list[dict[str, Any]], work_dir: Path):
        spec = PredictSpec(group="parity", max_new_tokens=max_new_tokens, work_dir=work_dir)
        self.gen = vllm_generator(settings, info, spec, records)
        self.tokenizer, self.stops = self.gen.encoder.tokenizer, set(self.gen.encoder.stop_token_ids)

    def ids(self, records: list[dict[str, Any]]) -> list[list[int]]:
        prompts = [self.gen.encoder.encode(r)[0] for r in records]
        with stdout_to_stderr():
            outputs = self.gen.llm.generate(prompts, self.gen.params, use_tqdm=False, lora_request=self.gen.lora)
        rows = []
        for out in outputs:
            done = out.outputs[0] if out.outputs else None
            row = list(done.token_ids) if done else []
            if done and done.finish_reason == "stop" and (not row or row[-1] not in self.stops):
                # vLLM may leave the stop token out; transformers keeps it, so put it back for the comparison
                row.append(done.stop_reason if isinstance(done.stop_reason, int) else self.tokenizer.eos_token_id)
            rows.append(_until_stop(row, self.stops))
        return rows

    def scores(self, record: dict[str, Any], prefix: list[int], tokens: list[int]) -> list[float | None]:
        from vllm import SamplingParams

        prompt = self.gen.encoder.encode(record)[0]
        prompt["prompt_token_ids"] = list(prompt["prompt_token_ids"]) + list(prefix)
        params = SamplingParams(temperature=0.0, max_tokens=1, logprobs=VLLM_TOP)
        with stdout_to_stderr():
            out = self.gen.llm.generate([prompt], params, use_tqdm=False, lora_request=self.gen.lora)[0]
        top = out.outputs[0].logprobs[0] if out.outputs and out.outputs[0].logprobs else {}
        return [top[t].logprob if t in top else None for t in tokens]


def _until_stop(row: list[int], stops: set[int]) -> list[int]:
    """The generated ids up to and including the first stop token (what follows is padding)."""
    for i, token in enumerate(row):
        if token in stops:
            return row[: i + 1]
    return row


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """The index of the first token where ``a`` and ``b`` differ (one ending first counts), or None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def verdict(margin_a: float | None, margin_b: float | None, near_tie: float) -> str:
    """near-tie when both sides' margins are known and at most ``near_tie``; drift otherwise."""
    known = margin_a is not None and margin_b is not None
    return "near-tie" if known and abs(margin_a) <= near_tie and abs(margin_b) <= near_tie else "drift"


def _engine(side: Side, records: list[dict[str, Any]], max_new_tokens: int, batch_size: int, work_dir: Path) -> Any:
    """A loaded engine for one side."""
    _, info = read_dataset_info(side.settings["dataset_dir"])
    if side.backend == "transformers":
        return _Transformers(side.settings, info, max_new_tokens, batch_size)
    return _Vllm(side.settings, info, max_new_tokens, records, work_dir)


def compare(a: Side, b: Side, records: list[dict[str, Any]], max_new_tokens: int = 1024, batch_size: int = 8,
            near_tie: float = NEAR_TIE, work_dir: Path = Path("runs/predict")) -> ParityReport:
    """Predict ``records`` on both sides and compare them token by token. Both engines stay loaded until the
    margins are scored, so each margin comes from the model that generated (memory: two models at once)."""
    if not records:
        raise VlmError("no documents to compare", hint="check the split and --limit.")
    report = ParityReport(a.label, b.label, near_tie)
    engines, ids = [], []
    for side in (a, b):
        t0 = time.perf_counter()
        engines.append(_engine(side, records, max_new_tokens, batch_size, work_dir))
        ids.append(engines[-1].ids(records))
        report.seconds[f"{side.label} ({side.backend})"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    for record, ids_a, ids_b in zip(records, *ids):
        report.documents.append(_compare_one(record, ids_a, ids_b, engines, near_tie))
    report.seconds["margins"] = round(time.perf_counter() - t0, 2)
    return report


def _compare_one(record: dict[str, Any], ids_a: list[int], ids_b: list[int], engines: list[Any],
                 near_tie: float) -> DocResult:
    ea, eb = engines
    text_a = ea.tokenizer.decode(ids_a, skip_special_tokens=True)
    text_b = eb.tokenizer.decode(ids_b, skip_special_tokens=True)
    result = DocResult(str(record.get("id")), "match", len(ids_a), len(ids_b))
    pos = first_divergence(ids_a, ids_b)
    shared = ids_a[:pos] if pos is not None else ids_a[:-1]  # what both sides generated (a match: up to the end)
    logits = None
    if hasattr(ea, "logits") and hasattr(eb, "logits"):  # full rows on both sides: how far apart, matched or not
        logits = ea.logits(record, shared), eb.logits(record, shared)
        result.max_logit_diff = round(float((logits[0] - logits[1]).abs().max()), 6)
    if pos is None or text_a.encode() == text_b.encode():
        return result
    result.position, result.text_a, result.text_b = pos, text_a, text_b
    result.context = ea.tokenizer.decode(ids_a[:pos], skip_special_tokens=True)[-40:]
    tok_a = ids_a[pos] if pos < len(ids_a) else None  # None: this side stopped at max_new_tokens
    tok_b = ids_b[pos] if pos < len(ids_b) else None
    result.token_a = ea.tokenizer.decode([tok_a]) if tok_a is not None else "<max_new_tokens>"
    result.token_b = eb.tokenizer.decode([tok_b]) if tok_b is not None else "<max_new_tokens>"
    if tok_a is not None and tok_b is not None:
        if logits:
            sa, sb = ([float(side[-1, t]) for t in (tok_a, tok_b)] for side in logits)
        else:
            sa, sb = ea.scores(record, shared, [tok_a, tok_b]), eb.scores(record, shared, [tok_a, tok_b])
        result.margin_a = None if None in sa else round(sa[0] - sa[1], 4)
        result.margin_b = None if None in sb else round(sb[1] - sb[0], 4)
    result.verdict = verdict(result.margin_a, result.margin_b, near_tie)
    return result


@dataclass
class ParitySpec:
    """``vlm parity``: which model, which documents, the two backends and what differs between them."""

    config: Path | None = None
    model: str | None = None
    adapter: str | None = None
    no_adapter: bool = False
    dataset: str | None = None
    dataset_dir: str | None = None
    split: str = "validation"
    limit: int = 8
    backends: tuple[str, str] = ("transformers", "vllm")
    overrides: dict[str, Any] = field(default_factory=dict)  # both sides
    overrides_b: dict[str, Any] = field(default_factory=dict)  # the second side only
    max_new_tokens: int = 1024
    batch_size: int = 8
    near_tie: float = NEAR_TIE
    work_dir: Path = Path("runs/predict")


def run_parity(spec: ParitySpec) -> ParityReport:
    """The first ``limit`` documents of the split through both backends, compared (see ``compare``)."""
    if len(spec.backends) != 2:
        raise VlmError(f"--backends takes two backends, not {','.join(spec.backends)!r}",
                       hint="e.g. --backends transformers,vllm")
    for name in spec.backends:
        if name not in PARITY_BACKENDS:
            raise VlmError(f"vlm parity compares {' and '.join(PARITY_BACKENDS)}, not {name!r}",
                           hint="e.g. --backends transformers,vllm (or transformers,transformers with --set-b).")
    sides = []
    for i, name in enumerate(spec.backends):
        overrides = {**spec.overrides, **(spec.overrides_b if i else {})}
        pspec = PredictSpec(group="parity", config=spec.config, model=spec.model, adapter=spec.adapter,
                            no_adapter=spec.no_adapter, dataset=spec.dataset, dataset_dir=spec.dataset_dir,
                            split=spec.split, overrides=overrides)
        label = name if spec.backends[0] != spec.backends[1] else f"{name}-{'ab'[i]}"
        sides.append(Side(label, choose_backend(name), resolve_settings(pspec)))
    if sides[0].settings == sides[1].settings and sides[0].backend == sides[1].backend:
        raise VlmError("both sides have the same backend and settings: there is nothing to compare",
                       hint="name two backends, or change one side with --set-b key=value.")
    records = load_documents(sides[0].settings["dataset_dir"], sides[0].settings["dataset"])[: spec.limit]
    return compare(sides[0], sides[1], records, spec.max_new_tokens, spec.batch_size, spec.near_tie, spec.work_dir)


@dataclass
class VerifySpec:
    """How ``vlm merge`` checks its result; ``documents=0`` skips the check."""

    documents: int = 8
    near_tie: float = NEAR_TIE
    max_new_tokens: int = 1024
    batch_size: int = 8
    only: bool = False  # check the model already in the export dir; merge nothing


def merge_and_verify(spec: MergeSpec, verify: VerifySpec
                     ) -> tuple[LaunchPlan, dict[str, Any], int | None, ParityReport | None]:
    """Merge (unless ``verify.only``), then compare the merged model with its adapter on ``verify.documents``
    validation documents. Returns the merge's plan, config and exit code, and the report (None when not checked).

    The documents are found before the merge runs: a run without a validation split is refused before minutes of
    merging, not after them."""
    if verify.only and not verify.documents:
        raise VlmError("--verify-only with --no-verify (or --verify 0) checks nothing", hint="pass --verify N, N >= 1.")
    plan, merged, code = merge(replace(spec, dry_run=True))  # the adapter and export dir, nothing run
    if verify.only and not (Path(merged["export_dir"]) / "config.json").is_file():
        raise VlmError(f"no merged model (config.json) in {merged['export_dir']}",
                       hint="merge first (drop --verify-only), or pass --export-dir of the merged model.")
    inputs = _verify_inputs(spec.config, merged, verify) if verify.documents and not spec.dry_run else None
    if verify.only:
        code = 0
    elif not spec.dry_run:
        plan, merged, code = merge(spec)
    if code or inputs is None:
        return plan, merged, code, None
    with_adapter, records = inputs
    export_dir = str(merged["export_dir"])
    merged_model = resolve_settings(PredictSpec(group="verify", config=spec.config, model=export_dir,
                                                no_adapter=True, split=VERIFY_SPLIT))
    info(f"verifying the merge on {len(records)} {with_adapter['dataset']} documents: adapter vs merged model")
    return plan, merged, code, compare(Side("adapter", "transformers", with_adapter),
                                       Side("merged", "transformers", merged_model), records, verify.max_new_tokens,
                                       verify.batch_size, verify.near_tie)


def _verify_inputs(config: Path, merged: dict[str, Any], verify: VerifySpec
                   ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The adapter's prediction settings and the first ``verify.documents`` validation documents."""
    try:
        with_adapter = resolve_settings(PredictSpec(group="verify", config=config,
                                                    adapter=str(merged["adapter_name_or_path"]), split=VERIFY_SPLIT))
        records = load_documents(with_adapter["dataset_dir"], with_adapter["dataset"])[: verify.documents]
    except VlmError as e:
        raise VlmError(f"cannot verify the merge: {e.message}",
                       hint=f"{e.hint + '; or ' if e.hint else ''}merge with --no-verify.") from None
    if not records:
        raise VlmError(f"cannot verify the merge: {with_adapter['dataset']} has no documents",
                       hint="export a validation split with documents, or merge with --no-verify.")
    return with_adapter, records
