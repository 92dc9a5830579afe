"""Encoder/decoder shapes by name, importable without torch or transformers (the CLI validates
``--model`` with them before importing either)."""

from __future__ import annotations

# Encoder/decoder shapes. base/large/huge are the reference MAE (facebookresearch/mae models_mae.py);
# tiny/small follow DeiT widths with a decoder scaled down so CPU demos stay fast.
PRESETS: dict[str, dict] = {
    "tiny": dict(
        hidden_size=192,
        num_hidden_layers=12,
        num_attention_heads=3,
        decoder_hidden_size=128,
        decoder_num_hidden_layers=4,
        decoder_num_attention_heads=4,
    ),
    "small": dict(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        decoder_hidden_size=256,
        decoder_num_hidden_layers=4,
        decoder_num_attention_heads=8,
    ),
    "base": dict(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        decoder_hidden_size=512,
        decoder_num_hidden_layers=8,
        decoder_num_attention_heads=16,
    ),
    "large": dict(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        decoder_hidden_size=512,
        decoder_num_hidden_layers=8,
        decoder_num_attention_heads=16,
    ),
    "huge": dict(
        hidden_size=1280,
        num_hidden_layers=32,
        num_attention_heads=16,
        patch_size=14,
        decoder_hidden_size=512,
        decoder_num_hidden_layers=8,
        decoder_num_attention_heads=16,
    ),
}
