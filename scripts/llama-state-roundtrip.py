#!/usr/bin/env python3
"""Measures issue #13's floors: a llama.cpp state through kvtc and back, continued by llama.cpp.

    ~/.venvs/llamacpp/bin/python scripts/llama-state-roundtrip.py KVTC PROFILE MODEL.gguf [--type f16|q8_0]

1. llama.cpp reads 1024 + 64 tokens of held-out text in one run (teacher forcing) and keeps
   the logits of the last 64 positions.
2. A fresh context reads the first 1024 tokens and saves the sequence state
   (llama_state_seq_save_file).
3. `kvtc compress --ratio 16` and `kvtc decompress` turn it into a restored state file.
4. A fresh context loads the restored file and reads the 64 tokens; the mean KL divergence of
   its next-token distributions from step 1's, and the file sizes, are printed.
"""
import argparse, glob, os, subprocess, sys, tempfile
import numpy as np
import llama_cpp

ap = argparse.ArgumentParser()
ap.add_argument("kvtc"); ap.add_argument("profile"); ap.add_argument("model")
ap.add_argument("--type", default="f16", choices=["f16", "q8_0"])
ap.add_argument("--ratio", default="16")
ap.add_argument("--context", type=int, default=1024)
ap.add_argument("--continuation", type=int, default=64)
a = ap.parse_args()
GGML = {"f16": 1, "q8_0": 8}

def context():
    kw = dict(model_path=a.model, n_ctx=2048, n_batch=512, logits_all=True, verbose=False,
              type_k=GGML[a.type], type_v=GGML[a.type])
    flash = 1 if a.type == "q8_0" else 0
    return llama_cpp.Llama(flash_attn=bool(flash), **kw)

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
texts = sorted(glob.glob(os.path.join(root, "Sources/KVTCCalibration/Corpus/heldout/*")))
text = "\n\n".join(open(t, encoding="utf-8").read() for t in texts)
llm = context()
tokens = llm.tokenize(text.encode(), add_bos=False, special=False)[: a.context + a.continuation]
n, m = a.context, a.continuation

def log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))

llm.eval(tokens)
reference = log_softmax(np.array(llm.scores[n:n + m], dtype=np.float64))

tmp = tempfile.mkdtemp()
state, blob, restored = (os.path.join(tmp, f) for f in ("state.ggsq", "state.kvtc", "restored.ggsq"))
llm = context()
llm.eval(tokens[:n])
arr = (llama_cpp.llama_token * n)(*tokens[:n])
llama_cpp.llama_state_seq_save_file(llm._ctx.ctx, state.encode(), 0, arr, n)

out = subprocess.run([a.kvtc, "compress", "--profile", a.profile, "--ratio", a.ratio, "--model", a.model, state, "-o", blob],
                     check=True, capture_output=True, text=True).stdout
print(out.strip())
subprocess.run([a.kvtc, "decompress", "--profile", a.profile, blob, "-o", restored], check=True, capture_output=True)

llm = context()
ids = (llama_cpp.llama_token * n)()
count = llama_cpp.ctypes.c_size_t(0)
read = llama_cpp.llama_state_seq_load_file(llm._ctx.ctx, restored.encode(), 0, ids, n, llama_cpp.ctypes.byref(count))
assert read > 0 and count.value == n, "llama.cpp did not load the restored state"
llm.n_tokens = n
llm.input_ids[:n] = tokens[:n]
llm.eval(tokens[n:n + m])
continued = log_softmax(np.array(llm.scores[n:n + m], dtype=np.float64))
kl = (np.exp(reference) * (reference - continued)).sum(axis=-1)
top1 = (reference.argmax(-1) == continued.argmax(-1)).mean()
sizes = {f: os.path.getsize(f) for f in (state, blob, restored)}
print(f"K/V type {a.type}: state {sizes[state]} bytes -> kvtc {sizes[blob]} bytes ({sizes[state] / sizes[blob]:.2f}x whole file); "
      f"restored state {sizes[restored]} bytes")
print(f"llama.cpp continuing from the restored state, {m} teacher-forced tokens: mean KL {kl.mean():.4f} nats, "
      f"top-1 agreement {100 * top1:.1f}%")
