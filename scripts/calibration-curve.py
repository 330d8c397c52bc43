#!/usr/bin/env python3
"""KL at 16x against the number of calibration tokens (issue #15's calibration curve).

Runs `kvtc eval --ratios R --baselines none --calibration-tokens N` for each N (profiles
are calibrated from the bundled corpus's calibration part and cached; evaluation uses the
held-out part), and writes one JSON with each size's effective ratio, KL, top-1 and the
calibration time, plus a table on standard output.

    scripts/calibration-curve.py .build/release/kvtc docs/calibration-curve.json \
        [--tokens 8192,16384,32768,65536,131072] [--ratio 16] [--model smollm2-135m]
        [--calibration-corpus DIR ...]   (each at the first --tokens size: a calibration mix)

The bundled corpus's calibration part holds 110,890 tokens of SmolLM2's tokenizer, so
131072 means all of it.
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("kvtc")
    ap.add_argument("output")
    ap.add_argument("--tokens", default="8192,16384,32768,65536,131072")
    ap.add_argument("--ratio", default="16")
    ap.add_argument("--model", default=None)
    ap.add_argument("--calibration-corpus", action="append", default=[],
                    help="also calibrate from DIR/calibration (repeatable; e.g. prose-only or code-only parts)")
    args = ap.parse_args()
    rows = []
    runs = [(int(t), None) for t in args.tokens.split(",")]
    runs += [(int(args.tokens.split(",")[0]), d) for d in args.calibration_corpus]
    for n, corpus in runs:
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            cmd = [args.kvtc, "eval", "--ratios", args.ratio, "--baselines", "none",
                   "--calibration-tokens", str(n), "--retrieval-trials", "0", "--json", out.name]
            if args.model:
                cmd += ["--model", args.model]
            if corpus:
                cmd += ["--calibration-corpus", corpus]
            start = time.time()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            seconds = time.time() - start
            report = json.load(open(out.name))
        kvtc = [r for r in report["results"] if r["method"] == "kvtc"][0]
        row = {"calibration_tokens": n, "calibration_corpus": corpus or "bundled", "effective_ratio": kvtc["effective_ratio"], "mean_kl": kvtc["mean_kl"],
               "top1": kvtc["top1"], "windows": kvtc["windows"], "seconds_calibrate_and_eval": round(seconds, 1)}
        rows.append(row)
        print(f"{n:>8} tokens of {corpus or 'bundled'}: {kvtc['effective_ratio']:.2f}x  KL {kvtc['mean_kl']:.4f}  top-1 {kvtc['top1']:.3f}"
              f"  ({seconds:.0f} s calibrate + eval)", flush=True)
    json.dump({"ratio": args.ratio, "model": args.model or "default", "info": report.get("info"), "sizes": rows},
              open(args.output, "w"), indent=2, sort_keys=True)


if __name__ == "__main__":
    sys.exit(main())
