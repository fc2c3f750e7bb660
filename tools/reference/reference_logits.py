#!/usr/bin/env python3
"""Reference logits from Hugging Face transformers for a checkpoint directory (Qwen3.5, Llama, Qwen2, Qwen3).

Independent of turboquant: reads our MLX-layout checkpoint (bf16 or MLX affine 4-bit),
maps it to transformers' Qwen3.5 text model (norm weights stored as 1 + w become w,
conv1d [C, K, 1] becomes [C, 1, K], quantized weights dequantized as scale·q + bias),
runs one forward pass in float64 on the given token ids and writes all-position logits.

usage: reference_logits.py MODEL_DIR OUT_PREFIX [n_tokens] [seed]
writes OUT_PREFIX.ids.json and OUT_PREFIX.logits.f32 ([n_tokens][vocab], little-endian)
"""
import json
import sys

import numpy as np
import torch
from safetensors.torch import load_file

import transformers


def unpack(w, bits, cols):
    # w: uint32 [rows, cols*bits/32] (stored as int32 by torch); element j at bits [j*bits, j*bits+bits)
    a = w.numpy().view(np.uint32)
    rows = a.shape[0]
    bytes_ = a.view(np.uint8).reshape(rows, -1)
    bitsarr = np.unpackbits(bytes_, axis=1, bitorder="little")[:, : cols * bits]
    bitsarr = bitsarr.reshape(rows, cols, bits).astype(np.int64)
    q = (bitsarr << np.arange(bits)).sum(axis=2)
    return q


def main():
    model_dir, out = sys.argv[1], sys.argv[2]
    n_tokens = int(sys.argv[3]) if len(sys.argv) > 3 else 48
    seed = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    cfg_all = json.load(open(f"{model_dir}/config.json"))
    if cfg_all.get("model_type") in ("llama", "qwen2", "qwen3"):
        return llama_family(model_dir, cfg_all, out, n_tokens, seed)
    text = dict(cfg_all["text_config"])
    text["model_type"] = "qwen3_5_text"
    tensors = load_file(f"{model_dir}/model.safetensors")
    ours = {}
    for name, t in tensors.items():
        if name.startswith("language_model."):
            name = name[len("language_model."):]
        ours[name] = t
    sd = {}
    for name, t in ours.items():
        if name.endswith(".scales") or name.endswith(".biases"):
            continue
        base = name[: -len(".weight")] if name.endswith(".weight") else None
        if base is not None and base + ".scales" in ours:
            s = ours[base + ".scales"].to(torch.float64)
            b = ours[base + ".biases"].to(torch.float64)
            words = t.shape[1]
            group_count = s.shape[1]
            # bits and group size from config.json's "quantization", checked against the shapes
            qcfg = cfg_all.get("quantization") or cfg_all.get("quantization_config")
            bits, group = qcfg["bits"], qcfg["group_size"]
            cols = words * 32 // bits
            assert cols == group_count * group, (name, words, group_count, bits, group)
            q = torch.from_numpy(unpack(t, bits, cols)).to(torch.float64)
            w = q * s.repeat_interleave(group, dim=1) + b.repeat_interleave(group, dim=1)
            sd[base + ".weight"] = w
            continue
        v = t.to(torch.float64)
        if name.endswith("conv1d.weight"):
            v = v.permute(0, 2, 1).contiguous()  # [C, K, 1] -> [C, 1, K]
        elif name.endswith(".weight") and (
            "input_layernorm" in name or "post_attention_layernorm" in name or name == "model.norm.weight"
            or name.endswith("q_norm.weight") or name.endswith("k_norm.weight")
        ):
            v = v - 1.0  # MLX stores 1 + w; HF's Qwen3.5 RMSNorm computes x·(1 + w)
        sd[name] = v
    cls = getattr(transformers, "Qwen3_5ForCausalLM")
    config = transformers.Qwen3_5TextConfig(**{k: v for k, v in text.items() if k != "model_type"})
    config._attn_implementation = "eager"
    model = cls(config).to(torch.float64)
    if config.tie_word_embeddings and "lm_head.weight" not in sd:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not m.endswith("rotary_emb.inv_freq")]
    print("missing:", missing)
    print("unexpected:", unexpected)
    assert not missing and not unexpected, "state dict mismatch"
    model.eval()
    rng = np.random.default_rng(seed)
    vocab = text["vocab_size"]
    ids = rng.integers(0, min(vocab, 500), n_tokens).tolist()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].to(torch.float32).numpy()
    json.dump({"ids": ids, "vocab": vocab, "transformers": transformers.__version__, "torch": torch.__version__,
               "dtype": "float64 model (DeltaNet kernels in their own precision)"}, open(out + ".ids.json", "w"))
    logits.astype("<f4").tofile(out + ".logits.f32")
    print("logits", logits.shape, "rms", float(np.sqrt((logits ** 2).mean())), "max", float(np.abs(logits).max()))


def llama_family(model_dir, cfg, out, n_tokens, seed):
    """Llama / Qwen2 / Qwen3 checkpoints in the HF layout: loaded as they are."""
    config = transformers.AutoConfig.for_model(**cfg)
    config._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(config).to(torch.float64)
    sd = {k: v.to(torch.float64) for k, v in load_file(f"{model_dir}/model.safetensors").items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not m.endswith("rotary_emb.inv_freq")]
    print("missing:", missing, "unexpected:", unexpected)
    assert not missing and not unexpected
    model.eval()
    ids = np.random.default_rng(seed).integers(0, min(cfg["vocab_size"], 500), n_tokens).tolist()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].to(torch.float32).numpy()
    json.dump({"ids": ids, "vocab": cfg["vocab_size"], "transformers": transformers.__version__}, open(out + ".ids.json", "w"))
    logits.astype("<f4").tofile(out + ".logits.f32")
    print(cfg["model_type"], "logits", logits.shape, "rms", float(np.sqrt((logits ** 2).mean())))


if __name__ == "__main__":
    main()
