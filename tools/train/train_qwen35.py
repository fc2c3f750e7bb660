#!/usr/bin/env python3
"""Train a small model with the Qwen3.5 text architecture, for measuring KV-cache quality.

Architecture as Qwen3.5 (transformers' Qwen3_5ForCausalLM): full attention every 4th layer
with head_dim 256, gated attention, q/k RMSNorm, GQA, partial RoPE; Gated DeltaNet elsewhere;
small hidden size and a byte-level BPE vocabulary trained here with HF `tokenizers` using
Qwen's pre-tokenizer regex. Data: the public corpora in tests/data/train (WikiText-2 test,
tiny-shakespeare, TinyStories sample); the last 10% of WikiText is held out for evaluation.
Passkey-retrieval lines are mixed into the training text so that needle-in-a-haystack
retrieval is meaningful (Mohtashami & Jaggi 2023, passkey task).

Outputs (OUT dir): the MLX 4-bit checkpoint (config.json, model.safetensors, tokenizer.json),
reference logits of the dequantized model from transformers in float64 (ref.ids.json,
ref.logits.f32), and train.log.

usage: train_qwen35.py DATA_DIR OUT_DIR [seconds]
"""
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import transformers
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers, Regex

QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def log(f, *a):
    s = " ".join(str(x) for x in a)
    print(s, flush=True)
    f.write(s + "\n")
    f.flush()


def passkey_sample(rng, filler_words, n_words):
    key = str(rng.randint(10000, 99999))
    words = [filler_words[rng.randrange(len(filler_words))] for _ in range(n_words)]
    at = rng.randint(0, n_words)
    hay = " ".join(words[:at]) + f" The pass key is {key}. Remember it. {key} is the pass key. " + " ".join(words[at:])
    return hay + f" What is the pass key? The pass key is {key}.\n"


def quantize_affine(w, bits=4, group=64):
    """MLX affine quantization (as tq convert): per group scale=(max-min)/15, bias=min, in bf16."""
    rows, cols = w.shape
    g = w.float().reshape(rows, cols // group, group)
    lo, hi = g.min(-1).values, g.max(-1).values
    scale = torch.where(hi > lo, (hi - lo) / (2 ** bits - 1), torch.full_like(hi, 1e-8)).to(torch.bfloat16)
    bias = lo.to(torch.bfloat16)
    q = torch.clamp(torch.round((g - bias.float()[..., None]) / scale.float()[..., None]), 0, 2 ** bits - 1).to(torch.int64)
    q = q.reshape(rows, cols)
    # pack little-endian: element j at bits [4j, 4j+4) of the row's bit stream
    q = q.reshape(rows, cols // 8, 8)
    packed = torch.zeros(rows, cols // 8, dtype=torch.int64)
    for i in range(8):
        packed |= q[:, :, i] << (4 * i)
    packed = packed.to(torch.int64).numpy().astype(np.uint32).view(np.int32)
    deq = (q.reshape(rows, cols // group, group).float() * scale.float()[..., None] + bias.float()[..., None]).reshape(rows, cols)
    return torch.from_numpy(packed.copy()), scale, bias, deq


def main():
    data_dir, out = sys.argv[1], sys.argv[2]
    budget = float(sys.argv[3]) if len(sys.argv) > 3 else 480
    os.makedirs(out, exist_ok=True)
    logf = open(f"{out}/train.log", "w")
    torch.manual_seed(0)
    rng = random.Random(0)
    wiki = open(f"{data_dir}/wiki.test.raw", encoding="utf-8").read().replace("\r\n", "\n")
    cut = int(len(wiki) * 0.9)
    train_text = wiki[:cut] + "\n" + open(f"{data_dir}/input.txt", encoding="utf-8").read() + "\n" + \
        open(f"{data_dir}/tinystories_sample.txt", encoding="utf-8").read()
    heldout = wiki[cut:]
    open(f"{out}/heldout.txt", "w", encoding="utf-8").write(heldout)
    filler = [w for w in wiki[:cut].split() if w.isalpha()]
    passkeys = "".join(passkey_sample(rng, filler, rng.randint(20, 300)) for _ in range(3000))
    # Tokenizer: byte-level BPE with Qwen's split regex.
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2048, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([train_text, passkeys], trainer)
    tok.save(f"{out}/tokenizer.json")
    vocab = tok.get_vocab_size()
    log(logf, "vocab", vocab)
    ids_main = tok.encode(train_text).ids
    ids_pk = tok.encode(passkeys).ids
    log(logf, "train tokens", len(ids_main), "passkey tokens", len(ids_pk))
    data = torch.tensor(ids_main + ids_pk, dtype=torch.long)
    text_cfg = dict(vocab_size=vocab, hidden_size=256, intermediate_size=768, num_hidden_layers=8,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=256, full_attention_interval=4,
                    linear_num_key_heads=4, linear_num_value_heads=8, linear_key_head_dim=64,
                    linear_value_head_dim=64, linear_conv_kernel_dim=4, rms_norm_eps=1e-6,
                    tie_word_embeddings=True, max_position_embeddings=8192, attn_output_gate=True,
                    rope_parameters={"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25},
                    eos_token_id=tok.token_to_id("<|endoftext|>"))
    config = transformers.Qwen3_5TextConfig(**text_cfg)
    model = transformers.Qwen3_5ForCausalLM(config).cuda()
    n_params = sum(p.numel() for p in model.parameters())
    log(logf, "parameters", n_params)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.1, betas=(0.9, 0.95))
    T, B = 512, 16
    t0 = time.time()
    step = 0
    while True:
        el = time.time() - t0
        if el > budget:
            break
        # warm-up over 100 steps, then cosine decay to 10% over the time budget
        lr = 2e-3 * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, el / budget))))
        for g in opt.param_groups:
            g["lr"] = lr
        # three quarters of the batch from ordinary text, a quarter from passkey samples
        starts = [random.randrange(0, len(ids_main) - T - 1) for _ in range(B * 3 // 4)] + \
                 [len(ids_main) + random.randrange(0, len(ids_pk) - T - 1) for _ in range(B // 4)]
        x = torch.stack([data[s:s + T + 1] for s in starts]).cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(x[:, :-1]).logits.float()
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0:
            log(logf, f"step {step} loss {loss.item():.4f} lr {lr:.2e} t {time.time() - t0:.0f}s")
        step += 1
    model.eval()
    # Held-out loss.
    hid = torch.tensor(tok.encode(heldout).ids[: 64 * 512 + 1]).cuda()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        xs = hid[:-1].reshape(-1, 512)[:32]
        ys = hid[1:].reshape(-1, 512)[:32]
        hl = torch.nn.functional.cross_entropy(model(xs).logits.float().reshape(-1, vocab), ys.reshape(-1))
    log(logf, f"final step {step} held-out loss {hl.item():.4f} ppl {math.exp(hl.item()):.2f}")
    # MLX 4-bit checkpoint in the HF layout (+ .scales/.biases); norms and conv stay as HF stores them.
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    outsd, deq_sd = {}, {}
    for k, v in sd.items():
        if k == "lm_head.weight":
            continue  # tied
        if v.ndim == 2 and k.endswith(".weight") and v.shape[1] % 64 == 0 and "norm" not in k:
            packed, s, b, deq = quantize_affine(v)
            base = k[: -len(".weight")]
            outsd[k] = packed
            outsd[base + ".scales"] = s
            outsd[base + ".biases"] = b
            deq_sd[k] = deq
        else:
            outsd[k] = v.to(torch.float32) if k.endswith("A_log") else v.to(torch.bfloat16)
            deq_sd[k] = outsd[k].float()
    save_file({k: v.contiguous() for k, v in outsd.items()}, f"{out}/model.safetensors", metadata={"format": "mlx"})
    cfg = dict(text_cfg)
    cfg["model_type"] = "qwen3_5_text"
    cfg["architectures"] = ["Qwen3_5ForCausalLM"]
    cfg["quantization"] = {"group_size": 64, "bits": 4, "mode": "affine"}
    cfg["quantization_config"] = cfg["quantization"]
    json.dump(cfg, open(f"{out}/config.json", "w"), indent=2)
    # Reference logits of the dequantized model, float64, on held-out text.
    ref = transformers.Qwen3_5ForCausalLM(config).to(torch.float64)
    deq_sd["lm_head.weight"] = deq_sd["model.embed_tokens.weight"]
    missing, unexpected = ref.load_state_dict({k: v.to(torch.float64) for k, v in deq_sd.items()}, strict=False)
    log(logf, "reference load: missing", missing, "unexpected", unexpected)
    ref.eval()
    ids = tok.encode(heldout).ids[:200]
    with torch.no_grad():
        lg = ref(torch.tensor([ids])).logits[0].to(torch.float32).numpy()
    json.dump({"ids": ids, "vocab": vocab, "transformers": transformers.__version__}, open(f"{out}/ref.ids.json", "w"))
    lg.astype("<f4").tofile(f"{out}/ref.logits.f32")
    # Tokenizer fixture: HF tokenizers' ids for a few held-out lines.
    lines = [l for l in heldout.split("\n") if l.strip()][:40]
    json.dump([{"text": l, "ids": tok.encode(l).ids} for l in lines], open(f"{out}/tok_vectors.json", "w"))
    log(logf, "done")


if __name__ == "__main__":
    main()
