"""A small Llava-style vision-language model from a config (no download): a CLIP vision tower, a projector
and a Llama LM. Needs `transformers`. Its inputs are `input_ids` holding `image_tokens` image placeholders
per image (token id `image_token`) and `pixel_values`; the image-token count check reads the ids' values,
which meta has not: memtrace's policy `check=pass` takes the inputs to be consistent (see the report).

memtrace benchmarks/models/hf_llava.py:build --input input_ids=2x80:int64 --input pixel_values=2x3x32x32 \\
    --device cpu
"""

from __future__ import annotations

from torch import nn

IMAGE_TOKEN = 255


def build(
    hidden: int = 64,
    layers: int = 2,
    vision_layers: int = 2,
    image: int = 32,
    patch: int = 8,
    vocab: int = 256,
) -> nn.Module:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=vision_layers,
        num_attention_heads=4,
        image_size=image,
        patch_size=patch,
    )
    text = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=vocab,
        max_position_embeddings=1024,
        use_cache=False,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=IMAGE_TOKEN,
        vision_feature_select_strategy="full",
        attn_implementation="sdpa",
    )
    return LlavaForConditionalGeneration(config)


def image_tokens(image: int = 32, patch: int = 8) -> int:
    """The placeholders one image takes with the `full` feature strategy: its patches and the CLS token."""
    return (image // patch) ** 2 + 1


def seed(layers: int = 32, vision_layers: int = 24) -> nn.Module:
    """The seed's ~7B VLM at LLaVA-1.5-7B's shapes, from a config: a CLIP ViT-L/14 at 336x336 (24 layers,
    576 patches: 576 image tokens per image with the `default` strategy, which drops the CLS token) and a
    Llama-2-7B language model (32 layers, width 4096, 32 heads, MLP 11008, 32064 tokens, 4096 positions).
    Built in fp32 as from a config; `--dtype fp16` gives the ~14 GB of fp16 weights the seed assumes.

    memtrace benchmarks/models/hf_llava.py:seed --input input_ids=1x626:int64 \\
        --input pixel_values=1x3x336x336 --dtype fp16 --mode generate \\
        --step benchmarks/models/llava_turns.py:turns --gpu a100-40gb
    """
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=vision_layers,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
    )
    text = LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32064,
        max_position_embeddings=4096,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=SEED_IMAGE_TOKEN,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        attn_implementation="sdpa",
    )
    return LlavaForConditionalGeneration(config)


SEED_IMAGE_TOKEN = 32000  # LLaVA-1.5's <image>
SEED_IMAGE_TOKENS = 576  # (336 / 14) ** 2 patches per image
