#!/usr/bin/env python3
"""Records llama.cpp's reference figures for Gemma 3 270M into
Tests/KVTCModelsEmbeddedTests/Fixtures/gemma3-reference.json.

Run once, not at test time:
    python3 -m venv ~/.venvs/llamacpp && ~/.venvs/llamacpp/bin/pip install llama-cpp-python==0.3.36
    ~/.venvs/llamacpp/bin/python scripts/record-gemma3-reference.py ~/.cache/kvtc/models/gemma-3-270m-q4_k_m.gguf

Recorded: the token ids llama.cpp gives (no BOS, control tokens not parsed) for stress
strings and, as a count and a SHA-256 of the comma-joined ids (plus the first 64 ids, to
locate a difference), for every file of the bundled corpus and for GPL-3; the ids of a chat
prompt with control tokens parsed; and llama.cpp's perplexity of GPL-3 over BOS + 511 and
BOS + 2047 tokens (the second crosses the 512-token sliding window).
"""
import hashlib, json, math, os, sys
import llama_cpp
import numpy as np

model = sys.argv[1]
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
out = os.path.join(root, "Tests", "KVTCModelsEmbeddedTests", "Fixtures", "gemma3-reference.json")

STRESS = [
    "Hello world", " Hello  world ", "  many   spaces    here  ", "line1\nline2\n\n\nline5\r\n",
    "\n", "\n\n", "\t\ttabs\tand\n\n\n\n\n\n\nnewlines", " " * 40 + "x",
    "emoji 🙂👍🏽👨‍👩‍👧 flags 🇫🇷", "中文文本和日本語のテキスト、한국어", "e\u0301\u0302 combining a\u0308",
    "numbers 3.14159 and 1,000,000 and ١٢٣", "\u0000\u0001\u007f controls", "Ω≈ç√∫˜µ≤≥÷",
    "don't I'm we'll they've she'd it's ''quoted''",
    "def f(x):\n    return {'a': [1, 2, 3]}  # comment\n",
    "<div class=\"x\"><h1>Title</h1></div>\n<br/>",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }",
    "<start_of_turn>user literal", "<unused0> <pad> <eos>", "ʻOkina ŋ ǂ ﬁ ﬀ",
    "a" * 300, "ab " * 100,
]

llm = llama_cpp.Llama(model_path=model, n_ctx=2048, n_batch=512, logits_all=True, verbose=False, seed=1)

def ids(text, special=False):
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)

def digest(tokens):
    return hashlib.sha256(",".join(map(str, tokens)).encode()).hexdigest()

files = {}
corpus = os.path.join(root, "Sources", "KVTCCalibration", "Corpus")
for part in ("calibration", "heldout"):
    for name in sorted(os.listdir(os.path.join(corpus, part))):
        with open(os.path.join(corpus, part, name), encoding="utf-8") as f:
            t = ids(f.read())
        files[f"{part}/{name}"] = {"count": len(t), "sha256": digest(t), "first": t[:64]}
with open("/usr/share/common-licenses/GPL-3", encoding="utf-8") as f:
    gpl = f.read()
gpl_ids = ids(gpl)
files["GPL-3"] = {"count": len(gpl_ids), "sha256": digest(gpl_ids), "first": gpl_ids[:64]}

chat = "<start_of_turn>user\nWhich river flows through Paris?<end_of_turn>\n<start_of_turn>model\n"

def perplexity(n):
    tokens = [llm.token_bos()] + gpl_ids[:n - 1]
    llm.reset()
    llm.eval(tokens)
    nll = 0.0
    for i in range(len(tokens) - 1):
        row = np.asarray(llm.scores[i], dtype=np.float64)
        m = row.max()
        nll += m + math.log(np.exp(row - m).sum()) - row[tokens[i + 1]]
    return math.exp(nll / (len(tokens) - 1))

result = {
    "model_sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    "llama_cpp_python": llama_cpp.__version__,
    "bos": llm.token_bos(), "eos": llm.token_eos(),
    "stress": [{"text": s, "ids": ids(s)} for s in STRESS],
    "chat": {"text": chat, "ids": ids(chat, special=True)},
    "files": files,
    "perplexity_gpl3_512": perplexity(512),
    "perplexity_gpl3_2048": perplexity(2048),
}
with open(out, "w", encoding="utf-8") as f:
    json.dump(result, f, ensure_ascii=False, indent=1)
print(f"wrote {out}: perplexity {result['perplexity_gpl3_512']:.3f} (512), {result['perplexity_gpl3_2048']:.3f} (2048)")
