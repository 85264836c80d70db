"""Measured efficiency of pruning methods (VisPruner Tables 5-8; FoPru Table 1).

Per method and kept fraction (parameters matched as in ``methods.matched_settings``) and the unpruned model,
one batch of prompts is answered greedily with exactly ``new_tokens`` tokens (``min_new_tokens``), and each
run records:

- ``prefill_ms``: time to first token (FoPru's TTFT): from the ``generate`` call to the end of the first
  forward, so the vision tower, the method's scoring and the prefill are all in it;
- ``decode_ms_per_token``: from the end of the first forward to the end of the last, per decoded token
  (FoPru's TPOT);
- ``kv_cache_mb``: the KV cache right after prefill, from the real cache tensors (each layer's keys and
  values, numel × element size): in-LLM pruning keeps full caches in the layers before its stage;
- ``peak_memory_mb``: on CUDA ``torch.cuda.max_memory_allocated`` over the run; NaN on CPU, where no
  allocator statistic covers torch's tensors (the KV cache is the memory figure there);
- ``flops_reduction``: the theoretical prefill reduction (eq. 1) of the batch's real kept counts.

CUDA is synchronised before every timestamp. Settings run round-robin after one warm-up round and the
table keeps the medians over ``repeats`` rounds; the measured prefill speed-up is set against the
FLOPs prediction 1 / (1 - reduction). Measurements are stored under ``out`` keyed by everything they
depend on, so a re-run shows the same numbers (delete the file to measure again).
"""
from __future__ import annotations

import hashlib
import json
import platform
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from ..adapters import ModelAdapter
from ..evaluation.datasets import EvalSample
from ..evaluation.runner import EvalModel, MethodSetting, model_fingerprint, prompt_inputs
from ..flops import LMDims, schedule_flops
from ..pruning import PruningEngine
from .methods import Budgeted, palette
from .study import UNPRUNED

MB = 2**20


def timing_samples(samples: Sequence[EvalSample], count: int) -> list[EvalSample]:
    """``count`` samples evenly spread over the list (so every task of the suite is represented)."""
    step = max(1, len(samples) // count)
    return list(samples[::step][:count])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cache_tokens(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> list[int]:
    """Cached positions per decoder layer, from each layer's (keys, values) (the same for every sample)."""
    return [int(keys.shape[-2]) for keys, _ in layers]


def cache_bytes(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
    """Bytes held by the keys and values of every decoder layer."""
    return sum(t.numel() * t.element_size() for pair in layers for t in pair)


@contextmanager
def forward_probe(model: torch.nn.Module, adapter: ModelAdapter, device: torch.device) -> Iterator[dict]:
    """Records the end time of every top-level forward (CUDA synchronised) and the KV cache after the
    first one (the prefill)."""
    state: dict = {"ends": []}

    def after(_module, _args, output):
        _sync(device)
        state["ends"].append(time.perf_counter())
        if len(state["ends"]) == 1:
            layers = adapter.cache_tensors(adapter.output_cache(output))
            state["kv_bytes"] = cache_bytes(layers)
            state["kv_tokens"] = cache_tokens(layers)
    handle = model.register_forward_hook(after)
    try:
        yield state
    finally:
        handle.remove()


def _flops_reduction(em: EvalModel, engine: PruningEngine | None, inputs) -> float:
    """Mean theoretical prefill reduction over the batch's samples, from their real kept counts."""
    if engine is None:
        return 0.0
    record = engine.records[0]
    dims = LMDims.from_config(em.model.config)
    lengths = em.adapter.token_counts(inputs)
    return float(np.mean([schedule_flops(dims, n, int(length) - n,
                                         [(s.layer, len(s.kept[b])) for s in record.stages]).reduction
                          for b, (n, length) in enumerate(zip(record.num_visual, lengths))]))


@torch.no_grad()
def measure(em: EvalModel, setting: MethodSetting, inputs, new_tokens: int) -> dict:
    """One greedy run of exactly ``new_tokens`` tokens on a prepared batch: times, KV cache, peak memory,
    theoretical FLOPs reduction and kept visual tokens (batch mean of the last stage)."""
    device = em.model.device
    schedule = setting.schedule()
    with ExitStack() as stack:
        engine = (stack.enter_context(PruningEngine(em.model, schedule, adapter=em.adapter))
                  if schedule else None)
        probe = stack.enter_context(forward_probe(em.model, em.adapter, device))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        _sync(device)
        start = time.perf_counter()
        output = em.model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                   do_sample=False)
        peak = torch.cuda.max_memory_allocated(device) / MB if device.type == "cuda" else float("nan")
    ends = probe["ends"]
    generated = output.shape[1] - em.adapter.prompt_length(inputs)
    kept = (np.mean([len(k) for k in engine.records[0].stages[-1].kept]) if engine
            else float(np.mean(em.adapter.inputs_layout(inputs).counts())))
    return {"prefill_ms": 1000 * (ends[0] - start),
            "decode_ms_per_token": 1000 * (ends[-1] - ends[0]) / max(len(ends) - 1, 1),
            "generated_tokens": generated, "kv_cache_mb": probe["kv_bytes"] / MB,
            "kv_tokens_per_layer": json.dumps(probe["kv_tokens"]), "peak_memory_mb": peak,
            "flops_reduction": _flops_reduction(em, engine, inputs), "kept_visual": float(kept)}


def _store(out: Path, em: EvalModel, plan: Sequence[Budgeted], samples: Sequence[EvalSample], new_tokens: int,
           repeats: int) -> Path:
    """The measurement file for everything the numbers depend on (model, settings, prompts, device)."""
    key = json.dumps([model_fingerprint(em), [(b.name, b.keep_fraction, b.setting.label) for b in plan],
                      [s.sample_id for s in samples], new_tokens, repeats, str(em.model.device), str(em.model.dtype),
                      torch.get_num_threads(), device_name(em)], sort_keys=True)
    return Path(out) / f"runs-{hashlib.sha1(key.encode()).hexdigest()[:12]}.parquet"


def benchmark(em: EvalModel, plan: Sequence[Budgeted], samples: Sequence[EvalSample], new_tokens: int,
              repeats: int, out: str | Path) -> pd.DataFrame:
    """One row per plan entry × round: ``measure`` on one batch of ``samples``, all entries round-robin
    after a warm-up round. Loaded from ``out`` when these exact measurements were made before
    (``frame.attrs["source"]`` says which)."""
    if new_tokens < 2 or repeats < 1:
        raise ValueError(f"new_tokens={new_tokens!r} must be >= 2 (one decoded token after the first) and "
                         f"repeats={repeats!r} >= 1")
    path = _store(Path(out), em, plan, samples, new_tokens, repeats)
    if path.exists():
        frame = pd.read_parquet(path)
        frame.attrs["source"] = f"loaded from {path} (delete it to measure again)"
        return frame
    inputs = prompt_inputs(em, samples)
    for entry in plan:  # warm-up
        measure(em, entry.setting, inputs, new_tokens)
    rows = [{"name": entry.name, "keep_fraction": entry.keep_fraction, "setting": entry.setting.label,
             "round": r, **measure(em, entry.setting, inputs, new_tokens)}
            for r in range(repeats) for entry in plan]
    frame = pd.DataFrame(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    frame.attrs["source"] = f"measured now, stored in {path}"
    return frame


def efficiency_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Medians over rounds per method × kept fraction, with the measured speed-ups against the unpruned
    model and the FLOPs-predicted prefill speed-up 1 / (1 - reduction)."""
    medians = {c: (c, "median") for c in ("prefill_ms", "decode_ms_per_token", "kv_cache_mb", "peak_memory_mb",
                                           "flops_reduction", "kept_visual")}
    table = runs.groupby(["name", "keep_fraction", "setting"], sort=False).agg(
        **medians, kv_tokens_per_layer=("kv_tokens_per_layer", "first"), rounds=("round", "size")).reset_index()
    base = table[table.name == UNPRUNED].iloc[0]
    table["predicted_speedup"] = 1 / (1 - table.flops_reduction)
    table["prefill_speedup"] = base.prefill_ms / table.prefill_ms
    table["decode_speedup"] = base.decode_ms_per_token / table.decode_ms_per_token
    table["kv_cache_ratio"] = table.kv_cache_mb / base.kv_cache_mb
    return table


def device_name(em: EvalModel) -> str:
    """The device in words: the GPU's name, or the CPU with its torch thread count."""
    device = em.model.device
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} torch thread(s)"


def speedup_figure(table: pd.DataFrame) -> plt.Figure:
    """Measured against FLOPs-predicted speed-up, for the prefill (TTFT) and per decoded token (TPOT);
    the diagonal is a speed-up exactly as predicted."""
    colours = palette(table.name)
    pruned = table[table.name != UNPRUNED]
    top = max(pruned.predicted_speedup.max(), pruned.prefill_speedup.max(), pruned.decode_speedup.max()) * 1.08
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 2.8), sharey=True)
    for ax, column, title in zip(axes, ("prefill_speedup", "decode_speedup"),
                                 ("prefill (time to first token)", "decode (time per output token)")):
        ax.plot([1, top], [1, top], color="0.6", ls="--", lw=0.8, label="as predicted")
        for name, part in pruned.groupby("name", sort=False):
            part = part.sort_values("predicted_speedup")
            ax.plot(part.predicted_speedup, part[column], marker="o", ms=3, lw=1, color=colours[name], label=name)
        ax.set_xlim(0.9, top)
        ax.set_ylim(0, top)
        ax.set_title(title)
        ax.set_xlabel("predicted: 1/(1 − FLOPs reduction)")
    axes[0].set_ylabel("measured speed-up")
    axes[1].legend(loc="upper left", frameon=False, fontsize=6)
    fig.tight_layout()
    return fig


def kv_cache_figure(table: pd.DataFrame) -> plt.Figure:
    """KV-cache size after prefill per method and kept fraction, and the cached tokens per layer at the
    smallest kept fraction (in-LLM pruning keeps full caches before its stage)."""
    colours = palette(table.name)
    pruned = table[table.name != UNPRUNED]
    base = table[table.name == UNPRUNED].iloc[0]
    names = list(dict.fromkeys(pruned.name))
    fractions = sorted(pruned.keep_fraction.unique(), reverse=True)
    fig, axes = plt.subplots(1, 2, figsize=(7.6, 2.6))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        part = pruned[pruned.name == name].set_index("keep_fraction").reindex(fractions)
        axes[0].bar(np.arange(len(fractions)) + (i - (len(names) - 1) / 2) * width, part.kv_cache_mb, width,
                    color=colours[name], label=name)
    axes[0].axhline(base.kv_cache_mb, color=colours[UNPRUNED], ls="--", lw=0.8)
    axes[0].set_xticks(np.arange(len(fractions)), [f"{f:g}" for f in fractions])
    axes[0].set_xlabel("kept fraction")
    axes[0].set_ylabel("KV cache after prefill (MB)")
    axes[0].set_title("whole cache (dashed: unpruned)")
    smallest = pruned[pruned.keep_fraction == min(fractions)]
    for row in [base, *(r for _, r in smallest.iterrows())]:
        tokens = json.loads(row.kv_tokens_per_layer)
        axes[1].plot(range(len(tokens)), tokens, marker="o", ms=3, lw=1, color=colours[row["name"]],
                     ls="--" if row["name"] == UNPRUNED else "-",
                     label="unpruned" if row["name"] == UNPRUNED else row["name"])
    axes[1].set_xlabel("decoder layer")
    axes[1].set_ylabel("cached positions")
    axes[1].set_title(f"per layer, kept fraction {min(fractions):g}")
    axes[1].set_ylim(bottom=0)
    axes[1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=6)
    fig.tight_layout()
    return fig


def summary(table: pd.DataFrame, device: str, batch: int, new_tokens: int) -> str:
    """What the figures show, in numbers (markdown)."""
    base = table[table.name == UNPRUNED].iloc[0]
    memory = (f", peak memory {base.peak_memory_mb:.0f} MB" if not np.isnan(base.peak_memory_mb)
              else "; peak memory is not measured on CPU (the KV cache is the memory figure)")
    lines = [f"- Device: {device}; a batch of {batch} prompts, {new_tokens} greedy tokens each, medians over "
             f"{int(base.rounds)} round(s). Unpruned: prefill {base.prefill_ms:.1f} ms, "
             f"{base.decode_ms_per_token:.2f} ms per output token, KV cache {base.kv_cache_mb:.2f} MB{memory}."]
    pruned = table[table.name != UNPRUNED]
    for f, part in pruned.groupby("keep_fraction", sort=False):
        items = [f"{r.name} {r.prefill_speedup:.2f}× of {r.predicted_speedup:.2f}× predicted "
                 f"(decode {r.decode_speedup:.2f}×, KV cache {r.kv_cache_ratio:.0%})" for r in part.itertuples()]
        lines.append(f"- Kept fraction {f:g}, measured prefill speed-up: " + "; ".join(items) + ".")
    share = (pruned.prefill_speedup - 1) / (pruned.predicted_speedup - 1)
    lines.append(f"- Across settings the measured prefill speed-up realises {share.median():.0%} (median) of the "
                 f"predicted gain (speed-up − 1; {share.min():.0%} to {share.max():.0%}); the prediction counts only "
                 "the decoder's prefill FLOPs, not the vision tower, the methods' scoring or the generation loop.")
    return "\n".join(lines)
