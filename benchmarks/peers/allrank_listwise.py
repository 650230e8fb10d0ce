r"""PyTorch peer of the listwise training benchmark: allRank's transformer ranker
(Pobrotyn et al., 2020) trained with its ListNet loss, on a CUDA GPU.

  python benchmarks/peers/allrank_listwise.py --batch=64 --list_size=240 --features=136

The model is allRank's own (`allrank.models.model.make_model`, its README's Web30K
shape: a 144-wide input layer, 2 transformer blocks with 4 heads and a 384-wide
feed-forward layer, dropout 0.1) when the `allRank` wheel is importable; its ListNet loss
is written out below because importing `allrank.models.losses` pulls in torchvision.
Without allRank, `torch.nn.TransformerEncoder` of the same shape stands in (reported as
such). One training step = forward, loss, backward, Adam update; timed in float32 (allRank's
default) and with bf16 autocast, eager and `torch.compile`, on random features and graded
labels with padded lists (a quarter of the slots empty); steps run back to back as in a
training loop, the GPU synchronised once per `--block` steps. Prints one JSON list of rows.
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

PADDED = -1.0


def listnet(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """allRank's `listNet`: softmax cross-entropy between label and score distributions,
    padded slots (label -1) excluded."""
    pad = labels == PADDED
    scores = scores.masked_fill(pad, float("-inf"))
    target = F.softmax(labels.masked_fill(pad, float("-inf")), dim=1)
    return torch.mean(-torch.sum(target * torch.log(F.softmax(scores, dim=1) + 1e-10), dim=1))


def allrank_model(features: int):
    from allrank.config import TransformerConfig
    from allrank.models.model import make_model

    fc = dict(sizes=[144], input_norm=False, activation=None, dropout=0.0)
    transformer = TransformerConfig(N=2, d_ff=384, h=4, positional_encoding=None, dropout=0.1)
    post = dict(d_output=1, output_activation=None)
    model = make_model(fc, transformer, post, features)
    return model, lambda x, mask: model(x, mask, torch.zeros_like(mask, dtype=torch.long))


def torch_model(features: int):
    layer = torch.nn.TransformerEncoderLayer(144, 4, 384, 0.1, batch_first=True, norm_first=True)
    model = torch.nn.ModuleDict(
        dict(
            inp=torch.nn.Linear(features, 144),
            enc=torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False),
            out=torch.nn.Linear(144, 1),
        )
    )
    return model, lambda x, mask: model["out"](
        model["enc"](model["inp"](x), src_key_padding_mask=mask)
    ).squeeze(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--list_size", type=int, default=240)
    parser.add_argument("--features", type=int, default=136)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--block", type=int, default=10, help="steps per synchronisation")
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.list_size, args.features, device="cuda")
    labels = torch.randint(0, 5, (args.batch, args.list_size), device="cuda").float()
    mask = torch.rand(args.batch, args.list_size, device="cuda") < 0.25  # True: padding
    mask[:, 0] = False
    labels = labels.masked_fill(mask, PADDED)
    rows = []
    try:
        build, name = allrank_model, "allRank"
        build(args.features)
    except ImportError:
        build, name = torch_model, "torch.nn.TransformerEncoder (allRank not installed)"
    for precision in ("float32", "bf16 autocast"):
        for compiled in (False, True):
            model, forward = build(args.features)
            model.cuda().train()
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            fwd = torch.compile(forward) if compiled else forward

            def step(fwd=fwd, opt=opt, half=precision != "float32"):
                opt.zero_grad(set_to_none=True)
                with torch.autocast("cuda", torch.bfloat16, enabled=half):
                    loss = listnet(fwd(x, mask).float(), labels)
                loss.backward()
                opt.step()

            for _ in range(3):
                step()
            torch.cuda.synchronize()
            times = []
            for _ in range(args.repeats):  # back-to-back steps, one wait per block
                t0 = time.perf_counter()
                for _ in range(args.block):
                    step()
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            seconds = statistics.median(times) / args.block
            rows.append(
                {
                    "variant": f"{name} {precision} {'torch.compile' if compiled else 'eager'}",
                    "lists_per_sec": args.batch / seconds,
                    "step_ms": 1e3 * seconds,
                    "torch": torch.__version__,
                }
            )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
