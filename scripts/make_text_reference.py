r"""Computes the reference sentence embeddings that `tests/text_test.py` (all-MiniLM-L6-v2)
and `tests/mpnet_test.py` (all-mpnet-base-v2, `--out=tests/data/mpnet_reference.json`)
compare with.

Run once where PyTorch and sentence-transformers are installed (not a rankjax dependency):

  python scripts/make_text_reference.py --model_dir=PATH/TO/all-MiniLM-L6-v2 \
      --out=tests/data/minilm_reference.json

It embeds `SENTENCES` with sentence-transformers (mean pooling, L2-normalised) and writes
them with the library versions, so the test keeps a small array of expected values
instead of needing PyTorch.
"""

import json

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "A sentence-transformers model folder.")
flags.DEFINE_string("out", "tests/data/minilm_reference.json", "Output JSON file.")
flags.mark_flags_as_required(["model_dir"])

# Product-search texts: short queries, a title, a long description (truncation at 256
# word pieces), accents, digits and units, and an empty string.
SENTENCES = [
    "angle bracket",
    "deck over",
    "Simpson Strong-Tie 12-Gauge Angle",
    "Behr Premium Textured DeckOver is an innovative solid color coating. " * 30,
    "café crème 3/4 in. x 10 ft. copper pipe (2-Pack)",
    "",
]


def main(argv):
    del argv
    import sentence_transformers
    import torch

    model = sentence_transformers.SentenceTransformer(FLAGS.model_dir, device="cpu")
    with torch.no_grad():
        emb = model.encode(SENTENCES, normalize_embeddings=True, convert_to_numpy=True)
    out = {
        "sentences": SENTENCES,
        "max_seq_length": model.max_seq_length,
        "sentence_transformers": sentence_transformers.__version__,
        "torch": torch.__version__,
        "embeddings": [[round(float(v), 7) for v in row] for row in emb],
    }
    with open(FLAGS.out, "w") as f:
        json.dump(out, f)
    print(f"wrote {FLAGS.out}: {emb.shape}")


if __name__ == "__main__":
    app.run(main)
