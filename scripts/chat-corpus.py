#!/usr/bin/env python3
"""Chat transcripts written by the model itself, for the calibration-mix measurement (issue #15).

Each conversation has a few user turns, each a request about the next slice of the bundled
corpus's *calibration* part (the held-out windows are never quoted), and the model's own
replies, sampled with `kvtc generate` from the whole conversation so far. Transcripts are
written in the model's chat template (ChatML for SmolLM2), one file per conversation, into
OUT/calibration/, so that `kvtc eval --calibration-corpus OUT` (or scripts/calibration-curve.py
--calibration-corpus OUT) calibrates on them. The replies are what a serving cache holds
that prose does not: the model's own continuations after its turn markers.

    scripts/chat-corpus.py .build/release/kvtc OUT [--conversations 24] [--turns 3]
        [--reply-tokens 256] [--snippet-chars 1000]
"""
import argparse
import os
import pathlib
import subprocess
import sys

SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
REQUESTS = [
    "Summarize this in a few sentences.",
    "What is the main idea here? Explain it simply.",
    "List three questions a reader might ask about this, and answer them.",
    "Rewrite the key points as a short email to a colleague.",
    "What would you change or improve in this?",
    "Explain this to a beginner.",
]


def turn(role, text):
    return f"<|im_start|>{role}\n{text}<|im_end|>\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("kvtc")
    ap.add_argument("out")
    ap.add_argument("--conversations", type=int, default=24)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--reply-tokens", type=int, default=256)
    ap.add_argument("--snippet-chars", type=int, default=1000)
    args = ap.parse_args()

    corpus = pathlib.Path(__file__).resolve().parent.parent / "Sources/KVTCCalibration/Corpus/calibration"
    text = "\n\n".join(p.read_text() for p in sorted(corpus.iterdir()) if p.is_file())
    out = pathlib.Path(args.out) / "calibration"
    out.mkdir(parents=True, exist_ok=True)
    # A corpus directory has both parts; `--calibration-corpus` reads only the calibration part.
    heldout = pathlib.Path(args.out) / "heldout"
    heldout.mkdir(exist_ok=True)
    for p in sorted((corpus.parent / "heldout").iterdir()):
        (heldout / p.name).write_text(p.read_text())
    offset = 0
    for c in range(args.conversations):
        transcript = turn("system", SYSTEM)
        for t in range(args.turns):
            if offset + args.snippet_chars > len(text):
                offset = 0
            snippet = text[offset:offset + args.snippet_chars]
            offset += args.snippet_chars
            request = REQUESTS[(c + t) % len(REQUESTS)]
            transcript += turn("user", f"{request}\n\n{snippet}")
            prompt = transcript + "<|im_start|>assistant\n"
            reply = subprocess.run(
                [args.kvtc, "generate", "--prompt", prompt, "--max-tokens", str(args.reply_tokens),
                 "--temperature", "0.7", "--top-p", "0.9", "--seed", str(1000 * c + t)],
                check=True, capture_output=True, text=True).stdout.strip()
            transcript += turn("assistant", reply)
            print(f"conversation {c + 1}/{args.conversations}, turn {t + 1}: {len(reply)} characters", flush=True)
        (out / f"chat-{c:02d}.txt").write_text(transcript)
    return 0


if __name__ == "__main__":
    sys.exit(main())
