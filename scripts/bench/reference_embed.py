#!/usr/bin/env python3
"""Embedding throughput of the reference runtimes, on the texts `rag-node bench embed` wrote.

Runtimes: sentence-transformers on PyTorch (`st`, fp32; `st-bf16`, the model cast to bfloat16,
which PyTorch runs on AMX or AVX512_BF16 where the CPU has them) and ONNX Runtime (`ort`, the
model exported to ONNX in fp32; `ort-int8`, that export after ONNX Runtime's dynamic int8
quantization). Each reduced-precision runtime also reports the smallest cosine of its vectors to
the fp32 sentence-transformers ones (`min_cos`), so speed is never quoted without accuracy.

All runtimes see the same batches: texts sorted by token count, cut into batches of `--batch`,
each padded to its longest text, truncated at 256 tokens. (The model's tokenizer.json fixes
padding and truncation at 128 tokens; sentence-transformers overrides that from
sentence_bert_config.json, and so do we for ONNX Runtime.)

Set-up, once, outside the test command (a few GB):
    python3 -m venv .venv-ref
    .venv-ref/bin/pip install torch sentence-transformers onnx onnxruntime
Run:
    .venv-ref/bin/python scripts/bench/reference_embed.py MODEL_DIR TEXTS \\
        [--runtime st|st-bf16|ort|ort-int8|all] [--threads 2] [--batch 32] [--repeat 3]
TEXTS is one text per line, or a JSON array of strings. One JSON line per runtime is printed:
{"impl", "texts", "threads", "batch", "median_texts_per_s", "runs", "mean_tokens", "min_cos"?}.
Run it right after rag-node's own benchmark on the same machine and compare ratios.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

MAX_TOKENS = 256


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model_dir")
    p.add_argument("texts")
    p.add_argument("--runtime", default="all", choices=["st", "st-bf16", "ort", "ort-int8", "all"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeat", type=int, default=3)
    return p.parse_args()


def load_texts(path):
    with open(path, encoding="utf-8") as f:
        raw = f.read()
    if raw.lstrip().startswith("["):
        return json.loads(raw)
    return [line for line in raw.splitlines() if line.strip()]


def batches_by_length(texts, tokenizer, batch):
    """The texts sorted by real token count (padding excluded), in batches."""
    counts = [sum(e.attention_mask) for e in tokenizer.encode_batch(texts)]
    order = sorted(range(len(texts)), key=lambda i: counts[i])
    sorted_texts = [texts[i] for i in order]
    return [sorted_texts[i:i + batch] for i in range(0, len(sorted_texts), batch)], counts


def measure(embed_batches, batches, repeat):
    """Median texts/s over `repeat` passes after one warm-up pass, and the last pass's vectors."""
    import numpy as np

    vectors = embed_batches(batches[:1])  # warm-up
    rates = []
    n = sum(len(b) for b in batches)
    for _ in range(repeat):
        start = time.perf_counter()
        vectors = embed_batches(batches)
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates), rates, np.concatenate(vectors)


def sentence_transformers_runtime(model_dir, bf16):
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_dir, device="cpu")
    model.max_seq_length = MAX_TOKENS
    if bf16:
        model = model.to(torch.bfloat16)

    def embed(batches):
        out = []
        with torch.inference_mode():
            for b in batches:
                v = model.encode(b, batch_size=len(b), convert_to_numpy=False, normalize_embeddings=True)
                out.append(torch.stack(v).float().numpy())
        return out

    return embed


def onnx_runtime(model_dir, tokenizer, threads, int8):
    import numpy as np
    import onnxruntime as ort
    import torch
    from transformers import AutoModel

    work = tempfile.mkdtemp(prefix="ref-onnx-")
    fp32_path = os.path.join(work, "model.onnx")
    model = AutoModel.from_pretrained(model_dir).eval()
    dummy = tokenizer.encode_batch(["a b c", "d e"])
    ids = torch.tensor([e.ids for e in dummy])
    mask = torch.tensor([e.attention_mask for e in dummy])
    types = torch.tensor([e.type_ids for e in dummy])
    dynamic = {"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"},
               "token_type_ids": {0: "b", 1: "s"}, "last_hidden_state": {0: "b", 1: "s"}}
    torch.onnx.export(model, (ids, mask, types), fp32_path,
                      input_names=["input_ids", "attention_mask", "token_type_ids"],
                      output_names=["last_hidden_state"], dynamic_axes=dynamic, opset_version=17)
    path = fp32_path
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        path = os.path.join(work, "model-int8.onnx")
        quantize_dynamic(fp32_path, path, weight_type=QuantType.QInt8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def embed(batches):
        out = []
        for b in batches:
            enc = tokenizer.encode_batch(b)
            feed = {
                "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64),
            }
            hidden = session.run(None, feed)[0]
            m = feed["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
            out.append(pooled / np.linalg.norm(pooled, axis=1, keepdims=True))
        return out

    return embed


def main():
    a = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    import numpy as np
    import torch
    from tokenizers import Tokenizer

    torch.set_num_threads(a.threads)
    tokenizer = Tokenizer.from_file(os.path.join(a.model_dir, "tokenizer.json"))
    tokenizer.enable_truncation(max_length=MAX_TOKENS)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    texts = load_texts(a.texts)
    batches, counts = batches_by_length(texts, tokenizer, a.batch)
    wanted = ["st", "st-bf16", "ort", "ort-int8"] if a.runtime == "all" else [a.runtime]
    # Reduced precision is judged against fp32 sentence-transformers: always run that first.
    runs = ["st"] + [r for r in wanted if r != "st"] if any(r != "st" for r in wanted) else ["st"]
    reference = None
    for name in runs:
        if name == "st":
            embed = sentence_transformers_runtime(a.model_dir, bf16=False)
        elif name == "st-bf16":
            embed = sentence_transformers_runtime(a.model_dir, bf16=True)
        else:
            embed = onnx_runtime(a.model_dir, tokenizer, a.threads, int8=(name == "ort-int8"))
        median, rates, vectors = measure(embed, batches, a.repeat)
        line = {"impl": name, "texts": len(texts), "threads": a.threads, "batch": a.batch,
                "median_texts_per_s": round(median, 2), "runs": [round(r, 2) for r in rates],
                "mean_tokens": round(sum(counts) / len(counts), 1)}
        if name == "st":
            reference = vectors
        else:
            line["min_cos"] = round(float(np.min(np.sum(vectors * reference, axis=1))), 5)
        if name in wanted:
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    sys.exit(main())
