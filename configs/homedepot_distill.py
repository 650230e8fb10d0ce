r"""Distils the fine-tuned Home Depot cross-encoder (the teacher) into a smaller student.

Command (H200: about 1 min after the teacher's run; too slow for a 2-core CPU):

  python -m experiments.train \
      --config=configs/homedepot_distill.py:teacher=/tmp/rankjax/hd_cross \
      --workdir=/tmp/rankjax/hd_distill

The teacher is the workdir of `configs/homedepot_cross_encoder.py`, run with the same
`data_dir` and `fold`; its best parameters score every training pair once, and the
student learns from labels and teacher scores together (`distill` section,
`rankjax/compression/distillation.py`). Students (`student=`):

* `layers3` (default): a 3-layer cross-encoder started from teacher layers `layers`
  (default 0, 2, 4) and its head;
* `narrow`: a 3-layer, 192-wide cross-encoder trained by the teacher; its embedding
  tables start from the teacher's projected onto their top 192 principal directions
  (`embed_init=pca`, default) or fresh (`embed_init=random`), its layers fresh;
* `bi`: a MiniLM bi-encoder (shared tower, mean pooling, cosine), distilled from the
  cross-encoder: the model a retrieval stage can serve from precomputed product vectors.

Arguments: those of `homedepot_cross_encoder.py`, plus `teacher=PATH`, `student=...`,
`layers=024` (teacher layer digits), `kd=mse|listwise_kl|margin_mse`, `kd_weight=W`,
`embed_init=pca|random` (narrow student), `init=PATH` (a finished run that starts the
student in the teacher's place: a teacher of another tokenizer, such as the MPNet
cross-encoder (`checkpoint=all-mpnet-base-v2`), teaches a MiniLM student started from
the fine-tuned MiniLM's layers; the teacher then scores the training pairs from their
texts, tokenized its own way), `catalog=K` (default 0: for every training query the
teacher also scores K unlabelled products of the training catalog, those most similar to
the query by TF-IDF, and the student learns them from its scores alone; the training
steps then read twice the lists, so as many steps see each labelled list half as often).
Measured figures are in docs/results.md.
"""

import ml_collections

from rankjax import config_args

STUDENTS = ("layers3", "narrow", "bi")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    defaults = dict(
        teacher="/tmp/rankjax/hd_cross",
        student="layers3",
        layers="024",
        kd="mse",
        embed_init="pca",
        init="",
        catalog=0,
    )
    # Our arguments here; the others (data_dir, fold, ...) go to the teacher's config.
    mine, base_arg = config_args.split_arg(arg, set(defaults) | {"kd_weight", "runlocal"})
    own = config_args.parse_arg(mine, kd_weight=1.0, runlocal=False, **defaults)
    if own.runlocal:
        base_arg = ",".join(filter(None, [base_arg, "runlocal"]))
    try:
        c = config_args.base_config(__file__, "homedepot_cross_encoder", base_arg)
    except ValueError as e:
        raise ValueError(f"{e}; or this config's own: {sorted(own)}") from None
    if own.student not in STUDENTS:
        raise ValueError(f"config argument student={own.student!r}; valid: {list(STUDENTS)}")
    if own.embed_init not in ("pca", "random"):
        raise ValueError(f"config argument embed_init={own.embed_init!r}; valid: pca, random")
    narrow_pca = own.student == "narrow" and own.embed_init == "pca"
    layers = tuple(int(d) for d in own.layers)
    c.distill = dict(
        teacher=own.teacher,
        loss=own.kd,
        weight=own.kd_weight,
        temperature=1.0,
        init_from_teacher=own.student == "layers3" or narrow_pca,
        init_from=own.init,
        init_layers=layers if own.student == "layers3" else (),
        init_embeddings="pca" if narrow_pca else "",
        catalog_pairs=int(own.catalog),
    )
    if own.student == "layers3":
        c.model.num_layers = len(layers)
    elif own.student == "narrow":
        c.model.update(
            pretrained=False,
            num_layers=3,
            hidden_size=192,
            num_attention_heads=6,
            intermediate_size=768,
        )
        c.optim.learning_rate = 3e-4
    else:  # bi-encoder: the teacher reads pairs, the student separate texts
        c.data.text.encoding = "both"
        c.data.text.pad_multiple = 32  # query and product widths vary apart: fewer shapes
        c.data.bucket_batches = 16  # it reads padded texts: length-sorted runs pad less
        c.model = dict(
            name="bi_encoder",
            checkpoint=c.model.checkpoint,
            pretrained=True,
            num_layers=0,
            pooling="mean",
            shared=True,
            score="dot",
            dtype=c.model.dtype,
        )
    if own.runlocal:
        # The runlocal teacher is a 2-layer random BERT; students keep its shape.
        if own.student == "layers3":
            c.distill.init_layers = (0, 1)
            c.model.num_layers = 2
        if own.student == "narrow":
            c.model.update(
                num_layers=1, hidden_size=16, num_attention_heads=2, intermediate_size=32
            )
        if own.student == "bi":
            c.model.update(
                pretrained=False,
                num_layers=1,
                hidden_size=32,
                num_attention_heads=2,
                intermediate_size=64,
                dtype="float32",
            )
    return c
