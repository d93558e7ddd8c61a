#!/usr/bin/env python3
"""Reference fixtures for the Wan 2.1 T2V-1.3B candle port (reelfarm `models/wan`).

What it is: the Python side of the Wan parity tests. It builds tiny, randomly initialised
copies of every Wan component with the *reference* implementation (diffusers'
`WanTransformer3DModel`, `AutoencoderKLWan`, `UniPCMultistepScheduler`,
`FlowMatchEulerDiscreteScheduler`, `WanPipeline`; transformers' `UMT5EncoderModel` and
`T5TokenizerFast`), saves them in the published diffusers layout, runs them on the CPU in float32
and writes inputs and outputs to `tests/fixtures/wan/` for the Rust tests to compare against. The
contract for file and tensor names is `tests/fixtures/wan/README.md` (written by this script).

It is run by hand, never in CI (CI only reads the committed fixtures). It needs no network and no
Hugging Face Hub access: every tensor, config and the tokenizer are built locally.

Environment (the versions the committed fixtures were made with are in
`tests/fixtures/wan/versions.json`):

    python3.11 -m venv /work/wanref
    /work/wanref/bin/pip install torch==2.15.0 diffusers==0.42.1 transformers==5.25.0 \
        tokenizers==0.23.3 safetensors==0.8.0 sentencepiece==0.2.3 accelerate==1.16.0 numpy regex

(ftfy is deliberately NOT installed: WanPipeline's prompt_clean then skips `ftfy.fix_text`; the
fixture prompts are chosen so that it would not matter.)

Regenerate everything (tiny checkpoint, fixtures, published shapes, README, versions; about 20 s on
two cores; it also asserts that every parameter tensor visibly moves a fixture output):

    /work/wanref/bin/python tools/wan_parity.py fixtures --out tests/fixtures/wan

Only the meta-device shapes of the published 1.3B components (also part of `fixtures`):

    /work/wanref/bin/python tools/wan_parity.py shapes --out tests/fixtures/wan

Timing of one denoising step of the published 1.3B transformer (random weights, float32, CPU);
prints one JSON line, used by the Rust bench for a speed ratio:

    /work/wanref/bin/python tools/wan_parity.py bench --frames 9 --height 64 --width 64 [--steps 1]

One "step" is what WanPipeline does per timestep with classifier-free guidance: TWO transformer
calls of batch 1 (cond, then uncond), unless `--cfg batch` (one call of batch 2).
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import math
import os
import platform
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

# --------------------------------------------------------------------------------------------
# Fixed values of the tiny setup (also written to the README / json files)

SEED = 20250101
L = 16  # max_sequence_length used for every tiny text-encoder / pipeline call
TEXT_DIM = 32

TINY_TRANSFORMER = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=16,
    out_channels=16,
    text_dim=TEXT_DIM,
    freq_dim=256,
    ffn_dim=32,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=32,
)

# Contract says base_dim 3; see README "Deviations": with dim_mult [1,1,1,1] the Wan 2.1 decoder
# halves the channels entering up_blocks 1..3 (3 // 2 = 1), and an RMS norm over ONE channel is
# sign(x) * gamma (discontinuous, hides upstream errors). base_dim 8 keeps >= 4 channels.
TINY_VAE = dict(
    base_dim=8,
    z_dim=16,
    dim_mult=[1, 1, 1, 1],
    num_res_blocks=1,
    temperal_downsample=[False, True, True],
)

TINY_UMT5 = dict(
    d_model=TEXT_DIM,
    d_kv=8,
    num_heads=4,
    d_ff=64,
    num_layers=2,
    num_decoder_layers=2,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu",
    dense_act_fn="gelu_new",
    is_gated_act=True,
    layer_norm_epsilon=1e-6,
    dropout_rate=0.1,
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
    tie_word_embeddings=False,
    scalable_attention=True,
    tokenizer_class="T5Tokenizer",
)
VAE_CONV_OUT_SCALE = 0.4  # decoder.conv_out weight and bias are scaled by this after randomize()
UMT5_TINY_VOCAB = 192  # >= the tokenizer's vocabulary (rows past it are never indexed)

# Published 1.3B configs (notes/wan_spec.md 1.1, 2.1, 3.1)
PUBLISHED_TRANSFORMER = dict(
    patch_size=[1, 2, 2],
    num_attention_heads=12,
    attention_head_dim=128,
    in_channels=16,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    ffn_dim=8960,
    num_layers=30,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    image_dim=None,
    added_kv_proj_dim=None,
    rope_max_seq_len=1024,
)
PUBLISHED_VAE = dict(
    base_dim=96,
    z_dim=16,
    dim_mult=[1, 2, 4, 4],
    num_res_blocks=2,
    attn_scales=[],
    temperal_downsample=[False, True, True],
    dropout=0.0,
)
PUBLISHED_UMT5 = dict(
    vocab_size=256384,
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_heads=64,
    num_layers=24,
    num_decoder_layers=24,
    feed_forward_proj="gated-gelu",
    dense_act_fn="gelu_new",
    is_gated_act=True,
    layer_norm_epsilon=1e-6,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    dropout_rate=0.1,
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
    tie_word_embeddings=False,
    scalable_attention=True,
    tokenizer_class="T5Tokenizer",
)
EXPECTED_PARAMS = {"transformer": 1_418_996_800, "vae": 126_892_531, "text_encoder": 5_680_910_336}

PUBLISHED_SCHEDULER = dict(
    prediction_type="flow_prediction",
    use_flow_sigmas=True,
    num_train_timesteps=1000,
    flow_shift=3.0,
)

TEXT_PROMPTS = [
    "A red fox runs through fresh snow.",
    "  a cat &amp;amp; a dog\n\n  playing \t in the   park  ",  # whitespace + double-escaped entity
    "A slow cinematic camera pan over a snowy mountain at sunset with golden light and a red fox"
    " playing in the park",  # longer than L tokens -> truncated
    "",
    "caf\u00e9 \u2615 at night",  # characters outside the tiny vocabulary -> <unk>
]
PIPE_PROMPT = "A red fox runs through fresh snow."
PIPE_NEGATIVE = "blurry, static, low quality"


def log(*a):
    print(*a, flush=True)


def versions() -> dict:
    import diffusers
    import safetensors
    import tokenizers
    import transformers

    try:
        import sentencepiece

        spv = sentencepiece.__version__
    except Exception:  # pragma: no cover
        spv = None
    try:
        import ftfy  # noqa: F401

        ftfy_v = ftfy.__version__
    except Exception:
        ftfy_v = None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
        "sentencepiece": spv,
        "numpy": np.__version__,
        "ftfy": ftfy_v,
    }


def setup_determinism(threads: int = 1):
    torch.manual_seed(SEED)
    np.random.seed(SEED % (2**32))
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)
    torch.set_default_dtype(torch.float32)


# --------------------------------------------------------------------------------------------
# Randomisation of every parameter


def randomize(module: torch.nn.Module, seed: int) -> dict:
    """Overwrite EVERY parameter with random values. Returns {rule: count} for the README.

    - norm gains (`*.gamma`, `*norm*.weight`):     1 + 0.1 * N(0, 1)
    - `scale_shift_table`:                          N(0, 0.2)
    - UMT5 `shared` embedding:                      N(0, 1)
    - UMT5 `relative_attention_bias`:               N(0, 0.5)
    - other >= 2-D weights (linear / conv):         N(0, 1 / sqrt(fan_in))  (keeps activations O(1))
    - biases and other 1-D parameters:              N(0, 0.2)
    """
    g = torch.Generator().manual_seed(seed)
    counts: dict[str, int] = {}
    with torch.no_grad():
        for name, p in module.named_parameters():  # tied parameters appear once
            parts = name.split(".")
            leaf, owner = parts[-1], (parts[-2] if len(parts) > 1 else "")
            if leaf == "gamma" or ("norm" in owner and leaf == "weight"):
                rule = "norm_gain"
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif "scale_shift_table" in name:
                rule = "scale_shift_table"
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            elif name in ("shared.weight", "encoder.embed_tokens.weight"):
                rule = "embedding"
                p.copy_(torch.randn(p.shape, generator=g))
            elif "relative_attention_bias" in name:
                rule = "relative_attention_bias"
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif p.dim() >= 2:
                rule = "weight"
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
            else:
                rule = "bias"
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            counts[rule] = counts.get(rule, 0) + 1
    return counts


# --------------------------------------------------------------------------------------------
# Tokenizer


def _pb_fields(buf: bytes):
    """Minimal protobuf wire-format reader: yields (field_number, wire_type, value)."""
    i = 0
    n = len(buf)

    def varint():
        nonlocal i
        shift = 0
        out = 0
        while True:
            b = buf[i]
            i += 1
            out |= (b & 0x7F) << shift
            if not b & 0x80:
                return out
            shift += 7

    while i < n:
        key = varint()
        field, wt = key >> 3, key & 7
        if wt == 0:
            yield field, wt, varint()
        elif wt == 1:
            yield field, wt, buf[i : i + 8]
            i += 8
        elif wt == 2:
            ln = varint()
            yield field, wt, buf[i : i + ln]
            i += ln
        elif wt == 5:
            yield field, wt, buf[i : i + 4]
            i += 4
        else:
            raise ValueError(f"unsupported wire type {wt}")


def nmt_nfkc_charsmap() -> bytes:
    """The Precompiled charsmap of SentencePiece's `nmt_nfkc` rule (what T5/umT5 tokenizers carry).

    Obtained by training a throwaway SentencePiece model (single thread, deterministic) and reading
    ModelProto.normalizer_spec (field 3).precompiled_charsmap (field 2) from its bytes.
    """
    import sentencepiece as spm

    corpus = [
        "a red fox runs through fresh snow",
        "a cat and a dog playing in the park",
        "a slow cinematic camera pan over a snowy mountain at sunset",
    ] * 20
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=buf,
        vocab_size=40,
        model_type="unigram",
        normalization_rule_name="nmt_nfkc",
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    for field, wt, val in _pb_fields(buf.getvalue()):
        if field == 3 and wt == 2:
            for f2, w2, v2 in _pb_fields(val):
                if f2 == 2 and w2 == 2:
                    return bytes(v2)
    raise RuntimeError("no precompiled_charsmap in the trained SentencePiece model")


TOKEN_WORDS = (
    "a the cat dog red fox run runs through fresh snow snowy play playing in park slow cinematic camera"
    " pan over mountain at sunset with golden light and of video blurry static low quality night"
    " cafe"
).split()
TOKEN_SUBWORDS = ["s", "ing", "ed", "er", "ly", "y", "ow", "ain", "un", "ar", "or", "in", "at", "an"]
TOKEN_CHARS = list("abcdefghijklmnopqrstuvwxyz") + list("ABCDEFGHIJKLMNOPQRSTUVWXYZ") + list("0123456789") + list(
    ".,!?;:'\"-()&/"
)


def build_tokenizer_object():
    """A tiny umT5-shaped Unigram tokenizer (tokenizers library).

    Same pipeline as transformers 5.x `T5Tokenizer` rebuilds from a tokenizer.json (so the saved
    tokenizer.json and what WanPipeline runs agree): normalizer Precompiled(nmt_nfkc charsmap),
    pre-tokenizer Sequence[WhitespaceSplit, Metaspace("▁", prepend_scheme="always", split=True)],
    Unigram(unk_id=2, byte_fallback=False), post-processor TemplateProcessing("$A </s>"), decoder
    Metaspace. Vocab: <pad>=0, </s>=1, <unk>=2, then "▁", whole words ("▁cat", score -3 - 0.01 i),
    subword pieces (-6), single characters (-9, "▁x" pieces -8).
    """
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -4.0)]
    seen = {v for v, _ in vocab}

    def add(piece, score):
        if piece not in seen:
            seen.add(piece)
            vocab.append((piece, score))

    for i, w in enumerate(TOKEN_WORDS):
        add("\u2581" + w, -3.0 - 0.01 * i)
    for i, w in enumerate(TOKEN_SUBWORDS):
        add(w, -6.0 - 0.01 * i)
    for i, c in enumerate(TOKEN_CHARS):
        add(c, -9.0 - 0.001 * i)
    for i, c in enumerate("abcdefghijklmnopqrstuvwxyzAT"):
        add("\u2581" + c, -8.0 - 0.001 * i)

    tk = Tokenizer(Unigram(vocab, unk_id=2, byte_fallback=False))
    tk.normalizer = normalizers.Precompiled(nmt_nfkc_charsmap())
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True),
        ]
    )
    tk.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    tk.post_processor = processors.TemplateProcessing(
        single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"], special_tokens=[("</s>", 1)]
    )
    return tk


def save_tokenizer(dirpath: Path):
    from transformers import T5TokenizerFast

    tk = build_tokenizer_object()
    tok = T5TokenizerFast(
        tokenizer_object=tk,
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_ids=0,
        additional_special_tokens=[],
    )
    tok.save_pretrained(str(dirpath))
    # transformers 5 no longer writes special_tokens_map.json by itself; the published umT5
    # tokenizer folder has one, so write the equivalent (it is informational for the Rust side).
    stm = dirpath / "special_tokens_map.json"
    if not stm.exists():
        stm.write_text(
            json.dumps(
                {
                    "eos_token": {"content": "</s>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False},
                    "pad_token": {"content": "<pad>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False},
                    "unk_token": {"content": "<unk>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False},
                },
                indent=2,
            )
            + "\n"
        )
    return tk


# --------------------------------------------------------------------------------------------
# Helpers


def t32(x):
    return x.detach().to(torch.float32).contiguous().clone()


def save_st(path: Path, tensors: dict):
    from safetensors.torch import save_file

    out = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    save_file(out, str(path))


def write_json(path: Path, obj):
    path.write_text(json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n")


def jsonable_config(cfg) -> dict:
    d = dict(cfg)
    out = {}
    for k, v in d.items():
        if k.startswith("_use_default") or k == "_name_or_path":
            continue  # bookkeeping (an unordered set: would make the files non-deterministic)
        if isinstance(v, tuple):
            v = list(v)
        out[k] = v
    return out


def stats(t: torch.Tensor) -> dict:
    t = t.detach().double()
    return {"max_abs": float(t.abs().max()), "mean": float(t.mean()), "std": float(t.std()) if t.numel() > 1 else 0.0}


# --------------------------------------------------------------------------------------------
# Tiny checkpoint


def build_tiny(out: Path, meta: dict):
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    tiny = out / "tiny"
    if tiny.exists():
        shutil.rmtree(tiny)
    tiny.mkdir(parents=True)

    # tokenizer
    tk = save_tokenizer(tiny / "tokenizer")
    tok_vocab = tk.get_vocab_size()
    assert UMT5_TINY_VOCAB >= tok_vocab, (UMT5_TINY_VOCAB, tok_vocab)
    meta["tokenizer_vocab_size"] = tok_vocab

    # text encoder
    torch.manual_seed(SEED + 1)
    cfg = UMT5Config(vocab_size=UMT5_TINY_VOCAB, **TINY_UMT5)
    te = UMT5EncoderModel(cfg).eval()
    meta["randomize_text_encoder"] = randomize(te, SEED + 11)
    te.save_pretrained(str(tiny / "text_encoder"), safe_serialization=True)

    # transformer (sharded)
    torch.manual_seed(SEED + 2)
    tr = WanTransformer3DModel(**TINY_TRANSFORMER).eval()
    meta["randomize_transformer"] = randomize(tr, SEED + 12)
    sizes = [p.numel() * p.element_size() for p in tr.state_dict().values()]
    total = sum(sizes)
    shard_dir = tiny / "transformer"
    for frac in (0.5, 0.55, 0.6, 0.65, 0.7, 0.8):
        if shard_dir.exists():
            shutil.rmtree(shard_dir)
        max_shard = int(total * frac) + 1
        tr.save_pretrained(str(shard_dir), safe_serialization=True, max_shard_size=max_shard)
        shards = sorted(shard_dir.glob("diffusion_pytorch_model-*.safetensors"))
        if len(shards) == 2:
            meta["transformer_max_shard_size"] = max_shard
            break
    else:
        raise RuntimeError("could not produce exactly 2 transformer shards")
    assert (shard_dir / "diffusion_pytorch_model.safetensors.index.json").exists()

    # vae
    torch.manual_seed(SEED + 3)
    vae = AutoencoderKLWan(**TINY_VAE).eval()
    meta["randomize_vae"] = randomize(vae, SEED + 13)
    # Keep most decoded values inside the [-1, 1] clamp (a clamped value cannot show an error).
    with torch.no_grad():
        vae.decoder.conv_out.weight.mul_(VAE_CONV_OUT_SCALE)
        vae.decoder.conv_out.bias.mul_(VAE_CONV_OUT_SCALE)
    vae.save_pretrained(str(tiny / "vae"), safe_serialization=True)

    # scheduler (published settings)
    sch = UniPCMultistepScheduler(**PUBLISHED_SCHEDULER)
    sch.save_pretrained(str(tiny / "scheduler"))

    import diffusers

    write_json(
        tiny / "model_index.json",
        {
            "_class_name": "WanPipeline",
            "_diffusers_version": diffusers.__version__,
            "scheduler": ["diffusers", "UniPCMultistepScheduler"],
            "text_encoder": ["transformers", "UMT5EncoderModel"],
            "tokenizer": ["transformers", "T5TokenizerFast"],
            "transformer": ["diffusers", "WanTransformer3DModel"],
            "vae": ["diffusers", "AutoencoderKLWan"],
        },
    )
    return {"text_encoder": te, "transformer": tr, "vae": vae}


def load_tiny_pipeline(out: Path, built: dict):
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(str(out / "tiny"), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    # The loaded weights must be exactly the ones built here (guards against silent re-inits).
    for name in ("text_encoder", "transformer", "vae"):
        a = built[name].state_dict()
        b = getattr(pipe, name).state_dict()
        assert set(a) == set(b), (name, set(a) ^ set(b))
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
        assert getattr(pipe, name).dtype == torch.float32
    return pipe


# --------------------------------------------------------------------------------------------
# Fixtures


def fx_text_encoder(out: Path, pipe, meta: dict):
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    tok = pipe.tokenizer
    cleaned = [prompt_clean(p) for p in TEXT_PROMPTS]
    enc = tok(
        cleaned,
        padding="max_length",
        max_length=L,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    ids, mask = enc.input_ids, enc.attention_mask
    # AutoTokenizer (what most callers use) resolves to the same class and the same ids.
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(str(out / "tiny" / "tokenizer"))
    assert type(auto).__name__ == "T5Tokenizer", type(auto)
    enc2 = auto(cleaned, padding="max_length", max_length=L, truncation=True, add_special_tokens=True,
                return_attention_mask=True, return_tensors="pt")
    assert torch.equal(enc2.input_ids, ids) and torch.equal(enc2.attention_mask, mask)
    # The raw tokenizers object (what the Rust side loads from tokenizer.json) must agree.
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(out / "tiny" / "tokenizer" / "tokenizer.json"))
    raw.enable_truncation(L)
    raw.enable_padding(length=L, pad_id=0, pad_token="<pad>")
    for i, e in enumerate(raw.encode_batch(cleaned)):
        assert e.ids == ids[i].tolist(), (i, e.ids, ids[i].tolist())
        assert e.attention_mask == mask[i].tolist()
    with torch.no_grad():
        lhs = pipe.text_encoder(ids, mask).last_hidden_state
        pe = pipe._get_t5_prompt_embeds(
            prompt=TEXT_PROMPTS, max_sequence_length=L, device=torch.device("cpu"), dtype=torch.float32
        )
    seq_lens = mask.sum(1)
    for b in range(len(TEXT_PROMPTS)):
        n = int(seq_lens[b])
        assert torch.equal(pe[b, :n], lhs[b, :n]) and torch.all(pe[b, n:] == 0)
    tokens = [tok.convert_ids_to_tokens(r.tolist()) for r in ids]
    write_json(
        out / "text_encoder.json",
        {
            "prompts": TEXT_PROMPTS,
            "cleaned_prompts": cleaned,
            "max_sequence_length": L,
            "token_ids": ids.tolist(),
            "attention_mask": mask.tolist(),
            "tokens": tokens,
            "seq_lens": seq_lens.tolist(),
            "tokenizer_call": "tokenizer(prompt_clean(p), padding='max_length', max_length=L, truncation=True, "
            "add_special_tokens=True, return_attention_mask=True)",
        },
    )
    save_st(
        out / "text_encoder.safetensors",
        {
            "input_ids": ids.to(torch.int64),
            "attention_mask": mask.to(torch.int64),
            "last_hidden_state": t32(lhs),
            "prompt_embeds": t32(pe),
        },
    )
    meta["text_encoder"] = {"last_hidden_state": stats(lhs)}


def fx_transformer(out: Path, pipe, meta: dict):
    tr = pipe.transformer
    g = torch.Generator().manual_seed(SEED + 100)
    hs = torch.randn(2, 16, 3, 4, 4, generator=g)
    ts = torch.tensor([999.0, 500.0], dtype=torch.float32)
    ehs = torch.randn(2, L, TEXT_DIM, generator=g)
    ehs[1, 7:] = 0.0  # like a trimmed + zero-padded prompt embedding (seq_len 7)
    with torch.no_grad():
        o = tr(hidden_states=hs, timestep=ts, encoder_hidden_states=ehs, return_dict=False)[0]

    cond_latent = torch.randn(1, 16, 1, 4, 4, generator=g)
    cond_noise = torch.randn(1, 16, 1, 4, 4, generator=g)
    sigma = 0.25
    hs_c = hs[:1].clone()
    hs_c[:, :, :1] = (1.0 - sigma) * cond_latent + sigma * cond_noise
    ts_c = torch.tensor([sigma * 1000.0], dtype=torch.float32)
    with torch.no_grad():
        oc = tr(hidden_states=hs_c, timestep=ts_c, encoder_hidden_states=ehs[:1], return_dict=False)[0]
    save_st(
        out / "transformer.safetensors",
        {
            "hidden_states": hs,
            "timestep": ts,
            "encoder_hidden_states": ehs,
            "output": t32(o),
            "cond_latent": cond_latent,
            "cond_noise": cond_noise,
            "hidden_states_cond": hs_c,
            "timestep_cond": ts_c,
            "output_cond": t32(oc),
        },
    )
    write_json(
        out / "transformer.json",
        {
            "timestep": ts.tolist(),
            "cond_sigma": sigma,
            "timestep_cond": ts_c.tolist(),
            "encoder_hidden_states_zero_rows_from": {"1": 7},
            "call": "transformer(hidden_states, timestep, encoder_hidden_states, return_dict=False)[0]",
            "output_stats": stats(o),
            "output_cond_stats": stats(oc),
        },
    )
    meta["transformer"] = {"output": stats(o), "output_cond": stats(oc)}


def fx_vae(out: Path, pipe, meta: dict):
    vae = pipe.vae
    g = torch.Generator().manual_seed(SEED + 200)
    video = torch.rand(1, 3, 9, 32, 32, generator=g) * 2.0 - 1.0
    image = torch.rand(1, 3, 1, 32, 32, generator=g) * 2.0 - 1.0
    latent = torch.randn(1, 16, 3, 4, 4, generator=g)
    latent_tiled = torch.randn(1, 16, 3, 8, 8, generator=g)
    tiling = dict(
        tile_sample_min_height=32,
        tile_sample_min_width=32,
        tile_sample_stride_height=16,
        tile_sample_stride_width=16,
    )
    with torch.no_grad():
        vae.disable_tiling()
        enc_mean = vae.encode(video).latent_dist.mean
        img_mean = vae.encode(image).latent_dist.mean
        dec = vae.decode(latent).sample
        dec_untiled = vae.decode(latent_tiled).sample
        vae.enable_tiling(**tiling)
        dec_tiled = vae.decode(latent_tiled).sample
        vae.disable_tiling()
    frac = lambda t: float((t.abs() >= 1.0).double().mean())  # noqa: E731
    save_st(
        out / "vae.safetensors",
        {
            "video": video,
            "encoded_mean": t32(enc_mean),
            "image": image,
            "image_mean": t32(img_mean),
            "latent": latent,
            "decoded": t32(dec),
            "latent_tiled": latent_tiled,
            "decoded_tiled": t32(dec_tiled),
            "decoded_untiled": t32(dec_untiled),
        },
    )
    lat = latent_tiled.shape[-1]
    tile_lat = tiling["tile_sample_min_width"] // 8
    stride_lat = tiling["tile_sample_stride_width"] // 8
    write_json(
        out / "vae.json",
        {
            "tiling": tiling,
            "enable_tiling_call": "vae.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=32, "
            "tile_sample_stride_height=16, tile_sample_stride_width=16)",
            "tile_latent_min": tile_lat,
            "tile_latent_stride": stride_lat,
            "blend_extent_px": tiling["tile_sample_min_width"] - tiling["tile_sample_stride_width"],
            "tile_origins_latent": list(range(0, lat, stride_lat)),
            "tiles_per_axis": len(range(0, lat, stride_lat)),
            "encode": "vae.encode(x).latent_dist.mean  (un-normalised; chunks of frames 1, 4, 4)",
            "decode": "vae.decode(z).sample  (z un-normalised; clamped to [-1, 1])",
            "fraction_clamped": {"decoded": frac(dec), "decoded_tiled": frac(dec_tiled), "decoded_untiled": frac(dec_untiled)},
            "stats": {
                "encoded_mean": stats(enc_mean),
                "image_mean": stats(img_mean),
                "decoded": stats(dec),
                "decoded_tiled": stats(dec_tiled),
                "tiled_minus_untiled_max_abs": float((dec_tiled - dec_untiled).abs().max()),
            },
            "latents_mean": list(vae.config.latents_mean),
            "latents_std": list(vae.config.latents_std),
        },
    )
    meta["vae"] = {"fraction_clamped_decoded": frac(dec)}


def fx_schedulers(out: Path, meta: dict):
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    def unipc(shift):
        return UniPCMultistepScheduler(**{**PUBLISHED_SCHEDULER, "flow_shift": shift})

    def euler(shift):
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)

    cases = []
    for cls, mk, shifts, ns in (
        ("UniPCMultistepScheduler", unipc, (3.0, 5.0), (2, 4, 8, 50)),
        ("FlowMatchEulerDiscreteScheduler", euler, (3.0, 5.0), (2, 4, 50)),
    ):
        for shift in shifts:
            for n in ns:
                s = mk(shift)
                s.set_timesteps(n)
                cases.append(
                    {
                        "class": cls,
                        "config": jsonable_config(s.config),
                        "num_inference_steps": n,
                        "timesteps": s.timesteps.tolist(),
                        "timesteps_dtype": str(s.timesteps.dtype).replace("torch.", ""),
                        "sigmas": s.sigmas.tolist(),
                        "sigmas_dtype": str(s.sigmas.dtype).replace("torch.", ""),
                    }
                )
    write_json(out / "scheduler.json", cases)

    tensors = {}
    g = torch.Generator().manual_seed(SEED + 300)
    n = 4
    for prefix, s in (("unipc", unipc(3.0)), ("euler", euler(3.0))):
        s.set_timesteps(n)
        s.set_begin_index(0)  # as WanPipeline does
        sample = torch.randn(1, 16, 3, 4, 4, generator=g)
        tensors[f"{prefix}_sample_0"] = sample.clone()
        tensors[f"{prefix}_timesteps"] = s.timesteps.clone()
        tensors[f"{prefix}_sigmas"] = s.sigmas.clone()
        for i, t in enumerate(s.timesteps):
            mo = torch.randn(1, 16, 3, 4, 4, generator=g)
            tensors[f"{prefix}_model_output_{i}"] = mo
            sample = s.step(mo, t, sample, return_dict=False)[0]
            assert sample.dtype == torch.float32
            tensors[f"{prefix}_sample_{i + 1}"] = sample.clone()
    save_st(out / "scheduler_steps.safetensors", tensors)
    meta["scheduler_steps_n"] = n


def fx_pipeline(out: Path, pipe, meta: dict):
    params = dict(
        prompt=PIPE_PROMPT,
        negative_prompt=PIPE_NEGATIVE,
        height=32,
        width=32,
        num_frames=9,
        num_inference_steps=2,
        guidance_scale=5.0,
        max_sequence_length=L,
    )
    g = torch.Generator().manual_seed(SEED + 400)
    latents = torch.randn(1, 16, 3, 4, 4, generator=g)
    rec: dict[str, torch.Tensor] = {}
    calls: list[torch.Tensor] = []

    def hook(_m, _args, kwargs, output):
        calls.append(output[0].detach().clone())
        return None

    h = pipe.transformer.register_forward_hook(hook, with_kwargs=True)
    timesteps_seen = []

    def cb(_pipe, i, t, kw):
        rec[f"latents_step_{i}"] = kw["latents"].detach().clone()
        rec.setdefault("prompt_embeds", kw["prompt_embeds"].detach().clone())
        rec.setdefault("negative_prompt_embeds", kw["negative_prompt_embeds"].detach().clone())
        timesteps_seen.append(t.item())
        return {}

    try:
        with torch.no_grad():
            res = pipe(
                **params,
                latents=latents.clone(),
                output_type="np",
                callback_on_step_end=cb,
                callback_on_step_end_tensor_inputs=["latents", "prompt_embeds", "negative_prompt_embeds"],
            )
    finally:
        h.remove()
    frames = torch.from_numpy(np.asarray(res.frames)).to(torch.float32)
    assert tuple(frames.shape) == (1, 9, 32, 32, 3), frames.shape
    tensors = {
        "latents": latents,
        "prompt_embeds": t32(rec["prompt_embeds"]),
        "negative_prompt_embeds": t32(rec["negative_prompt_embeds"]),
        "frames": frames,
    }
    steps = params["num_inference_steps"]
    assert len(calls) == 2 * steps
    for i in range(steps):
        tensors[f"latents_step_{i}"] = t32(rec[f"latents_step_{i}"])
        tensors[f"noise_pred_cond_{i}"] = t32(calls[2 * i])
        tensors[f"noise_pred_uncond_{i}"] = t32(calls[2 * i + 1])
    # the decode input, for debugging the decode half separately
    vae = pipe.vae
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1)
    z = tensors[f"latents_step_{steps - 1}"] / inv_std + mean
    tensors["decode_input"] = z
    save_st(out / "pipeline.safetensors", tensors)
    write_json(
        out / "pipeline.json",
        {
            **params,
            "output_type": "np",
            "timesteps": timesteps_seen,
            "scheduler": "tiny/scheduler (UniPCMultistepScheduler, flow_shift 3.0)",
            "latents_shape": list(latents.shape),
            "frames_fraction_at_0_or_1": float(((frames <= 0.0) | (frames >= 1.0)).double().mean()),
            "notes": "latents_step_i = latents after scheduler.step of step i (callback_on_step_end); "
            "noise_pred_{cond,uncond}_i = transformer outputs of step i (forward hook); "
            "decode_input = latents_step_last * latents_std + latents_mean (computed as / (1/std) + mean);"
            " frames = output_type 'np' [B, F, H, W, 3] in [0, 1]",
        },
    )
    meta["pipeline"] = {"frames": stats(frames)}


# --------------------------------------------------------------------------------------------
# Sensitivity: every stored tensor must visibly move a fixture output


def sensitivity(out: Path, pipe, meta: dict, threshold: float = 1e-3):
    """Reset each parameter to what ignoring it means (norm gains 1, everything else 0) and re-run
    the matching fixture call.

    The relative change max|d| / max|ref| of the outputs must exceed `threshold` (10x the planned
    1e-4 tolerance) for every parameter, i.e. a Rust port that ignores any tensor fails.
    """
    from safetensors.torch import load_file

    te_in = load_file(str(out / "text_encoder.safetensors"))
    tr_in = load_file(str(out / "transformer.safetensors"))
    vae_in = load_file(str(out / "vae.safetensors"))

    def run_te(m):
        return [m(te_in["input_ids"], te_in["attention_mask"]).last_hidden_state]

    def run_tr(m):
        return [
            m(hidden_states=tr_in["hidden_states"], timestep=tr_in["timestep"],
              encoder_hidden_states=tr_in["encoder_hidden_states"], return_dict=False)[0],
            m(hidden_states=tr_in["hidden_states_cond"], timestep=tr_in["timestep_cond"],
              encoder_hidden_states=tr_in["encoder_hidden_states"][:1], return_dict=False)[0],
        ]

    def run_vae(m):
        return [m.encode(vae_in["video"]).latent_dist.mean, m.decode(vae_in["latent"]).sample]

    result = {}
    for name, run in (("text_encoder", run_te), ("transformer", run_tr), ("vae", run_vae)):
        m = getattr(pipe, name)
        with torch.no_grad():
            ref = run(m)
            changes = {}
            for pname, p in m.named_parameters():
                saved = p.detach().clone()
                parts = pname.split(".")
                is_gain = parts[-1] == "gamma" or (len(parts) > 1 and "norm" in parts[-2] and parts[-1] == "weight")
                p.fill_(1.0 if is_gain else 0.0)  # what a port that ignores the tensor computes
                new = run(m)
                p.copy_(saved)
                changes[pname] = max(
                    float((a - b).abs().max() / b.abs().max()) for a, b in zip(new, ref)
                )
            after = run(m)
            assert all(torch.equal(a, b) for a, b in zip(after, ref)), f"{name}: restore failed"
        weakest = sorted(changes.items(), key=lambda kv: kv[1])[:3]
        bad = {k: v for k, v in changes.items() if v < threshold}
        result[name] = {"tensors": len(changes), "min_rel_change": weakest[0][1], "weakest": weakest}
        log(f"sensitivity {name}: {len(changes)} tensors, weakest {weakest}")
        assert not bad, f"{name}: tensors that barely change the output: {bad}"
    meta["sensitivity"] = result
    return result


# --------------------------------------------------------------------------------------------
# Published shapes (meta device)


def published_models():
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    with torch.device("meta"):
        tr = WanTransformer3DModel(**PUBLISHED_TRANSFORMER)
        vae = AutoencoderKLWan(**PUBLISHED_VAE)
        te = UMT5EncoderModel(UMT5Config(**PUBLISHED_UMT5))
    return {"transformer": tr, "vae": vae, "text_encoder": te}


def shapes(out: Path):
    import diffusers
    import transformers

    pub = out / "published"
    pub.mkdir(parents=True, exist_ok=True)
    models = published_models()
    result = {}
    for name, m in models.items():
        params = sum(p.numel() for p in m.parameters())
        assert params == EXPECTED_PARAMS[name], (name, params, EXPECTED_PARAMS[name])
        sd = m.state_dict()
        entry = {"params": params, "tensors": {k: list(v.shape) for k, v in sd.items()}}
        # tied parameters: several names for one Parameter object
        first: dict[int, str] = {}
        tied = {}
        for k, p in m.named_parameters(remove_duplicate=False):
            if id(p) in first:
                tied[k] = first[id(p)]
            else:
                first[id(p)] = k
        if tied:
            entry["tied"] = tied
            entry["tied_note"] = (
                "{alias: canonical}: the same Parameter under two names; state_dict() lists both, "
                "a saved checkpoint holds the canonical name only"
            )
        result[name] = entry
        log(f"published {name}: {params:,} params, {len(sd)} state_dict tensors, tied={tied}")
        if name == "text_encoder":
            # The published file (transformers 4.49 era, notes/wan_spec.md 3.1), not transformers 5's
            # re-serialisation (which forces tie_word_embeddings=true and writes "dtype").
            cfg = {
                "architectures": ["UMT5EncoderModel"],
                **PUBLISHED_UMT5,
                "model_type": "umt5",
                "torch_dtype": "float32",
                "transformers_version": "4.49.0",
            }
            cfg = dict(sorted(cfg.items()))
        else:
            cfg = {"_class_name": type(m).__name__, "_diffusers_version": diffusers.__version__, **jsonable_config(m.config)}
            cfg = {k: v for k, v in cfg.items() if not k.startswith("_use_default") and k != "_name_or_path"}
        write_json(pub / f"{name}_config.json", cfg)
    result["_note"] = (
        f"built on torch's meta device with diffusers {diffusers.__version__} / transformers "
        f"{transformers.__version__}; params = sum of numel over module.parameters() (tied counted once)"
    )
    write_json(pub / "shapes.json", result)
    del models
    gc.collect()
    return {k: v["params"] for k, v in result.items() if not k.startswith("_")}


# --------------------------------------------------------------------------------------------
# README


def write_readme(out: Path, vers: dict, meta: dict, counts: dict):
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != "README.md")
    total = sum(p.stat().st_size for p in files)
    rows = "\n".join(f"| `{p.relative_to(out)}` | {p.stat().st_size:,} |" for p in files)
    sens = meta.get("sensitivity", {})
    fmt = lambda n: f"{sens[n]['min_rel_change']:.3g}" if n in sens else "n/a"  # noqa: E731
    sens_te, sens_tr, sens_vae = fmt("text_encoder"), fmt("transformer"), fmt("vae")
    sens_weak = "; ".join(f"`{sens[n]['weakest'][0][0]}`" for n in sens)
    tiny_vae = ", ".join(f"{k}={v}" for k, v in TINY_VAE.items())
    tiny_tr = ", ".join(f"{k}={v}" for k, v in TINY_TRANSFORMER.items())
    tiny_te = ", ".join(f"{k}={v}" for k, v in TINY_UMT5.items())
    text = f"""# Wan 2.1 parity fixtures

Written by `tools/wan_parity.py` (run by hand, never in CI). Regenerate everything with

```
/work/wanref/bin/python tools/wan_parity.py fixtures --out tests/fixtures/wan
```

Reference: diffusers {vers['diffusers']}, transformers {vers['transformers']}, torch {vers['torch']},
tokenizers {vers['tokenizers']}, safetensors {vers['safetensors']}, sentencepiece {vers['sentencepiece']},
numpy {vers['numpy']}, Python {vers['python']}; ftfy {'installed ' + vers['ftfy'] if vers['ftfy'] else 'NOT installed'}
(so WanPipeline's `prompt_clean` = html.unescape twice + whitespace collapse). Also in `versions.json`.
Everything ran on the CPU in float32 with `torch.use_deterministic_algorithms(True)`, one thread,
fixed seeds (base seed {SEED}). Every parameter of every tiny model is random (see "Randomisation").
Tolerances are the Rust side's business (the plan: 1e-4 of the reference output's max abs).

All tensors are float32 unless noted; tensors are in safetensors files, scalars in JSON.

## Files

| file | bytes |
|---|---|
{rows}

Total: {total:,} bytes.

### `tiny/` — one tiny checkpoint in the published diffusers layout (real tensor names)
- `model_index.json`: WanPipeline with scheduler UniPCMultistepScheduler, text_encoder
  UMT5EncoderModel, tokenizer T5TokenizerFast, transformer WanTransformer3DModel, vae AutoencoderKLWan
  (the 6 published keys; `WanPipeline.from_pretrained(tiny/)` loads it, and the fixtures below were
  computed with the components loaded that way, checked bit-equal to the ones built).
- `scheduler/scheduler_config.json`: UniPCMultistepScheduler(prediction_type="flow_prediction",
  use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=3.0), other fields the defaults
  (solver_order 2, bh2, predict_x0, lower_order_final, final_sigmas_type "zero", ...).
- `text_encoder/config.json` + `model.safetensors`: UMT5EncoderModel, vocab_size={UMT5_TINY_VOCAB}, {tiny_te}.
  The file holds `shared.weight` only (transformers ties `encoder.embed_tokens.weight` to it).
  The config is as transformers 5 writes it: `UMT5Config` turns the requested
  `tie_word_embeddings=false` into `scale_decoder_outputs: false` and forces `tie_word_embeddings: true`
  (irrelevant to the encoder), and it writes `dtype` where 4.x wrote `torch_dtype`.
- `tokenizer/`: `tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json`. A tiny
  umT5-shaped Unigram tokenizer, vocabulary {meta.get('tokenizer_vocab_size')} pieces: `<pad>`=0, `</s>`=1, `<unk>`=2,
  `▁`=3, then whole words `▁word`, subwords, characters. Pipeline: normalizer `Precompiled`
  (SentencePiece's nmt_nfkc charsmap, from a throwaway sentencepiece training), pre-tokenizer
  `Sequence[WhitespaceSplit, Metaspace("▁", prepend_scheme "always", split true)]`, model
  `Unigram(unk_id 2, byte_fallback false)`, post-processor `TemplateProcessing("$A </s>")`,
  decoder `Metaspace`. This is exactly the pipeline transformers 5 `T5Tokenizer` rebuilds when it
  loads a tokenizer.json (it keeps only the vocab, a Precompiled charsmap and the post-processor
  from the file), so the Rust `tokenizers` crate reading `tokenizer.json` and WanPipeline agree
  (checked in the script for every fixture prompt).
- `transformer/config.json` + 2 shards `diffusion_pytorch_model-0000{{1,2}}-of-00002.safetensors`
  + `diffusion_pytorch_model.safetensors.index.json` (saved with max_shard_size={meta.get('transformer_max_shard_size')} bytes):
  WanTransformer3DModel({tiny_tr}).
- `vae/config.json` + `diffusion_pytorch_model.safetensors`: AutoencoderKLWan({tiny_vae})
  with the class's real latents_mean / latents_std.

### `text_encoder.safetensors` + `text_encoder.json`
L = max_sequence_length = {L}. json: `prompts`, `cleaned_prompts` (after WanPipeline's prompt_clean),
`max_sequence_length`, `token_ids`, `attention_mask`, `tokens`, `seq_lens`. Prompts: a plain one,
one with extra whitespace and a double-escaped HTML entity (`&amp;amp;` -> `&`), one longer than L
(truncated to L-1 tokens + `</s>`), `""` (just `</s>`), and one with characters outside the vocab
(`<unk>`). Tensors: `input_ids` (i64 [B,L]), `attention_mask` (i64 [B,L]), `last_hidden_state`
[B,L,{TEXT_DIM}] (= `text_encoder(input_ids, attention_mask).last_hidden_state`), `prompt_embeds`
[B,L,{TEXT_DIM}] (= `WanPipeline._get_t5_prompt_embeds(prompts, max_sequence_length=L)`: rows past the
real length incl. `</s>` are zero).

### `transformer.safetensors` + `transformer.json`
`hidden_states` [2,16,3,4,4], `timestep` [2] f32 = [999.0, 500.0], `encoder_hidden_states` [2,L,{TEXT_DIM}]
(random; item 1 has rows 7.. zeroed like a padded prompt), `output` [2,16,3,4,4]
= `transformer(hidden_states, timestep, encoder_hidden_states, return_dict=False)[0]`.
First-frame conditioning: `cond_latent`, `cond_noise` [1,16,1,4,4], `cond_sigma` (json) = 0.25,
`hidden_states_cond` = hidden_states[:1] with latent frame 0 = (1-σ)·cond_latent + σ·cond_noise,
`timestep_cond` [1] = σ·1000 = 250.0, `output_cond` [1,16,3,4,4] (text = encoder_hidden_states[:1]).

### `vae.safetensors` + `vae.json`
`video` [1,3,9,32,32] uniform in [-1,1]; `encoded_mean` [1,16,3,4,4] = `encode(video).latent_dist.mean`
(un-normalised; diffusers encodes frame chunks 1, 4, 4 with the causal cache); `image`
[1,3,1,32,32], `image_mean` [1,16,1,4,4]; `latent` [1,16,3,4,4] N(0,1); `decoded` [1,3,9,32,32]
= `decode(latent).sample` (clamped to [-1,1] as diffusers does). Tiled: `latent_tiled`
[1,16,3,8,8]; `decoded_tiled` [1,3,9,64,64] with `enable_tiling(tile_sample_min_height=32,
tile_sample_min_width=32, tile_sample_stride_height=16, tile_sample_stride_width=16)` (latent tiles
4x4 at stride 2: 4x4 = 16 tiles, blend extent 16 px); `decoded_untiled` the same latent without tiling.
vae.json also gives the fraction of decoded values at the clamp.

### `scheduler.json` + `scheduler_steps.safetensors`
json: a list of cases `{{class, config (full), num_inference_steps, timesteps, timesteps_dtype, sigmas,
sigmas_dtype}}`: UniPC (published settings) flow_shift 3.0 and 5.0 with N in {{2, 4, 8, 50}};
FlowMatchEulerDiscreteScheduler(shift=3.0/5.0, otherwise default) with N in {{2, 4, 50}}.
UniPC timesteps are int64 (truncated), Euler timesteps float32.
Steps (N = 4, shift 3, `set_begin_index(0)` as the pipeline does): `{{unipc,euler}}_sample_0`
[1,16,3,4,4], `{{prefix}}_model_output_{{i}}` (random), `{{prefix}}_sample_{{i+1}}` after step i,
plus `{{prefix}}_timesteps` (unipc i64, euler f32) and `{{prefix}}_sigmas` (f32, N+1).

### `pipeline.safetensors` + `pipeline.json`
`WanPipeline.from_pretrained(tiny/)` called with prompt {PIPE_PROMPT!r}, negative_prompt {PIPE_NEGATIVE!r},
height 32, width 32, num_frames 9, num_inference_steps 2, guidance_scale 5.0, max_sequence_length L,
`latents=` the stored `latents` [1,16,3,4,4], output_type "np". Tensors: `latents` (initial noise),
`prompt_embeds`, `negative_prompt_embeds` [1,L,{TEXT_DIM}], `latents_step_{{i}}` (after step i, from
callback_on_step_end), `noise_pred_cond_{{i}}` / `noise_pred_uncond_{{i}}` (the two transformer outputs of
step i, from a forward hook; CFG = uncond + 5.0·(cond - uncond)), `decode_input` (de-normalised
final latents), `frames` [1,9,32,32,3] float in [0,1].

### `published/` — the real 1.3B shapes, built on torch's meta device (no weights)
`transformer_config.json`, `vae_config.json` (the published values as diffusers {vers['diffusers']} serialises
them, so with all its current keys, e.g. `pos_embed_seq_len`, `decoder_base_dim`, `is_residual`),
`text_encoder_config.json` (the published transformers-4.49 file's fields, notes/wan_spec.md 3.1,
`tie_word_embeddings: false`, `torch_dtype`);
`shapes.json`: `{{component: {{"params": N, "tensors": {{name: shape}}, "tied": {{alias: name}}}}}}` from
`state_dict()`. Parameter counts: transformer {counts.get('transformer', 0):,}; vae {counts.get('vae', 0):,};
text_encoder (umT5-XXL encoder) {counts.get('text_encoder', 0):,}. The UMT5 `state_dict()` lists both
`shared.weight` and the tied alias `encoder.embed_tokens.weight` (one tensor).

## Randomisation
After building each tiny module with a fixed seed, EVERY parameter is overwritten: norm gains
(`*.gamma`, `*norm*.weight`) 1 + 0.1·N(0,1); `scale_shift_table` N(0, 0.2); UMT5 `shared` N(0,1);
`relative_attention_bias` N(0, 0.5); other weights (>= 2-D) N(0, 1/sqrt(fan_in)); biases N(0, 0.2).
Then the tiny VAE's `decoder.conv_out` weight and bias are multiplied by {VAE_CONV_OUT_SCALE} so that few decoded
values sit at the [-1, 1] clamp.

Sensitivity check (run by the script, asserted > 1e-3): each parameter tensor in turn is reset to what
ignoring it would compute (norm gains 1, everything else 0) and the fixture call is re-run; the relative
change max|Δ| / max|ref| of its outputs (text encoder: last_hidden_state; transformer: output and
output_cond; VAE: encoded_mean and decoded) is at least
text_encoder {sens_te}, transformer {sens_tr}, vae {sens_vae} (weakest: {sens_weak}).

## Deviations from notes/wan_fixture_contract.md
- tiny VAE `base_dim` is 8, not 3: with dim_mult [1,1,1,1] the Wan 2.1 decoder halves the channels
  entering up_blocks 1..3 (3 // 2 = 1 channel), and the VAE's RMS norm over one channel is
  sign(x)·gamma — discontinuous and blind to upstream errors. With 8 the narrowest norm has 4 channels.
- Additions (nothing removed): `cleaned_prompts`, `tokens`, `seq_lens` in text_encoder.json; N = 4 cases
  in scheduler.json and `{{prefix}}_timesteps` / `{{prefix}}_sigmas` tensors; `noise_pred_*` and
  `decode_input` in pipeline.safetensors; `versions.json`.
- transformers 5 does not write `special_tokens_map.json`; the script writes the equivalent file.
- `published/text_encoder_config.json` is the published file's field set (see above), not transformers 5's
  re-serialisation.

## Reference behaviour worth knowing (diffusers {vers['diffusers']}, transformers {vers['transformers']})
- UniPC flow schedule is the diffusers >= 0.37 one: sigmas = shift(linspace(1, 1/1000, N+1)[:-1]),
  sigmas[0] -= 1e-6 when it is 1, then 0 appended; `timesteps` are int64 (truncated sigma·1000), `sigmas`
  float32. N=50 shift 3: 999, 993, 986, 979, ... 113, 60. WanPipeline passes the int64 `t.expand(B)` to the
  transformer and calls `scheduler.set_begin_index(0)` before the loop.
- FlowMatchEulerDiscreteScheduler: float32 timesteps = sigmas·1000 (1000.0, ..., 8.928572 for shift 3:
  sigma_min is shifted twice).
- VAE encode: chunks of frames 1, 4, 4, ... through the causal cache, then `quant_conv` over the whole
  result; decode: `post_quant_conv`, then one latent frame per decoder call, then clamp. Tiling API:
  `enable_tiling(tile_sample_min_height, tile_sample_min_width, tile_sample_stride_height,
  tile_sample_stride_width)` / `disable_tiling()`; tiled decode runs when latent width > tile_sample_min_width/8
  or height > tile_sample_min_height/8 (strict), each tile with a fresh cache over all frames
  (`post_quant_conv` per tile and frame), blend extent = tile_sample_min - tile_sample_stride (pixels), linear
  ramps (rows first, then columns), crop each tile to the stride, crop to the full size, clamp.
  `tiled_encode` (not fixtured) exists too.
- Loading `WanTransformer3DModel` (hence `WanPipeline.from_pretrained`) needs `accelerate`: its
  `_keep_in_fp32_modules` forces low_cpu_mem_usage=True.
- transformers 5's `T5Tokenizer` (= `T5TokenizerFast`) does not use a tokenizer.json as is: it keeps the
  vocab, a `Precompiled` normalizer's charsmap and the post-processor, and rebuilds the rest
  (pre-tokenizer WhitespaceSplit + Metaspace, `Unigram(unk_id=2, byte_fallback=False)`, no other
  normalizer). The tiny tokenizer.json is built to be that pipeline, so it is the same either way. For the
  REAL umT5 tokenizer.json, loading it as is in Rust may differ from the Python reference wherever the file's
  own pipeline differs from that rebuild (e.g. a `Replace(" {{2,}}", " ")` normalizer step or
  `byte_fallback: true`); WanPipeline's prompt_clean already collapses whitespace, but a byte-fallback
  difference would show for characters outside the vocabulary.
- UMT5Config (transformers 5) forces `tie_word_embeddings=True`; `state_dict()` lists `shared.weight` and
  `encoder.embed_tokens.weight` (the same tensor); `save_pretrained` writes `shared.weight` only.

## Bench
`tools/wan_parity.py bench --frames F --height H --width W [--steps S] [--warmup K] [--cfg two-calls|batch]
[--threads T]` builds the published 1.3B transformer config with random weights (float32, CPU) and prints
one JSON line `{{"seconds_per_step", "params", "peak_rss_bytes", "cfg", ...}}`. A step = both CFG
branches: by default two batch-1 calls (as WanPipeline), `--cfg batch` one batch-2 call; text length 512;
timestep 999. Peak RSS from `resource.getrusage` (includes the ~5.7 GB of weights). The first call pays
one-off costs; use `--warmup 1` for a steadier figure.
"""
    (out / "README.md").write_text(text)
    total_all = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return total_all


# --------------------------------------------------------------------------------------------
# Commands


def cmd_fixtures(args):
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    setup_determinism(1)
    vers = versions()
    log("versions:", json.dumps(vers))
    write_json(out / "versions.json", vers)
    meta: dict = {}
    t0 = time.time()
    built = build_tiny(out, meta)
    log(f"tiny checkpoint written ({time.time() - t0:.1f}s)")
    pipe = load_tiny_pipeline(out, built)
    fx_text_encoder(out, pipe, meta)
    log("text_encoder fixture done")
    fx_transformer(out, pipe, meta)
    log("transformer fixture done")
    fx_vae(out, pipe, meta)
    log("vae fixture done")
    fx_schedulers(out, meta)
    log("scheduler fixtures done")
    fx_pipeline(out, pipe, meta)
    log("pipeline fixture done")
    sensitivity(out, pipe, meta)
    counts = shapes(out)
    total = write_readme(out, vers, meta, counts)
    log("meta:", json.dumps(meta, indent=1))
    for p in sorted(out.rglob("*")):
        if p.is_file():
            log(f"{p.stat().st_size:>10,}  {p.relative_to(out)}")
    log(f"TOTAL {total:,} bytes in {out} ({time.time() - t0:.1f}s)")


def cmd_shapes(args):
    out = Path(args.out)
    setup_determinism(1)
    log("versions:", json.dumps(versions()))
    counts = shapes(out)
    log(json.dumps(counts))


def cmd_bench(args):
    from diffusers import WanTransformer3DModel

    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    torch.manual_seed(SEED)
    vers = versions()
    print(f"# versions {json.dumps(vers)}", file=sys.stderr, flush=True)
    t0 = time.time()
    # Built directly on the CPU: the class's own random init (random weights; values do not
    # matter for timing). float32 throughout.
    model = WanTransformer3DModel(**PUBLISHED_TRANSFORMER).eval()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    params = sum(p.numel() for p in model.parameters())
    build_s = time.time() - t0
    if args.frames % 4 != 1:
        raise SystemExit("--frames must be 4k+1 (as WanPipeline rounds it)")
    if args.height % 16 or args.width % 16:
        raise SystemExit("--height/--width must be multiples of 16")
    lat = (1, 16, (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8)
    g = torch.Generator().manual_seed(SEED)
    x = torch.randn(*lat, generator=g)
    text_len = 512
    cond = torch.randn(1, text_len, 4096, generator=g)
    uncond = torch.zeros(1, text_len, 4096)
    uncond[:, :1] = torch.randn(1, 1, 4096, generator=g)
    t = torch.tensor([999], dtype=torch.int64)
    guidance = 5.0

    def step():
        if args.cfg == "batch":
            o = model(
                hidden_states=torch.cat([x, x]),
                timestep=t.expand(2),
                encoder_hidden_states=torch.cat([cond, uncond]),
                return_dict=False,
            )[0]
            c, u = o.chunk(2)
        else:
            c = model(hidden_states=x, timestep=t, encoder_hidden_states=cond, return_dict=False)[0]
            u = model(hidden_states=x, timestep=t, encoder_hidden_states=uncond, return_dict=False)[0]
        return u + guidance * (c - u)

    with torch.inference_mode():
        for _ in range(args.warmup):
            step()
        times = []
        for _ in range(args.steps):
            s = time.perf_counter()
            step()
            times.append(time.perf_counter() - s)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if sys.platform != "darwin":
        peak *= 1024  # Linux reports KiB
    tokens = lat[2] * (lat[3] // 2) * (lat[4] // 2)
    print(
        json.dumps(
            {
                "seconds_per_step": sum(times) / len(times),
                "params": params,
                "peak_rss_bytes": peak,
                "cfg": "two_calls_batch1" if args.cfg == "two-calls" else "one_call_batch2",
                "steps_timed": len(times),
                "warmup": args.warmup,
                "step_seconds": times,
                "frames": args.frames,
                "height": args.height,
                "width": args.width,
                "latent_shape": list(lat),
                "video_tokens": tokens,
                "text_len": text_len,
                "dtype": "float32",
                "threads": threads,
                "build_seconds": build_s,
                "torch": vers["torch"],
                "diffusers": vers["diffusers"],
            }
        ),
        flush=True,
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("fixtures", help="write every fixture (tiny/, *.safetensors, *.json, published/, README)")
    a.add_argument("--out", default="tests/fixtures/wan")
    a.set_defaults(func=cmd_fixtures)
    a = sub.add_parser("shapes", help="write published/ (meta-device shapes and configs of the 1.3B components)")
    a.add_argument("--out", default="tests/fixtures/wan")
    a.set_defaults(func=cmd_shapes)
    a = sub.add_parser("bench", help="time one CFG step of the published 1.3B transformer (random weights, f32, CPU)")
    a.add_argument("--frames", type=int, required=True)
    a.add_argument("--height", type=int, required=True)
    a.add_argument("--width", type=int, required=True)
    a.add_argument("--steps", type=int, default=1, help="timed steps (the mean is reported)")
    a.add_argument("--warmup", type=int, default=0, help="untimed steps first")
    a.add_argument("--cfg", choices=["two-calls", "batch"], default="two-calls",
                   help="two-calls: cond and uncond as two batch-1 calls, as WanPipeline does (default); "
                        "batch: one batch-2 call")
    a.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    a.set_defaults(func=cmd_bench)
    args = ap.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
