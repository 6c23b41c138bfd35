"""Can a critic read the value of the action format off SmolLM2's own features? A probe of the
pretrained run's failure (results/pretrained_probe/: its critic did not separate well-formed turns
from malformed ones after 150 updates of 16 turns).

The base model's hidden states (LoRA at its zero init, so exactly the base model) at every generated
token of the committed base-model dataset are computed once; then critic heads of the learner's shape
(`Linear(hidden, vocab)`, read at the taken token, and a value head) are fit to each turn's Monte-Carlo
return (discounted by gamma; a truncated episode's tail counts 0), many passes over the same
features. The held-out turns' first-token advantage Q(s, a) - V(s) is what AFSFT weighs the format
by: a well-formed turn earns 0 where a malformed one earns -1, so the gap should approach one reward.

All well-formed turns are used and `--ratio` times as many malformed ones (the data has 2% well-formed,
so this oversamples them: the probe asks whether the features carry the signal, not how many samples
the learner needs to find it). Turns are split into fit and held-out by episode.

    .venv/bin/python benchmarks/critic_features.py --model runs/smollm2

Writes benchmarks/results/critic_features_gamma<g>.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import torch  # noqa: E402
from numberline_offline import load_turns  # noqa: E402

from learner.batch import build_batch  # noqa: E402
from learner.losses import advantage_unit  # noqa: E402
from learner.trainer import Learner  # noqa: E402
from vlmq.config import load_config  # noqa: E402

log = logging.getLogger("critic_features")
DATA = REPO / "benchmarks" / "results" / "pretrained_data" / "smollm2-numberline-nodemo"
OUT = REPO / "benchmarks" / "results" / "critic_features.json"


def returns(turns: list, gamma: float) -> dict[tuple[str, int], float]:
    """G_t = r_t + gamma G_{t+1} within each episode."""
    by_ep: dict[str, list] = {}
    for t in turns:
        by_ep.setdefault(t.episode_id, []).append(t)
    out = {}
    for ep in by_ep.values():
        g = 0.0
        for t in sorted(ep, key=lambda t: -t.turn_index):
            g = t.reward + gamma * g * (not t.terminated)
            out[(t.episode_id, t.turn_index)] = g
    return out


def first_tokens(turns: list, tokenizer, top: int = 8) -> dict:
    """How much the first generated token says about the format: per group its most common first
    tokens, and for each, the share of the turns starting with it that are well-formed."""
    import collections

    first = [(tokenizer.decode(t.gen_ids[:1]), t.syntax_ok) for t in turns]
    count = collections.Counter(first)
    out = {}
    for ok, name in ((True, "well_formed"), (False, "malformed")):
        n = sum(v for (_, o), v in count.items() if o == ok)
        out[name] = {
            tok: {"share": round(count[(tok, ok)] / n, 3),
                  "p_well_formed": round(count[(tok, True)] / (count[(tok, True)] + count[(tok, False)]), 3)}
            for tok, _ in collections.Counter(t for t, o in first if o == ok).most_common(top)
        }  # fmt: skip
        out[name]["turns"] = n
    return out


@torch.no_grad()
def features(learner: Learner, turns: list, batch: int) -> list[torch.Tensor]:
    """Per turn: the final hidden states at the positions that predict its generated tokens, (K, H)."""
    learner.model.eval()
    out = []
    for i in range(0, len(turns), batch):
        b = build_batch(turns[i : i + batch], learner.processor, learner.cfg)
        s = b.seqs
        h = learner.model.hidden_states(s.input_ids, s.attention_mask, s.images)
        h = h.gather(1, b.positions[..., None].expand(-1, -1, h.shape[-1]))
        for row in range(h.shape[0]):
            out.append(h[row, : int(b.mask[row].sum())].float().clone())
        log.info("features: %d / %d turns", len(out), len(turns))
    return out


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(REPO / "runs" / "smollm2"))
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--ratio", type=int, default=3, help="malformed turns per well-formed one")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 1e-2])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--first-tokens", action="store_true", help="only the first-token table (no features)")
    ap.add_argument(
        "--gamma",
        type=float,
        default=None,
        help="the returns' discount (default: the config's; 0: the turn's reward)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(REPO / "configs" / "smollm2_numberline.yaml", [f"model.path={args.model}"])
    turns = load_turns(args.data)
    if args.first_tokens:  # the tokenizer is all it needs
        from transformers import AutoTokenizer

        table = first_tokens(turns, AutoTokenizer.from_pretrained(args.model))
        OUT.with_name(f"{OUT.stem}_first_tokens.json").write_text(json.dumps(table, indent=1) + "\n")
        print(json.dumps(table, indent=1))
        return
    learner = Learner(cfg.model, cfg.learner)
    tok = learner.processor.tokenizer if hasattr(learner.processor, "tokenizer") else learner.processor
    unit = advantage_unit(cfg.learner)
    gamma = cfg.learner.gamma if args.gamma is None else args.gamma
    g = returns(turns, gamma)
    good = [t for t in turns if t.syntax_ok]
    bad = random.Random(0).sample([t for t in turns if not t.syntax_ok], args.ratio * len(good))
    chosen = good + bad
    t0 = time.time()
    feats = features(learner, chosen, batch=8)
    feature_s = time.time() - t0
    held = [int(hashlib.sha256(t.episode_id.encode()).hexdigest(), 16) % 4 == 0 for t in chosen]
    gen = [torch.tensor(list(t.gen_ids)) for t in chosen]

    def stack(rows):
        return (
            torch.cat([feats[i] for i in rows]),
            torch.cat([gen[i] for i in rows]),
            torch.cat(
                [torch.full((len(gen[i]),), g[(chosen[i].episode_id, chosen[i].turn_index)]) for i in rows]
            ),
        )

    fit_rows = [i for i in range(len(chosen)) if not held[i]]
    test_rows = [i for i in range(len(chosen)) if held[i]]
    h_fit, a_fit, y_fit = stack(fit_rows)
    hidden, vocab = h_fit.shape[1], len(tok)
    report: dict = {
        "setup": {
            "model": Path(args.model).name, "turns": len(chosen), "well_formed": len(good), "ratio": args.ratio,
            "fit_turns": len(fit_rows), "held_out_turns": len(test_rows), "fit_tokens": int(h_fit.shape[0]),
            "gamma": gamma, "advantage_unit": unit, "feature_s": round(feature_s, 1),
        },
        "runs": {},
    }  # fmt: skip
    for lr in args.lrs:
        torch.manual_seed(0)
        w = torch.nn.Parameter(torch.randn(vocab, hidden) * 0.02 / hidden**0.5)
        b = torch.nn.Parameter(torch.zeros(vocab))
        vw = torch.nn.Parameter(torch.randn(hidden) * 0.02 / hidden**0.5)
        vb = torch.nn.Parameter(torch.zeros(()))
        opt = torch.optim.Adam([w, b, vw, vb], lr=lr)
        curve = []
        for epoch in range(1, args.epochs + 1):
            perm = torch.randperm(h_fit.shape[0])
            for j in range(0, len(perm), 2048):
                idx = perm[j : j + 2048]
                h, a, y = h_fit[idx], a_fit[idx], y_fit[idx]
                q = (h * w[a]).sum(-1) + b[a]
                v = h @ vw + vb
                loss = (((q - y) / unit) ** 2).mean() + (((y - v) / unit) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            if epoch in (1, 2, 5, 10, 20, 40) or epoch == args.epochs:
                curve.append(
                    {
                        "epoch": epoch,
                        "fit_loss": float(loss.detach()),
                        **held_out(chosen, feats, gen, g, test_rows, w, b, vw, vb),
                    }
                )
                log.info("lr %g epoch %d: %s", lr, epoch, curve[-1])
        report["runs"][str(lr)] = curve
    out = OUT.with_name(f"{OUT.stem}_gamma{gamma:g}.json")
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


@torch.no_grad()
def held_out(chosen, feats, gen, g, rows, w, b, vw, vb) -> dict:
    """First-token advantage and Q per group on the held-out turns, and how often a well-formed turn's
    first-token advantage is above a malformed one's (AUC; 0.5 is no separation)."""
    adv = {True: [], False: []}
    q_all = {True: [], False: []}
    err = []
    for i in rows:
        h, a = feats[i], gen[i]
        q = (h * w[a]).sum(-1) + b[a]
        v = h @ vw + vb
        adv[chosen[i].syntax_ok].append(float(q[0] - v[0]))
        q_all[chosen[i].syntax_ok].append(float(q.mean()))
        err.append(float((q - g[(chosen[i].episode_id, chosen[i].turn_index)]).abs().mean()))
    pairs = [(x > y) + 0.5 * (x == y) for x in adv[True] for y in adv[False]]
    mean = lambda xs: sum(xs) / max(1, len(xs))  # noqa: E731
    return {
        "first_adv_well_formed": mean(adv[True]), "first_adv_malformed": mean(adv[False]),
        "q_well_formed": mean(q_all[True]), "q_malformed": mean(q_all[False]),
        "first_adv_auc": mean(pairs), "q_abs_error": mean(err),
    }  # fmt: skip


if __name__ == "__main__":
    main()
