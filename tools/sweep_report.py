#!/usr/bin/env python3
"""Table (markdown + CSV) and plot (SVG) of a quality sweep (tools/quality_sweep.sh).

    tools/sweep_report.py OUTDIR

Reads OUTDIR/<run>.json (pq-perplexity --json) and OUTDIR/<run>.info.json (pq-info --json) for
the runs fp16 and <method>-q<bits>; writes OUTDIR/quality-sweep.md, .csv and .svg. Bits per
weight: stored bytes of the weight matrices (codes, scales, codebooks; fp16) over their weight
count. Python standard library only.
"""
import csv
import glob
import json
import math
import os
import sys

METHODS = ["fp16", "absmax", "rot-uniform", "lloyd", "pq"]
COLORS = {"fp16": "#000000", "absmax": "#d62728", "rot-uniform": "#ff7f0e", "lloyd": "#2ca02c", "pq": "#1f77b4"}


def bits_per_weight(info):
    size = weights = 0
    for t in info["tensors"]:
        if t["kind"] in ("pq", "f16") and len(t["shape"]) == 2:
            size += t["size"]
            weights += t["shape"][0] * t["shape"][1]
    return 8.0 * size / weights if weights else float("nan")


def load(out):
    rows = []
    for path in sorted(glob.glob(os.path.join(out, "*.json"))):
        if path.endswith(".info.json"):
            continue
        name = os.path.basename(path)[: -len(".json")]
        with open(path) as f:
            r = json.load(f)
        info_path = os.path.join(out, name + ".info.json")
        with open(info_path) as f:
            info = json.load(f)
        method, bits = ("fp16", 16) if name == "fp16" else (name.rsplit("-q", 1)[0], int(name.rsplit("-q", 1)[1]))
        k = r.get("kld", {})
        rows.append({
            "method": method, "bits": bits, "bpw": bits_per_weight(info),
            "ppl": r["ppl"], "ppl_stderr": r["ppl_stderr"],
            "kld_mean": k.get("kld_mean", 0.0), "kld_stderr": k.get("kld_stderr", 0.0),
            "kld_p99": k.get("kld_p99", 0.0),
            "same_top1_pct": 100.0 * k.get("same_top1", 1.0),
            "delta_p_mean_pct": 100.0 * k.get("delta_p_mean", 0.0),
            "delta_p_p99_pct": 100.0 * k.get("delta_p_p99", 0.0),
            "delta_p_p1_pct": 100.0 * k.get("delta_p_p1", 0.0),
            "tokens_scored": r["tokens_scored"], "protocol": r["protocol"], "ctx": r["ctx"], "device": r["device"],
            "text": os.path.basename(r["text"]),
        })
    if not rows:
        sys.exit(f"sweep_report.py: no pq-perplexity JSON in {out}")
    rows.sort(key=lambda r: (METHODS.index(r["method"]) if r["method"] in METHODS else 99, r["bits"]))
    return rows


def write_md(rows, path):
    r0 = rows[0]
    with open(path, "w") as f:
        f.write(f"Text: {r0['text']}, {r0['tokens_scored']} tokens scored ({r0['protocol']} protocol, ctx {r0['ctx']}), "
                f"device: {r0['device']}. KLD and the rest against the fp16 run.\n\n")
        f.write("| method | bits | bpw | PPL | KLD mean | KLD 99% | same top-1 | mean Δp | 99% Δp | 1% Δp |\n")
        f.write("|---|---|---|---|---|---|---|---|---|---|\n")
        for r in rows:
            f.write(f"| {r['method']} | {r['bits']} | {r['bpw']:.3f} | {r['ppl']:.3f} ± {r['ppl_stderr']:.3f} | "
                    f"{r['kld_mean']:.5f} ± {r['kld_stderr']:.5f} | {r['kld_p99']:.4f} | {r['same_top1_pct']:.2f}% | "
                    f"{r['delta_p_mean_pct']:.3f}% | {r['delta_p_p99_pct']:.2f}% | {r['delta_p_p1_pct']:.2f}% |\n")


def write_csv(rows, path):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)


def write_svg(rows, path):
    """Two panels: PPL and mean KLD (log scale) against bits per weight, one line per method."""
    W, H, pad_l, pad_r, pad_t, pad_b, gap = 900, 380, 70, 130, 40, 50, 80
    pw = (W - pad_l - pad_r - gap) / 2
    ph = H - pad_t - pad_b
    quant = [r for r in rows if r["method"] != "fp16"]
    fp16 = next((r for r in rows if r["method"] == "fp16"), None)
    xs = [r["bpw"] for r in quant] or [3, 7]
    x_lo, x_hi = math.floor(min(xs)) - 0.25, math.ceil(max(xs)) + 0.25
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>']

    def panel(x0, key, title, log):
        vals = [r[key] for r in quant if r[key] > 0 or not log]
        if fp16 and (fp16[key] > 0 or not log):
            vals.append(fp16[key])
        lo, hi = (min(vals), max(vals)) if vals else (0, 1)
        if log:
            lo, hi = math.log10(lo), math.log10(hi)
        span = (hi - lo) or 1.0
        lo, hi = lo - 0.05 * span, hi + 0.05 * span

        def X(v):
            return x0 + (v - x_lo) / (x_hi - x_lo) * pw

        def Y(v):
            v = math.log10(v) if log else v
            return pad_t + ph - (v - lo) / (hi - lo) * ph

        out.append(f'<rect x="{x0}" y="{pad_t}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>')
        out.append(f'<text x="{x0 + pw / 2}" y="{pad_t - 12}" text-anchor="middle" font-size="14">{title}</text>')
        out.append(f'<text x="{x0 + pw / 2}" y="{H - 12}" text-anchor="middle">bits per weight (matrices)</text>')
        b = math.ceil(x_lo)
        while b <= x_hi:
            out.append(f'<line x1="{X(b)}" y1="{pad_t + ph}" x2="{X(b)}" y2="{pad_t + ph + 5}" stroke="#444"/>')
            out.append(f'<text x="{X(b)}" y="{pad_t + ph + 18}" text-anchor="middle">{b}</text>')
            b += 1
        for i in range(5):
            v = lo + (hi - lo) * i / 4
            label = f"{10 ** v:.3g}" if log else f"{v:.4g}"
            y = pad_t + ph - (v - lo) / (hi - lo) * ph
            out.append(f'<line x1="{x0 - 5}" y1="{y}" x2="{x0}" y2="{y}" stroke="#444"/>')
            out.append(f'<text x="{x0 - 8}" y="{y + 4}" text-anchor="end">{label}</text>')
        if fp16 and (fp16[key] > 0 or not log):
            y = Y(fp16[key])
            out.append(f'<line x1="{x0}" y1="{y}" x2="{x0 + pw}" y2="{y}" stroke="#000" stroke-dasharray="5,4"/>')
        for m in METHODS[1:]:
            pts = [(X(r["bpw"]), Y(r[key])) for r in quant if r["method"] == m and (r[key] > 0 or not log)]
            if not pts:
                continue
            out.append(f'<polyline fill="none" stroke="{COLORS[m]}" stroke-width="2" points="' +
                       " ".join(f"{x:.1f},{y:.1f}" for x, y in pts) + '"/>')
            for x, y in pts:
                out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{COLORS[m]}"/>')

    panel(pad_l, "ppl", "perplexity (fp16: dashed)", False)
    panel(pad_l + pw + gap, "kld_mean", "mean KL divergence from fp16 (log)", True)
    lx = W - pad_r + 15
    for i, m in enumerate(METHODS):
        y = pad_t + 10 + 20 * i
        dash = ' stroke-dasharray="5,4"' if m == "fp16" else ""
        out.append(f'<line x1="{lx}" y1="{y}" x2="{lx + 22}" y2="{y}" stroke="{COLORS[m]}" stroke-width="2"{dash}/>')
        out.append(f'<text x="{lx + 28}" y="{y + 4}">{m}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: sweep_report.py OUTDIR")
    out = sys.argv[1]
    rows = load(out)
    write_md(rows, os.path.join(out, "quality-sweep.md"))
    write_csv(rows, os.path.join(out, "quality-sweep.csv"))
    write_svg(rows, os.path.join(out, "quality-sweep.svg"))
    print(open(os.path.join(out, "quality-sweep.md")).read())


if __name__ == "__main__":
    main()
