"""The records of the studies (what-if rows, the diagnosis, fit, world fit, accumulation plans, sweep rows):
pure, so that the outputs render them and saved results read them without importing the studies."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .records import LayerShare


@dataclass(frozen=True)
class Suggestion:
    change: str
    flags: str
    max_value: int
    peak_bytes: int


@dataclass(frozen=True)
class Serving:
    """`fit ... --mode generate`: the model's positions and what they allow the symbol, whether that bound
    (not the GPU) stopped the search, and the total context (prompt and new tokens) at the answer."""

    max_positions: int  # the model's max_position_embeddings (0: none, or the symbol is the batch)
    position_limit: int  # the largest value the positions allow the symbol (0: no bound)
    position_bound: bool  # the positions, not the GPU, stopped the search
    context_tokens: int  # prompt + new tokens at the answer (0 when unknown or none fits)


@dataclass(frozen=True)
class FitResult:
    """The largest value that surely fits (its figure plus every stated uncertainty's bound within the budget)
    and, when larger, the largest that fits by the simulation alone: borderline. The figures (`peak_bytes`,
    `next_peak_bytes`, `probes`) are the simulated `basis` figure, without the uncertainty."""

    symbol: str
    max_value: int  # the largest value that surely fits the budget; 0 when none
    peak_bytes: int  # at max_value (at 1 when none fits)
    next_peak_bytes: int  # at max_value + 1
    budget_bytes: int
    simulations: int
    probes: tuple[tuple[int, int], ...]
    suggestions: tuple[Suggestion, ...] = ()
    capped: bool = False  # the peak stopped growing: max_value is the search cap, not a boundary
    basis: str = "allocated"  # the figure held against the budget: "reserved" on cuda
    allocated_bytes: int = 0  # the allocated peak at max_value (at 1 when none fits)
    uncertain_bytes: int = 0  # the stated uncertainties' bounds at max_value (at 1 when none fits)
    uncertain_reasons: tuple[str, ...] = ()
    borderline_value: int = 0  # the largest value that fits by the simulation alone, when above max_value
    borderline_peak_bytes: int = 0  # its figure
    borderline_next_peak_bytes: int = 0  # the figure at borderline_value + 1
    serving: Serving | None = None  # --mode generate only

    def to_json(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "max_value": self.max_value,
            "peak_bytes": self.peak_bytes,
            "next_peak_bytes": self.next_peak_bytes,
            "budget_bytes": self.budget_bytes,
            "simulations": self.simulations,
            "probes": [{"value": v, "peak_bytes": p} for v, p in self.probes],
            "capped": self.capped,
            "basis": self.basis,
            "allocated_bytes": self.allocated_bytes,
            "uncertain_bytes": self.uncertain_bytes,
            "uncertain_reasons": list(self.uncertain_reasons),
            "borderline_value": self.borderline_value,
            "borderline_peak_bytes": self.borderline_peak_bytes,
            "borderline_next_peak_bytes": self.borderline_next_peak_bytes,
            "suggestions": [vars(s) for s in self.suggestions],
            **(vars(self.serving) if self.serving is not None else {}),
        }


@dataclass(frozen=True)
class WorldFit:
    """`fit ... --fsdp W`: the smallest world size (a power of two) whose rank fits, then the largest value of
    the input symbol at that size when there is one."""

    symbol: str
    world: int  # 0 when even 1024 ranks do not fit
    peak_bytes: int  # at `world` (at 1024 when none fits), the input symbol at 1
    budget_bytes: int
    probes: tuple[tuple[int, int], ...]  # (world size, figure) simulated
    basis: str
    batch: FitResult | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "world": self.world,
            "peak_bytes": self.peak_bytes,
            "budget_bytes": self.budget_bytes,
            "probes": [{"value": v, "peak_bytes": p} for v, p in self.probes],
            "basis": self.basis,
            "batch": self.batch.to_json() if self.batch is not None else None,
        }


@dataclass(frozen=True)
class Plan:
    micro_batch: int
    steps: int
    effective_batch: int
    peak_bytes: int


@dataclass(frozen=True)
class SweepRow:
    values: dict[str, int]
    input_bytes: int
    model_state_bytes: int  # parameters, buffers, gradients and optimizer state of the step
    activation_bytes: int  # the most saved activations live at once (one micro-batch's graph)
    peak_bytes: int
    fits: dict[str, bool]  # surely fits: the status is `fits`
    error: str = ""
    reserved_bytes: int = 0  # on cuda: what max_memory_reserved would say (the verdicts hold this)
    status: dict[str, str] = field(default_factory=dict)  # per GPU: fits | borderline | does_not_fit
    kv_cache_bytes: int = 0  # the KV cache live at the peak (generation)
    peak_phase: str = ""  # the phase the peak falls in (prefill, decode, forward, ...)
    token_index: int | None = None  # generation: the decode step of the peak

    def to_json(self, serving: bool) -> dict[str, Any]:
        """The row's keys; the generation's (`kv_cache_bytes`, `peak_phase`, `token_index`) when serving."""
        data = {**vars(self), "values": self.values}
        if not serving:
            for key in ("kv_cache_bytes", "peak_phase", "token_index"):
                data.pop(key)
        return data


@dataclass(frozen=True)
class FlattenHead:
    """A Linear fed by a Flatten of a feature map: what a global-average-pooling head would hold instead."""

    flatten: str
    linear: str
    feature_map: tuple[int, ...]  # (C, H, W)
    in_features: int
    out_features: int
    parameter_bytes: int
    gap_parameter_bytes: int


@dataclass(frozen=True)
class Diagnosis:
    dominant: LayerShare | None
    flatten_heads: tuple[FlattenHead, ...]
    fixes: tuple[WhatIfRow, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "dominant": vars(self.dominant)
            | {"by_category": {k.value: v for k, v in self.dominant.by_category.items()}}
            if self.dominant
            else None,
            "flatten_heads": [vars(h) for h in self.flatten_heads],
            "fixes": [f.to_json() for f in self.fixes],
        }


@dataclass(frozen=True)
class WhatIfRow:
    change: str
    flags: str  # the memtrace flags that reproduce this row
    peak_bytes: int
    saved_bytes: int  # baseline peak - this peak (negative: it costs memory)
    flops_ratio: float  # this step's FLOPs / the baseline's: the recompute cost
    effective_batch: int | None
    error: str = ""  # why this row could not be simulated

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "saved_fraction": round(self.saved_fraction, 6),
            "flops_ratio": round(self.flops_ratio, 6),
        }

    @property
    def saved_fraction(self) -> float:
        return (
            self.saved_bytes / (self.peak_bytes + self.saved_bytes)
            if self.peak_bytes + self.saved_bytes
            else 0.0
        )
