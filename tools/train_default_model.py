#!/usr/bin/env python3
"""Train pqvk's default English model: a small Llama-architecture decoder on the Brown corpus.

Architecture (HF Llama conventions, so the export loads as transformers' LlamaForCausalLM):
RMSNorm (eps 1e-5), RoPE (theta 10000, 'rotate_half' layout over the whole head), grouped-query
attention, SwiGLU MLP, no biases, tied input/output embeddings.

Default size: dim 384, 6 layers, 6 heads (head_dim 64), 2 KV heads, hidden 1024, vocab 4096,
context 512 -- about 11.0M parameters.

Data: one paragraph per line; each paragraph is tokenized with the SentencePiece model, given a
BOS, and the paragraphs are concatenated into one token stream (train and valid separately).
Validation: the whole valid stream in non-overlapping 512-token windows (every token after the
first is predicted exactly once); token-level perplexity = exp(mean NLL).

Outputs in --out: config.json, model.safetensors (fp16, HF names, no lm_head since tied),
tokenizer.model, tokenizer_config.json, generation_config.json, README.md, train_log.csv,
train_log.txt, loss_curve.svg (+ loss_curve.png where matplotlib exists).

Smoke test on a CPU (tiny model, a few steps):
    /usr/bin/python3 tools/train_default_model.py --tiny --steps 5 --out /tmp/pqvk-tiny
Real run (one GPU): see models/pqvk-brown-10m/README.md.

Needs torch and sentencepiece (numpy optional); transformers/safetensors only for the final
cross-check, which is skipped when they are missing. Written for pqvk; not part of its runtime.
"""

import argparse
import csv
import json
import math
import os
import platform
import shutil
import struct
import sys
import time
import traceback

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# ----------------------------------------------------------------------------- model

class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def rope_cos_sin(seq_len, head_dim, theta, device):
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim))
    pos = torch.arange(seq_len, device=device, dtype=torch.float32)
    freqs = torch.outer(pos, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


HAS_SDPA = hasattr(F, "scaled_dot_product_attention")


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, h, kv, hd = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
        self.h, self.kv, self.hd = h, kv, hd
        self.q_proj = nn.Linear(d, h * hd, bias=False)
        self.k_proj = nn.Linear(d, kv * hd, bias=False)
        self.v_proj = nn.Linear(d, kv * hd, bias=False)
        self.o_proj = nn.Linear(h * hd, d, bias=False)

    def forward(self, x, cos, sin):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.h, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv, self.hd).transpose(1, 2)
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = self.h // self.kv  # KV head j serves query heads j*rep .. j*rep+rep-1 (HF repeat_kv)
        if rep > 1:
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        if HAS_SDPA:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) / math.sqrt(self.hd)
            mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
            att = att.masked_fill(mask, float("-inf")).softmax(-1)
            y = att @ v
        return self.o_proj(y.transpose(1, 2).reshape(b, t, self.h * self.hd))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, f = cfg["hidden_size"], cfg["intermediate_size"]
        self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg, dropout):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, cos, sin):
        x = x + self.drop(self.self_attn(self.input_layernorm(x), cos, sin))
        x = x + self.drop(self.mlp(self.post_attention_layernorm(x)))
        return x


class Backbone(nn.Module):
    def __init__(self, cfg, dropout):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.layers = nn.ModuleList([Block(cfg, dropout) for _ in range(cfg["num_hidden_layers"])])
        self.norm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])


class LlamaLM(nn.Module):
    """Parameter names match HF's LlamaForCausalLM ('model.' prefix); lm_head is the embedding."""

    def __init__(self, cfg, dropout=0.0):
        super().__init__()
        self.cfg = cfg
        self.model = Backbone(cfg, dropout)
        self.drop = nn.Dropout(dropout)
        cos, sin = rope_cos_sin(cfg["max_position_embeddings"], cfg["head_dim"], cfg["rope_theta"], "cpu")
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self._init()

    def _init(self):
        std = 0.02
        resid_std = std / math.sqrt(2 * self.cfg["num_hidden_layers"])
        for name, p in self.named_parameters():
            if p.dim() == 2:
                s = resid_std if name.endswith(("o_proj.weight", "down_proj.weight")) else std
                nn.init.normal_(p, mean=0.0, std=s)

    def forward(self, idx):
        t = idx.shape[1]
        x = self.drop(self.model.embed_tokens(idx))
        cos, sin = self.rope_cos[:t], self.rope_sin[:t]
        for layer in self.model.layers:
            x = layer(x, cos, sin)
        x = self.model.norm(x)
        return F.linear(x, self.model.embed_tokens.weight)  # tied lm_head


def count_params(model):
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- safetensors (own writer/reader)

_ST_DTYPES = {torch.float16: "F16", torch.float32: "F32", torch.bfloat16: "BF16"}
_ST_TORCH = {v: k for k, v in _ST_DTYPES.items()}


def save_safetensors(tensors, path, metadata=None):
    """Minimal safetensors writer: u64 LE header size, JSON header, packed little-endian data."""
    header, blobs, off = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        raw = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for raw in blobs:
            f.write(raw)


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        buf = bytearray(data[a:b])
        out[name] = torch.frombuffer(buf, dtype=_ST_TORCH[info["dtype"]]).reshape(info["shape"]).clone() \
            if b > a else torch.empty(info["shape"], dtype=_ST_TORCH[info["dtype"]])
    return out


# ----------------------------------------------------------------------------- data

def load_stream(path, sp):
    with open(path, encoding="utf-8") as f:
        lines = [ln.rstrip("\n") for ln in f]
    lines = [ln for ln in lines if ln.strip()]
    ids = []
    for enc in sp.encode(lines):
        ids.append(sp.bos_id())
        ids.extend(enc)
    return torch.tensor(ids, dtype=torch.long), len(lines)


def val_windows(stream, ctx):
    """Non-overlapping windows: inputs stream[s:s+L], targets stream[s+1:s+L+1], s = 0, ctx, 2ctx, ..."""
    wins, n = [], stream.numel()
    for s in range(0, n - 1, ctx):
        e = min(s + ctx, n - 1)
        wins.append((stream[s:e], stream[s + 1:e + 1]))
    return wins


@torch.no_grad()
def evaluate(logits_fn, windows, device, batch=32, autocast_dtype=None):
    """Sum of token NLL and token count over windows (full windows batched; a short tail alone)."""
    total, count = 0.0, 0
    full = [w for w in windows if w[0].numel() == windows[0][0].numel()]
    rest = [w for w in windows if w[0].numel() != windows[0][0].numel()]
    groups = [full[i:i + batch] for i in range(0, len(full), batch)] + [[w] for w in rest]
    for g in groups:
        x = torch.stack([w[0] for w in g]).to(device)
        y = torch.stack([w[1] for w in g]).to(device)
        if autocast_dtype is not None:
            with torch.autocast(device_type=device.type, dtype=autocast_dtype):
                logits = logits_fn(x)
        else:
            logits = logits_fn(x)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum")
        total += loss.item()
        count += y.numel()
    return total, count


# ----------------------------------------------------------------------------- generation

@torch.no_grad()
def generate(model, ids, n_new, device, temperature=0.0, top_k=0, gen=None):
    model.eval()
    ctx = model.cfg["max_position_embeddings"]
    x = torch.tensor([ids], dtype=torch.long, device=device)
    for _ in range(n_new):
        logits = model(x[:, -ctx:])[:, -1, :].float()
        if temperature <= 0:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k:
                v, _ = torch.topk(logits, top_k)
                logits[logits < v[:, [-1]]] = float("-inf")
            probs = logits.softmax(-1)
            nxt = torch.multinomial(probs.cpu(), 1, generator=gen).to(device)
        x = torch.cat([x, nxt], dim=1)
        if nxt.item() == 2:  # </s>
            break
    return x[0].tolist()


# ----------------------------------------------------------------------------- plots

def write_svg(rows, path, title):
    W, H, L, R, T, B = 720, 420, 60, 20, 30, 45
    pts_tr = [(r["step"], r["train_loss"]) for r in rows if r["train_loss"] is not None]
    pts_va = [(r["step"], r["val_loss"]) for r in rows]
    ys = [p[1] for p in pts_tr + pts_va]
    xmax = max(max(p[0] for p in pts_va), 1)
    ymin, ymax = math.floor(min(ys) * 2) / 2, math.ceil(max(ys) * 2) / 2
    if ymax <= ymin:
        ymax = ymin + 1

    def px(x):
        return L + (W - L - R) * x / xmax

    def py(y):
        return T + (H - T - B) * (1 - (y - ymin) / (ymax - ymin))

    def poly(pts, color):
        d = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        return f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{d}"/>'

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="18" text-anchor="middle" font-size="14">{title}</text>']
    steps = 5
    for i in range(steps + 1):
        y = ymin + (ymax - ymin) * i / steps
        out.append(f'<line x1="{L}" x2="{W - R}" y1="{py(y):.1f}" y2="{py(y):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{L - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{y:.2f}</text>')
        x = xmax * i / steps
        out.append(f'<text x="{px(x):.1f}" y="{H - B + 16}" text-anchor="middle">{int(x)}</text>')
    out.append(f'<text x="{(L + W - R) / 2}" y="{H - 8}" text-anchor="middle">step</text>')
    out.append(f'<text x="14" y="{(T + H - B) / 2}" text-anchor="middle" transform="rotate(-90 14 {(T + H - B) / 2})">loss (nats/token)</text>')
    if pts_tr:
        out.append(poly(pts_tr, "#1f77b4"))
    out.append(poly(pts_va, "#d62728"))
    out.append(f'<text x="{W - R - 150}" y="{T + 16}" fill="#1f77b4">train (dropout on)</text>')
    out.append(f'<text x="{W - R - 150}" y="{T + 32}" fill="#d62728">validation</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def write_png(rows, path, title):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return False
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    tr = [(r["step"], r["train_loss"]) for r in rows if r["train_loss"] is not None]
    if tr:
        ax.plot([p[0] for p in tr], [p[1] for p in tr], label="train (dropout on)")
    ax.plot([r["step"] for r in rows], [r["val_loss"] for r in rows], label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------- export

def hf_config(cfg):
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": cfg["hidden_size"],
        "intermediate_size": cfg["intermediate_size"],
        "num_hidden_layers": cfg["num_hidden_layers"],
        "num_attention_heads": cfg["num_attention_heads"],
        "num_key_value_heads": cfg["num_key_value_heads"],
        "head_dim": cfg["head_dim"],
        "vocab_size": cfg["vocab_size"],
        "max_position_embeddings": cfg["max_position_embeddings"],
        "rms_norm_eps": cfg["rms_norm_eps"],
        "rope_theta": cfg["rope_theta"],
        "rope_scaling": None,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "tie_word_embeddings": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": None,
        "use_cache": True,
        "torch_dtype": "float16",
    }


def export(model, out_dir, tokenizer_path, sp):
    os.makedirs(out_dir, exist_ok=True)
    cfg = model.cfg
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf_config(cfg), f, indent=2)
        f.write("\n")
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 1, "eos_token_id": 2, "do_sample": False}, f, indent=2)
        f.write("\n")
    tok_cfg = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": sp.id_to_piece(1),
        "eos_token": sp.id_to_piece(2),
        "unk_token": sp.id_to_piece(0),
        "pad_token": None,
        "model_max_length": cfg["max_position_embeddings"],
        "clean_up_tokenization_spaces": False,
        "legacy": True,
        "sp_model_kwargs": {},
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(tok_cfg, f, indent=2)
        f.write("\n")
    dst = os.path.join(out_dir, "tokenizer.model")
    if os.path.abspath(tokenizer_path) != os.path.abspath(dst):
        shutil.copyfile(tokenizer_path, dst)
    sd = {k: v.detach().to(torch.float16) for k, v in model.state_dict().items() if k.startswith("model.")}
    save_safetensors(sd, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    return sd


# ----------------------------------------------------------------------------- HF cross-check

def hf_check(out_dir, windows, device, own_val_nll, prompt_ids, own_greedy, log):
    """Load the export with transformers' LlamaForCausalLM; compare validation loss and greedy ids."""
    try:
        import transformers
        from transformers import LlamaForCausalLM
    except Exception as e:  # not installed (e.g. the CPU smoke test)
        log(f"[hf-check] skipped: transformers not importable ({e.__class__.__name__}: {e})")
        return None
    log(f"[hf-check] transformers {transformers.__version__}")
    try:
        try:
            hf = LlamaForCausalLM.from_pretrained(out_dir, dtype=torch.float32, attn_implementation="eager")
        except TypeError:
            hf = LlamaForCausalLM.from_pretrained(out_dir, torch_dtype=torch.float32, attn_implementation="eager")
        hf = hf.to(device).eval()
        tied = hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
        log(f"[hf-check] lm_head tied to embed_tokens: {tied}")
        nll, cnt = evaluate(lambda x: hf(input_ids=x).logits, windows, device)
        hf_loss = nll / cnt
        diff = abs(hf_loss - own_val_nll)
        ok = diff < 1e-2
        log(f"[hf-check] validation loss: HF {hf_loss:.6f} (ppl {math.exp(hf_loss):.3f}) vs own {own_val_nll:.6f} "
            f"(ppl {math.exp(own_val_nll):.3f}); |diff| {diff:.2e} -> {'OK' if ok else 'MISMATCH'} (tolerance 1e-2)")
        x = torch.tensor([prompt_ids], dtype=torch.long, device=device)
        gen_kwargs = dict(max_new_tokens=len(own_greedy) - len(prompt_ids), do_sample=False,
                          eos_token_id=2, pad_token_id=2)
        try:
            hf_ids = hf.generate(x, attention_mask=torch.ones_like(x), **gen_kwargs)[0].tolist()
        except Exception as e:
            log(f"[hf-check] generate() failed ({e}); greedy by hand")
            hf_ids = list(prompt_ids)
            with torch.no_grad():
                for _ in range(gen_kwargs["max_new_tokens"]):
                    nxt = int(hf(input_ids=torch.tensor([hf_ids], device=device)).logits[0, -1].argmax())
                    hf_ids.append(nxt)
                    if nxt == 2:
                        break
        same = hf_ids[:len(own_greedy)] == own_greedy
        log(f"[hf-check] greedy ids identical to own model: {same}")
        return {"hf_val_loss": hf_loss, "diff": diff, "ok": ok, "greedy_same": same, "hf_greedy": hf_ids,
                "transformers": transformers.__version__}
    except Exception:
        log("[hf-check] FAILED:\n" + traceback.format_exc())
        return {"ok": False, "error": traceback.format_exc()}


# ----------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.path.join(HERE, "train_default_model", "data"))
    ap.add_argument("--tokenizer", default=os.path.join(ROOT, "models", "pqvk-brown-10m", "tokenizer.model"))
    ap.add_argument("--out", default=os.path.join(ROOT, "models", "pqvk-brown-10m"))
    ap.add_argument("--tiny", action="store_true", help="tiny model for a CPU smoke test")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32, help="sequences per step")
    ap.add_argument("--epochs", type=float, default=16.0, help="passes over the training stream")
    ap.add_argument("--steps", type=int, default=0, help="override the number of steps")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--time-budget", type=float, default=240.0, help="stop training after this many seconds")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--gen-tokens", type=int, default=80)
    args = ap.parse_args()

    if args.tiny:
        args.dim, args.layers, args.heads, args.kv_heads, args.hidden, args.ctx = 64, 2, 4, 2, 128, 64
        args.batch, args.eval_every, args.warmup, args.gen_tokens = 4, 2, 2, 20

    import sentencepiece as spm
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    os.makedirs(args.out, exist_ok=True)
    log_f = open(os.path.join(args.out, "train_log.txt"), "w")

    def log(msg):
        print(msg, flush=True)
        log_f.write(msg + "\n")
        log_f.flush()

    t_start = time.time()
    sp = spm.SentencePieceProcessor(model_file=args.tokenizer)
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id()) == (0, 1, 2), "tokenizer must use unk=0 bos=1 eos=2"
    train, n_par_tr = load_stream(os.path.join(args.data_dir, "brown-train.txt"), sp)
    valid, n_par_va = load_stream(os.path.join(args.data_dir, "brown-valid.txt"), sp)
    windows = val_windows(valid, args.ctx)

    cfg = {
        "hidden_size": args.dim, "intermediate_size": args.hidden, "num_hidden_layers": args.layers,
        "num_attention_heads": args.heads, "num_key_value_heads": args.kv_heads, "head_dim": args.dim // args.heads,
        "vocab_size": sp.vocab_size(), "max_position_embeddings": args.ctx, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
    }
    model = LlamaLM(cfg, dropout=args.dropout).to(device)
    n_params = count_params(model)

    tokens_per_step = args.batch * args.ctx
    steps_per_epoch = max(1, (train.numel() - 1) // tokens_per_step)
    total_steps = args.steps if args.steps > 0 else int(round(args.epochs * steps_per_epoch))

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    log(f"pqvk default model training -- torch {torch.__version__}, device {device} ({dev_name})")
    log(f"command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    log(f"tokenizer: {args.tokenizer} (vocab {sp.vocab_size()})")
    log(f"train: {n_par_tr} paragraphs, {train.numel()} tokens; valid: {n_par_va} paragraphs, {valid.numel()} tokens, "
        f"{len(windows)} windows of <= {args.ctx}, {valid.numel() - 1} predicted tokens")
    log(f"config: {json.dumps(cfg)}")
    log(f"parameters: {n_params} ({n_params / 1e6:.3f}M; embedding {cfg['vocab_size'] * cfg['hidden_size']}, tied)")
    log(f"training: {total_steps} steps x {args.batch} x {args.ctx} = {total_steps * tokens_per_step} tokens "
        f"(~{total_steps / steps_per_epoch:.2f} epochs), AdamW lr {args.lr} wd {args.weight_decay}, "
        f"warmup {args.warmup}, cosine to {args.min_lr_frac * args.lr:g}, dropout {args.dropout}, seed {args.seed}")

    use_cuda = device.type == "cuda"
    if use_cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    amp_dtype = torch.bfloat16 if use_cuda else None

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=use_cuda)
    except TypeError:
        opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8)

    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        p = min(1.0, (step - args.warmup) / max(1, total_steps - args.warmup))
        lo = args.lr * args.min_lr_frac
        return lo + 0.5 * (args.lr - lo) * (1 + math.cos(math.pi * p))

    # Fixed probe of the training stream (dropout off) to compare with validation.
    g = torch.Generator().manual_seed(args.seed + 1)
    probe_starts = torch.randint(0, train.numel() - args.ctx - 1, (min(128, steps_per_epoch * args.batch),), generator=g)
    train_probe = [(train[s:s + args.ctx], train[s + 1:s + args.ctx + 1]) for s in probe_starts.tolist()]

    def run_eval():
        model.eval()
        nll, cnt = evaluate(model, windows, device, autocast_dtype=amp_dtype)
        tnll, tcnt = evaluate(model, train_probe, device, autocast_dtype=amp_dtype)
        model.train()
        return nll / cnt, tnll / tcnt

    # Epoch order: each epoch a random offset in [0, ctx) and a shuffled order of the windows.
    batch_gen = torch.Generator().manual_seed(args.seed + 2)

    def epoch_batches():
        while True:
            off = int(torch.randint(0, args.ctx, (1,), generator=batch_gen))
            starts = torch.arange(off, train.numel() - args.ctx - 1, args.ctx)
            starts = starts[torch.randperm(starts.numel(), generator=batch_gen)]
            for i in range(0, starts.numel() - args.batch + 1, args.batch):
                s = starts[i:i + args.batch]
                idx = s[:, None] + torch.arange(args.ctx + 1)[None, :]
                yield train[idx]

    batches = epoch_batches()
    csv_path = os.path.join(args.out, "train_log.csv")
    csv_f = open(csv_path, "w", newline="")
    cw = csv.writer(csv_f)
    cw.writerow(["step", "epoch", "lr", "train_loss", "train_eval_loss", "val_loss", "val_ppl", "tokens_per_s", "elapsed_s"])
    rows = []
    best = {"val_loss": float("inf"), "step": -1, "state": None}

    def record(step, train_loss, tok_s):
        vl, tl = run_eval()
        row = {"step": step, "epoch": step / steps_per_epoch, "lr": lr_at(max(step - 1, 0)), "train_loss": train_loss,
               "train_eval_loss": tl, "val_loss": vl, "val_ppl": math.exp(vl), "tokens_per_s": tok_s,
               "elapsed_s": time.time() - t_train}
        rows.append(row)
        cw.writerow([step, f"{row['epoch']:.3f}", f"{row['lr']:.3e}",
                     "" if train_loss is None else f"{train_loss:.4f}", f"{tl:.4f}", f"{vl:.4f}", f"{math.exp(vl):.3f}",
                     "" if tok_s is None else f"{tok_s:.0f}", f"{row['elapsed_s']:.1f}"])
        csv_f.flush()
        mark = ""
        if vl < best["val_loss"]:
            best.update(val_loss=vl, step=step, state={k: v.detach().clone() for k, v in model.state_dict().items()})
            mark = " *best"
        log(f"step {step:5d}/{total_steps} ep {row['epoch']:5.2f} lr {row['lr']:.2e} "
            f"train {'-' if train_loss is None else f'{train_loss:.4f}'} train(eval) {tl:.4f} "
            f"val {vl:.4f} ppl {math.exp(vl):8.2f} "
            f"tok/s {'-' if tok_s is None else f'{tok_s:,.0f}'} t {row['elapsed_s']:.1f}s{mark}")

    t_train = time.time()
    model.train()
    record(0, None, None)
    acc_loss, acc_n, t_mark, tok_mark = 0.0, 0, time.time(), 0
    step, stopped_early = 0, False
    for step in range(1, total_steps + 1):
        for gr in opt.param_groups:
            gr["lr"] = lr_at(step - 1)
        xy = next(batches).to(device, non_blocking=True)
        x, y = xy[:, :-1], xy[:, 1:]
        if amp_dtype is not None:
            with torch.autocast(device_type="cuda", dtype=amp_dtype):
                logits = model(x)
        else:
            logits = model(x)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        acc_loss += loss.detach()
        acc_n += 1
        tok_mark += x.numel()
        over_time = time.time() - t_train > args.time_budget
        if step % args.eval_every == 0 or step == total_steps or over_time:
            if use_cuda:
                torch.cuda.synchronize()
            dt = time.time() - t_mark
            record(step, float(acc_loss) / acc_n, tok_mark / dt)
            acc_loss, acc_n, tok_mark = 0.0, 0, 0
            t_mark = time.time()
        if over_time and step < total_steps:
            log(f"time budget of {args.time_budget}s reached at step {step}; stopping")
            stopped_early = True
            break
    train_time = time.time() - t_train
    log(f"training done: {step} steps in {train_time:.1f}s; best val loss {best['val_loss']:.4f} "
        f"(ppl {math.exp(best['val_loss']):.3f}) at step {best['step']}")
    csv_f.close()

    # ---- best checkpoint: exact (fp32, no TF32) evaluation, export, reload check
    if use_cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    model.load_state_dict(best["state"])
    model.eval()
    nll, cnt = evaluate(model, windows, device)
    val32 = nll / cnt
    tnll, tcnt = evaluate(model, train_probe, device)
    train32 = tnll / tcnt
    sd16 = export(model, args.out, args.tokenizer, sp)
    reloaded = load_safetensors(os.path.join(args.out, "model.safetensors"))
    assert set(reloaded) == set(sd16) and all(torch.equal(reloaded[k], sd16[k].cpu()) for k in sd16), "safetensors round trip"
    model16 = LlamaLM(cfg).to(device)
    model16.load_state_dict({k: v.float() for k, v in reloaded.items()}, strict=True)
    model16.eval()
    nll16, _ = evaluate(model16, windows, device)
    val16 = nll16 / cnt
    tnll16, _ = evaluate(model16, train_probe, device)
    train16 = tnll16 / tcnt
    log(f"best checkpoint (step {best['step']}), fp32 evaluation: val loss {val32:.4f} ppl {math.exp(val32):.3f}; "
        f"train-probe loss {train32:.4f} ppl {math.exp(train32):.3f}")
    log(f"exported fp16 weights, fp32 evaluation: val loss {val16:.4f} ppl {math.exp(val16):.3f} "
        f"({cnt} tokens); train-probe loss {train16:.4f} ppl {math.exp(train16):.3f}")

    prompt = "The"
    prompt_ids = [sp.bos_id()] + sp.encode(prompt)
    greedy = generate(model16, prompt_ids, args.gen_tokens, device)
    gen = torch.Generator().manual_seed(args.seed)
    sampled = generate(model16, prompt_ids, args.gen_tokens, device, temperature=0.8, top_k=40, gen=gen)
    greedy_text, sampled_text = sp.decode(greedy), sp.decode(sampled)
    log(f"greedy sample from {prompt!r}: {greedy_text!r}")
    log(f"sampled (T=0.8, top-k 40, seed {args.seed}) from {prompt!r}: {sampled_text!r}")

    hf = hf_check(args.out, windows, device, val16, prompt_ids, greedy, log)
    if hf and "hf_greedy" in hf:
        log(f"HF greedy sample: {sp.decode(hf['hf_greedy'])!r}")

    title = f"{n_params / 1e6:.1f}M Llama on Brown: val ppl {math.exp(val16):.1f}"
    write_svg(rows, os.path.join(args.out, "loss_curve.svg"), title)
    png = write_png(rows, os.path.join(args.out, "loss_curve.png"), title)

    summary = {
        "parameters": n_params, "config": cfg, "device": dev_name, "torch": torch.__version__,
        "steps": step, "planned_steps": total_steps, "stopped_early": stopped_early, "tokens_per_step": tokens_per_step,
        "steps_per_epoch": steps_per_epoch, "epochs": step / steps_per_epoch, "train_seconds": round(train_time, 1),
        "total_seconds": round(time.time() - t_start, 1), "best_step": best["step"],
        "val_loss": val16, "val_ppl": math.exp(val16), "val_tokens": cnt, "val_loss_fp32_weights": val32,
        "train_probe_loss": train16, "train_probe_ppl": math.exp(train16),
        "last_train_loss_dropout": rows[-1]["train_loss"], "train_tokens": train.numel(),
        "greedy_sample": greedy_text, "sampled_sample": sampled_text, "hf_check": None if hf is None else
        {k: v for k, v in hf.items() if k != "hf_greedy"}, "png": png, "args": vars(args),
        "command": " ".join(["python3"] + sys.argv),
    }
    with open(os.path.join(args.out, "train_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    log(f"wrote {args.out}: " + ", ".join(sorted(os.listdir(args.out))))
    log(f"total time {time.time() - t_start:.1f}s")
    log_f.close()
    if hf is not None and not hf.get("ok", False):
        sys.exit(2)


if __name__ == "__main__":
    main()
