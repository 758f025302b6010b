"""The case groups verify_cases.py runs after the suite, one per open GPU need, selectable with --filter:

- gen/ (issue 21): `--mode generate` on a GPT-2, a Llama with GQA and a Mistral with a sliding window
  (benchmarks/models), dynamic and static caches, greedy and sampling, fp32 and bf16; the offloaded and
  offloaded_static caches through side_measure.py (the simulated `cuda.host_bytes` beside the pinned host
  bytes the real run held); decode at a 1-token query, where SDPA's choice for decode decides (bf16 Llama);
  and a scaled-down public anchor: octocoder's width (Hugging Face's llm_tutorial_optimization.md,
  benchmarks/public_generate.py) at 2 of its 40 layers, bf16, the tutorial's 20-token prompt and 60 tokens.
- qlora/ (issue 22): bitsandbytes 4-bit (nf4, double quantization) and LLM.int8 Llamas with PEFT LoRA
  (benchmarks/models/hf_qlora.py), `AdamW8bit` and the paged optimizers through side_measure.py (the
  simulated `cuda.managed_bytes` beside what bitsandbytes asked cudaMallocManaged for). They need
  bitsandbytes (carried as a wheel, README.md): without it each is a one-line skip.
- compile/ (issue 23): eager and compiled steps side by side (bf16 autocast, fused AdamW as the Trainer's
  default `adamw_torch_fused`), each pair `X/eager` and `X/compiled`, through side_measure.py so the
  simulation's `cuda.compiled_range` is recorded beside the measured peaks.
"""

from __future__ import annotations

from verify_cases import Case, M

GPT2 = f"{M}hf_gpt2.py:build"
LLAMA = f"{M}hf_llama.py:build"
MISTRAL = f"{M}hf_mistral.py:build"
QLORA = f"{M}hf_qlora.py:build"
BIGCODE = f"{M}hf_bigcode.py:build"
PROMPT = ("--input", "input_ids=2x32:int64")
TOKENS = ("--max-new-tokens", "24")
FUSED = ("--optimizer", "hf:adamw_torch_fused")
ANCHOR = (BIGCODE, "--arg", "layers=2", "--arg", "attn=eager", "--input", "input_ids=1x20:int64")
SAVE = ("--arg", "save=lm_head")
PAGED8 = ("--optimizer", "hf:paged_adamw_8bit")
PROBE = (f"{M}sdpa_probe.py:build", "--input", "1:bfloat16", "--optimizer", "sgd", "--mode", "infer")
SDPA_DECODE = ("heads=32", "kv_heads=8", "seq=1", "kv_seq=4096", "dim=128", "causal=false")
NANOGPT = (
    f"{M}nanogpt.py:build",
    *(f"--arg={a}" for a in ("layers=4", "hidden=256", "heads=4", "vocab=8192")),
)
BF16_FUSED = ("--amp", "bf16", *FUSED)


def _gen(name: str, builder: str, *flags: str, side: bool = False) -> Case:
    return Case(f"gen/{name}", (builder, *PROMPT, "--mode", "generate", *TOKENS, *flags), side=side)


def generate_cases() -> list[Case]:
    cases = []
    for model, builder in (("gpt2", GPT2), ("llama", LLAMA), ("mistral", MISTRAL)):
        cases += [
            _gen(f"{model}/dynamic-greedy", builder, "--kv-cache", "dynamic"),
            _gen(f"{model}/dynamic-sample", builder, "--kv-cache", "dynamic", "--sample"),
            _gen(f"{model}/static-greedy", builder, "--kv-cache", "static"),
        ]
    cases += [
        _gen("llama/dynamic-bf16", LLAMA, "--kv-cache", "dynamic", "--dtype", "bf16"),
        _gen("llama/static-bf16-sample", LLAMA, "--kv-cache", "static", "--dtype", "bf16", "--sample"),
        _gen("mistral/dynamic-bf16", MISTRAL, "--kv-cache", "dynamic", "--dtype", "bf16"),
        _gen("llama/offloaded", LLAMA, "--kv-cache", "offloaded", side=True),
        _gen("llama/offloaded_static", LLAMA, "--kv-cache", "offloaded_static", side=True),
        _gen("llama/offloaded-bf16", LLAMA, "--kv-cache", "offloaded", "--dtype", "bf16", side=True),
        Case(  # SDPA's choice at a 1-token query (sdp_utils.cpp), bf16, GQA, a 4096-long cache
            "gen/sdpa-decode/q1-32x4096x128-gqa8-bf16",
            (*PROBE, *(f"--arg={a}" for a in SDPA_DECODE)),
        ),
        Case(
            "gen/anchor/octocoder-2of40-bf16",
            (*ANCHOR, "--mode", "generate", "--max-new-tokens", "60", "--generate-arg", "logits_to_keep=0"),
        ),
    ]
    return cases


def _qlora(name: str, *flags: str, side: bool = False) -> Case:
    model = (QLORA, "--input", "input_ids=2x128:int64")
    return Case(f"qlora/{name}", (*model, *flags), needs=("bitsandbytes", "peft"), side=side)


def qlora_cases() -> list[Case]:
    return [
        _qlora("nf4-lora-adamw", "--optimizer", "adamw"),
        _qlora("nf4-dq-lora-adamw", "--arg", "double_quant=true", "--optimizer", "adamw"),
        _qlora("nf4-lora-ckpt-adamw8bit", "--arg", "checkpointing=true", "--optimizer", "hf:adamw_bnb_8bit"),
        _qlora("int8-lora-adamw", "--arg", "quant=int8", "--optimizer", "adamw"),
        # lm_head trained in full (modules_to_save): a state of 1e5 elements or more is paged, smaller is not
        _qlora("lora-bf16-paged8bit", *SAVE, "--arg=quant=none", *PAGED8, side=True),
        _qlora("nf4-lora-paged32bit", *SAVE, "--optimizer", "hf:paged_adamw_32bit", side=True),
        _qlora("nf4-lora-paged8bit", *SAVE, *PAGED8, side=True),
    ]


def _pair(name: str, *flags: str) -> list[Case]:
    return [
        Case(f"compile/{name}/eager", flags, side=True),
        Case(f"compile/{name}/compiled", (*flags, "--compile"), side=True),
    ]


def compile_cases() -> list[Case]:
    return [
        *_pair("nanogpt-8x256-bf16-fused", *NANOGPT, *("--input", "8x256:int64") * 2, *BF16_FUSED),
        *_pair(
            "gpt2-4x512-bf16-adamw",
            GPT2,
            "--input",
            "input_ids=4x512:int64",
            "--amp",
            "bf16",
            "--optimizer",
            "adamw",
        ),
        *_pair("llama-2x1024-bf16-fused", LLAMA, "--input", "input_ids=2x1024:int64", *BF16_FUSED),
        *_pair("conv_bn-8x3x64x64", f"{M}conv_bn.py:build", "--input", "8x3x64x64", "--optimizer", "adamw"),
    ]
