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
