"""`sketchlab demo`: the pretrained zoo at work, on a CPU, in under a minute, with no data.

It writes, under `--out` (default demo_out/):
  inputs.png            the sketches the conditional models are shown: sketch-rnn-spg5's samples
                        that the judge recognises most surely, two per category (no data needed)
  samples_<model>.png   new sketches from each model that samples (captioned: model, temperature,
                        the category or prior component when the model knows it)
  reconstructions.png   each input (top row) redrawn by every conditional model (one row each)
  healing.png           per healing model: the corrupted input, then the healed result
  components.png        RPCL-pix2seq(H): samples from each live prior component
  interpolation.png     a walk through RPCL-pix2seq's latent space between two inputs
  completion.png        sketch-rnn-sheep completing three partial sheep (each partial first)
  drawing.gif           sketches being drawn, point by point
  zoo.md, zoo.json      the zoo's metrics, from each entry's card
Entries that are not installed are skipped with a note. `sketchlab demo --train` trains a small
model from scratch on the built-in doodles instead (minutes on a CPU).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from sketchlab import api, runs, zoo
from sketchlab.cli.demo_train import DEMO_MODELS, run_training_demo
from sketchlab.data.sketches import Sketches
from sketchlab.data.synthetic import PARTIAL_SHEEP, partial_sheep
from sketchlab.fileio import atomic_write_json, atomic_write_text
from sketchlab.render import save_grid
from sketchlab.render.animation import save_drawing_gif
from sketchlab.render.png import render_strip, save_png

SKETCHER = "sketch-rnn-spg5"        # draws the inputs
JUDGE = "judge-spg5"                # picks the inputs it recognises most surely
SAMPLERS = ("sketch-rnn-spg5", "rpcl-pix2seq-spg5", "rpcl-pix2seqh-spg5", "sketchknitter-spg5",
            "sketch-rnn-sheep")
REDRAWERS = ("sketch-rnn-spg5", "rpcl-pix2seq-spg5", "rpcl-pix2seqh-spg5", "sp-gra2seq-spg5",
             "sketchgloc-spg5")
HEALERS = {"sp-gra2seq-spg5": (0.3, "30 % masked"),        # captions fit a 112-pixel cell
           "sketchgloc-spg5": (0.3, "strokes moved"),
           "sketchknitter-spg5": (0.3, "noised to 0.3 T")}
SHEEP = "sketch-rnn-sheep"
PER_CATEGORY = 2
KNITTER_DDIM = {"sampler": "ddim", "steps": 30, "spacing": "even"}   # DDIM-30, deterministic


class Demo:
    def __init__(self, out: Path, seed: int, log=print):
        self.out, self.seed, self.log = out, seed, log
        self.installed = set(zoo.names())
        self.models: dict[str, api.Model] = {}
        self.written: list[str] = []

    def model(self, name: str) -> api.Model | None:
        if name not in self.installed:
            self.log(f"note: {name} is not installed; skipped")
            return None
        if name not in self.models:
            self.models[name] = api.load(name, device="cpu")
        return self.models[name]

    def wrote(self, name: str) -> None:
        self.written.append(name)
        self.log(f"wrote {self.out / name}")

    # ---- the inputs ----------------------------------------------------------------------
    def inputs(self) -> Sketches | None:
        sketcher = self.model(SKETCHER)
        if sketcher is None:
            return None
        pool = sketcher.sample(60, temperature=0.2, seed=self.seed)
        limits = [self.models[n].max_points() for n in REDRAWERS + tuple(HEALERS)
                  if self.model(n) is not None]
        longest = min([x for x in limits if isinstance(x, int)], default=10 ** 9)
        pool = pool.select(np.nonzero((pool.lengths >= 5) & (pool.lengths <= longest))[0])
        if JUDGE in self.installed:
            judge = runs.load_judge(JUDGE, device="cpu")
            _, logits = judge.extract(pool)
            prob = torch.softmax(torch.from_numpy(logits), 1).numpy()
            cats, keep = list(judge.categories), []
            for k in range(len(cats)):
                order = np.argsort(-prob[:, k])
                keep += [int(i) for i in order if prob[i].argmax() == k][:PER_CATEGORY]
            chosen = pool.select(np.array(keep, np.int64))
            chosen.category = prob[keep].argmax(1).astype(np.int64)
            chosen.category_names = tuple(cats)
        else:
            chosen = pool.select(np.arange(min(len(pool), 5 * PER_CATEGORY)))
        save_grid(chosen, self.out / "inputs.png", cols=len(chosen),
                  titles=[self.label(chosen, i) for i in range(len(chosen))])
        self.wrote("inputs.png")
        return chosen

    @staticmethod
    def label(sk: Sketches, i: int, prefix: str = "") -> str:
        name = sk.category_name(i)
        return f"{prefix}{name}" if name else prefix.rstrip(": ") or f"#{i}"

    # ---- the figures ---------------------------------------------------------------------
    def samples(self) -> list[Sketches]:
        drawn = []
        for name in SAMPLERS:
            m = self.model(name)
            if m is None:
                continue
            # the entry's own default temperature (sketch-rnn-sheep's config: 0.5); SketchKnitter
            # has none to show (its noise scale stays 1), so its captions name the sampler
            t = m.options.temperature
            if t is None and m.name != "sketchknitter":
                t = getattr(m.config, "temperature", None) or 0.25
            opts = KNITTER_DDIM if m.name == "sketchknitter" else {}
            sk = m.sample(10, temperature=t, seed=self.seed, **opts)
            tag = f"T={t:g}" if t is not None else "DDIM-30"
            titles = [self.label(sk, i, f"{tag} ") if sk.category_names
                      else (f"{tag} k={sk.component[i]}" if sk.component is not None else tag)
                      for i in range(len(sk))]
            # A sequence model may end a sketch at its first step: say so, not an empty cell.
            titles = [f"{title} (empty)" if len(sk[i]) == 0 else title
                      for i, title in enumerate(titles)]
            file = f"samples_{name}.png"
            save_grid(sk, self.out / file, cols=5, titles=titles)
            self.wrote(file)
            drawn.append(sk)
        return drawn

    def reconstructions(self, inputs: Sketches) -> None:
        rows = [list(inputs)]
        titles = [[self.label(inputs, i, "input: ") for i in range(len(inputs))]]
        for name in REDRAWERS:
            m = self.model(name)
            if m is None or "can_encode" not in m.capabilities:
                continue
            out = m.reconstruct(inputs, seed=self.seed)
            rows.append(list(out))
            comp = out.component
            titles.append([name.rsplit("-spg5", 1)[0] + (f" k={comp[i]}" if comp is not None else "")
                           for i in range(len(out))])
        if len(rows) > 1:
            self.grid(rows, titles, "reconstructions.png")

    def healing(self, inputs: Sketches) -> None:
        rows = [list(inputs)]
        titles = [[self.label(inputs, i, "input: ") for i in range(len(inputs))]]
        for name, (strength, what) in HEALERS.items():
            m = self.model(name)
            if m is None:
                continue
            opts = KNITTER_DDIM if m.name == "sketchknitter" else {}
            corrupted = m.corrupt(inputs, strength, seed=self.seed)
            healed = m.heal(inputs, strength, seed=self.seed, **opts)
            short = name.rsplit("-spg5", 1)[0].replace("sketchknitter", "knitter")
            rows += [list(corrupted), list(healed)]
            titles += [[what] * len(inputs), [f"{short} healed"] * len(inputs)]
        if len(rows) > 1:
            self.grid(rows, titles, "healing.png")

    def components(self) -> None:
        rows, titles = [], []
        for name in ("rpcl-pix2seq-spg5", "rpcl-pix2seqh-spg5"):
            m = self.model(name)
            if m is None:
                continue
            weights = m.module.prior_weights().detach().cpu().numpy()
            alive = np.nonzero(weights > m.config.alive_threshold)[0]
            short = "rpcl-H" if name.startswith("rpcl-pix2seqh") else "rpcl"
            for k in alive:
                sk = m.sample(6, component=int(k), seed=self.seed, temperature=0.25)
                rows.append(list(sk))
                titles.append([f"{short} k={k}, w={weights[k]:.2f}"] * len(sk))
        if rows:
            self.grid(rows, titles, "components.png")

    def interpolation(self, inputs: Sketches) -> None:
        m = self.model("rpcl-pix2seq-spg5")
        if m is None or len(inputs) < 2:
            return
        a, b = 0, len(inputs) - 1
        walk = m.interpolate(inputs[a], inputs[b], steps=8, seed=self.seed)
        items = [inputs[a], *walk, inputs[b]]
        captions = [self.label(inputs, a), *[f"t={t:.2f}" for t in np.linspace(0, 1, 8)],
                    self.label(inputs, b)]
        save_png(render_strip(Sketches.from_list(items), captions=captions),
                 self.out / "interpolation.png")
        self.wrote("interpolation.png")

    def completion(self, inputs: Sketches | None) -> None:
        """Partial drawings continued three ways: three fixed partial sheep (a body; a body and
        a head; body, head and two legs) by sketch-rnn-sheep, or else the first strokes (about a
        third of the points) of the inputs by sketch-rnn-spg5."""
        m = self.model(SHEEP) if SHEEP in self.installed else None
        if m is not None:
            longest = m.max_points()       # half of it left for the completion
            prefix = partial_sheep(longest // 2) if isinstance(longest, int) else partial_sheep()
            names = list(PARTIAL_SHEEP)
        elif inputs is not None and self.model(SKETCHER) is not None:
            m = self.models[SKETCHER]
            whole = inputs.select(np.arange(0, len(inputs), PER_CATEGORY)[:5])   # one per category
            partial, names = [], []
            for i, s in enumerate(whole):
                if len(s) < 3:
                    continue
                lifts = np.nonzero(s[:, 2] > 0)[0]
                cut = next((int(j) + 1 for j in lifts if j + 1 >= 0.3 * len(s)), max(1, len(s) // 3))
                partial.append(s[:cut])
                names.append(whole.category_name(i) or "drawing")
            prefix = Sketches.from_list(partial)
        else:
            return
        done = m.complete(prefix, n=3, seed=self.seed)
        rows = [list(prefix)] + [[done[3 * i + j] for i in range(len(prefix))] for j in range(3)]
        titles = [[f"partial: {n}" for n in names]] + [[f"completion {j + 1}"] * len(prefix)
                                                       for j in range(3)]
        self.grid(rows, titles, "completion.png")

    def animation(self, inputs: Sketches | None, drawn: list[Sketches]) -> None:
        """The judge-picked sketch-rnn drawings (the inputs) drawn stroke by stroke; without
        them, the first samples of each model."""
        if inputs is not None and len(inputs):
            pool = inputs.in_units(1.0)
        elif drawn:
            pool = Sketches.concat([d.select(np.arange(min(4, len(d)))).in_units(1.0)
                                    for d in drawn])
        else:
            return
        save_drawing_gif(pool, self.out / "drawing.gif", frames=30, cols=min(5, len(pool)),
                         cell=112)
        self.wrote("drawing.gif")

    def table(self) -> None:
        cards = [zoo.read_card(n) for n in sorted(self.installed)]
        atomic_write_json(self.out / "zoo.json", {c["name"]: {k: c.get(k) for k in (
            "model", "data", "metrics", "steps", "cpu_minutes", "weights")} for c in cards})
        atomic_write_text(self.out / "zoo.md", zoo.markdown_table(sorted(self.installed)) +
                          "\n\\* wall-clock training minutes on 2 shared CPU cores\n")
        self.wrote("zoo.md")
        self.wrote("zoo.json")

    def grid(self, rows: list[list], titles: list[list[str]], file: str) -> None:
        cols = max(len(r) for r in rows)
        cells, caps = [], []
        for row, tit in zip(rows, titles):
            pad = cols - len(row)
            cells += list(row) + [np.zeros((0, 3), np.float32)] * pad
            caps += list(tit) + [""] * pad
        save_grid(Sketches.from_list(cells), self.out / file, cols=cols, titles=caps, cell=112)
        self.wrote(file)


def cmd_demo(args) -> int:
    if args.train:
        return run_training_demo(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # One thread: the demo's work is small sequential steps (batches of 6-60 sketches), where a
    # second thread gains little and, on a busy machine, loses badly (measured on 2 cores beside
    # three trainings: 11 s with one thread, 698 s with two spinning at each step's barrier).
    torch.set_num_threads(1)
    if not zoo.names():
        print("no pretrained models are installed: training a small one instead (--train)")
        return run_training_demo(args)
    t0 = time.time()
    demo = Demo(out, args.seed)
    inputs = demo.inputs()
    drawn = demo.samples()
    if inputs is not None:
        demo.reconstructions(inputs)
        demo.healing(inputs)
        demo.interpolation(inputs)
    demo.components()
    demo.completion(inputs)
    demo.animation(inputs, drawn)
    demo.table()
    print(f"sketchlab demo: {len(demo.written)} files in {out}/ in {time.time() - t0:.0f}s")
    return 0


def register_cli(sub) -> None:
    p = sub.add_parser("demo", help="the pretrained models at work (or --train: train one)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  sketchlab demo                                  "
                              "# the zoo, under a minute\n"
                              "  sketchlab demo --train --minutes 2              "
                              "# train sketch-rnn on built-in doodles\n"
                              "  sketchlab demo --train --model rpcl-pix2seq --minutes 3")
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the samples (and, with --train, of the doodles and weights)")
    p.add_argument("--train", action="store_true",
                   help="train a small model on the built-in doodles instead (minutes)")
    t = p.add_argument_group("--train options")
    t.add_argument("--model", default="sketch-rnn", choices=DEMO_MODELS,
                   help=f"which model to train (default sketch-rnn): {', '.join(DEMO_MODELS)}")
    t.add_argument("--minutes", type=float, default=2.0, help="training time budget (default 2)")
    t.add_argument("--per-category", type=int, default=600, help="training doodles per category")
    t.add_argument("--hparams", default=None, help="overrides of the demo configuration, k=v,...")
    t.add_argument("--device", default=None, help="default: cpu (the demo is sized for it)")
    p.set_defaults(func=cmd_demo)
