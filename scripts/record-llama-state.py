#!/usr/bin/env python3
"""Records the llama.cpp sequence-state fixtures of Tests/KVTCLlamaStateTests/Fixtures.

Run once, not at test time:
    python3 -m venv ~/.venvs/llamacpp && ~/.venvs/llamacpp/bin/pip install llama-cpp-python==0.3.36
    ~/.venvs/llamacpp/bin/python scripts/record-llama-state.py ~/.cache/kvtc/models/SmolLM2-135M-Instruct.Q4_1.gguf

Each fixture is SmolLM2-135M-Instruct's cache of the same 13 tokens (the text below), saved by llama.cpp with
llama_state_seq_save_file (or, for one, llama_state_seq_get_data) under a K/V type and V
layout: F16 with V transposed (no flash attention) and not (flash attention), BF16, F32 and
Q8_0. tokens.json holds the token ids and the versions that wrote the files.
"""
import ctypes, json, os, sys
import llama_cpp

model = sys.argv[1]
out = os.path.join(os.path.dirname(__file__), "..", "Tests", "KVTCLlamaStateTests", "Fixtures")
os.makedirs(out, exist_ok=True)
TEXT = "The quick brown fox jumps over the lazy dog while the river flows"

GGML = {"f32": 0, "f16": 1, "q8_0": 8, "bf16": 30}
FLASH_ON, FLASH_OFF = 1, 0

def context(kv_type, flash):
    kwargs = dict(model_path=model, n_ctx=64, n_batch=64, verbose=False, type_k=GGML[kv_type], type_v=GGML[kv_type], seed=1)
    return llama_cpp.Llama(flash_attn=bool(flash), **kwargs)

def record(name, kv_type, flash, raw=False):
    llm = context(kv_type, flash)
    tokens = llm.tokenize(TEXT.encode(), add_bos=False, special=False)[:16]
    llm.eval(tokens)
    ctx = llm._ctx.ctx
    path = os.path.join(out, name)
    if raw:
        size = llama_cpp.llama_state_seq_get_size(ctx, 0)
        buf = (ctypes.c_uint8 * size)()
        n = llama_cpp.llama_state_seq_get_data(ctx, buf, size, 0)
        with open(path, "wb") as f:
            f.write(bytes(buf[:n]))
    else:
        arr = (llama_cpp.llama_token * len(tokens))(*tokens)
        n = llama_cpp.llama_state_seq_save_file(ctx, path.encode(), 0, arr, len(tokens))
    print(name, n, "bytes")
    return tokens

tokens = record("f16-vtrans.ggsq", "f16", FLASH_OFF)
record("f16.ggsq", "f16", FLASH_ON)
record("bf16-vtrans.ggsq", "bf16", FLASH_OFF)
record("f32.ggsq", "f32", FLASH_ON)
record("q8_0.ggsq", "q8_0", FLASH_ON)
record("f16-vtrans.seqdata", "f16", FLASH_OFF, raw=True)
with open(os.path.join(out, "tokens.json"), "w") as f:
    json.dump({"tokens": tokens, "text": TEXT, "llama_cpp_python": llama_cpp.__version__,
               "model": os.path.basename(model)}, f, indent=1)
