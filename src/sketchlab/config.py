"""Configuration: the training hyperparameters every model shares, and the originals' `--hparams` syntax.

Each model's `Config` is a flat dataclass (like the originals' `HParams`) that inherits the
training fields below and adds its own, with the paper's defaults. A flat config keeps the seeds'
command lines working unchanged: `--hparams "categories=[bee,bus],dec_model=hyper"`.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import io
import math
import tokenize
import typing
from dataclasses import dataclass
from typing import Any

from sketchlab.errors import ConfigError


@dataclass
class TrainingConfig:
    """Training-loop hyperparameters read by `sketchlab.train.trainer` (paper defaults per model)."""

    batch_size: int = 100            # sketches per training step
    learning_rate: float = 1e-3      # initial learning rate (decays by decay_rate, see below)
    # lr(step) = (learning_rate - min_learning_rate) * decay_rate ** (step / lr_decay_every) + min
    decay_rate: float = 0.9999       # learning-rate decay per lr_decay_every steps (1: constant)
    min_learning_rate: float = 1e-5  # the floor the learning rate decays toward
    lr_decay_every: float = 1.0      # steps per decay_rate factor
    optimizer: str = "adam"          # "adam" | "adamw"
    adam_beta1: float = 0.9          # Adam's first-moment decay
    adam_beta2: float = 0.999        # Adam's second-moment decay
    adam_eps: float = 1e-8           # Adam's epsilon
    weight_decay: float = 0.0        # L2 penalty (adam) or decoupled decay (adamw)
    grad_clip: float = 1.0           # the gradient clip threshold (how: clip_mode)
    # "value": clip every gradient element to +-grad_clip (magenta sketch-rnn, RPCL seeds);
    # "norm": rescale each parameter's gradient to norm <= grad_clip (SP-gra2seq, SketchGloc);
    # "global_norm": torch's clip_grad_norm_ over all parameters; "none".
    clip_mode: str = "value"         # how grad_clip applies: value | norm | global_norm | none
    eval_every: int = 0              # evaluate every N steps; 0 = at the end of every epoch
    patience: int = 5                # stop after this many evaluations without improvement; 0 = never
    reload_best: bool = False        # rewind to the best checkpoint after a non-improving evaluation
    rewind_optimizer: bool = True    # reload_best rewinds the optimizer moments too (RPCL); False
                                     # keeps the current ones, as SP-gra2seq's train.py does (its
                                     # rollback's `load_checkpoint` does not restore Adam's slots)
    patience_start: int = 0          # evaluations before this step never count against patience
    valid_metric: str = "recon"      # which loss term (eval mode) selects the best checkpoint
    max_valid_batches: int = 0       # 0 = the whole validation split
    checkpoint_every: int = 500      # steps between resumable checkpoints (also at every evaluation)
    amp: bool = True                 # bf16 autocast on CUDA where the model allows it
    cuda_graph: bool = True          # replay whole training steps from CUDA graphs where allowed
    seed: int = 0                    # seeds the data order, initial weights and augmentations
    max_steps: int = 0               # stop after this many steps; 0 = until early stopping

    def __post_init__(self):
        # Every model's Config inherits this: a config is checked whenever it is built (defaults,
        # --hparams, config.json, dataclasses.replace), before anything runs.
        check_values(self)


# Range rules by field name, for every model's config (a name not listed: ints >= 0, floats
# finite). A negative batch size used to loop forever and a zero one to divide by zero.
_AT_LEAST_ONE = ("batch_size", "z_size", "png_width", "graph_number", "graph_picture_size",
                 "model_channels", "lift_dim", "diffusion_steps", "image_phase_every",
                 "rpcl_every", "num_points", "num_heads", "num_res_blocks", "num_mixture",
                 "num_sub", "num_layer_i", "num_layer_j", "hyper_num_units",
                 "hyper_embedding_size", "recognizer_hidden", "recognizer_layers")
_DATA_SIZED = ("max_seq_len", "max_stroke_len", "max_stroke_num")     # -1: from the data
_UNIT_INTERVAL = ("decay_rate", "kl_decay_rate", "ema_rate", "dropout", "adam_beta1",
                  "adam_beta2", "centroid_decay", "png_scale_ratio", "mask_prob",
                  "augment_prob", "augment_stroke_prob")
_POSITIVE_FLOAT = ("learning_rate", "lr_decay_every", "temperature", "adam_eps")


def _rule(name: str):
    """(lower bound, upper bound, what) for field `name`."""
    if name in _AT_LEAST_ONE or name.endswith("_rnn_size"):
        return 1, None, "an integer >= 1"
    if name in _DATA_SIZED:
        return -1, None, "an integer >= 1, or -1 (taken from the data)"
    if name in _UNIT_INTERVAL or name.endswith("_prob"):
        return 0.0, 1.0, "a number in [0, 1]"
    if name in _POSITIVE_FLOAT:
        return None, None, "a number > 0"
    return 0, None, "a number >= 0"


def check_values(cfg) -> None:
    """Refuse a config value out of its range (NaN, inf, negative sizes, zero batch, ...) with
    a message naming the field; tuples of sizes are checked element by element."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        values = value if isinstance(value, (tuple, list)) else (value,)
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            lo, hi, what = _rule(f.name)
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{f.name}={v}: must be {what}, not NaN or infinite")
            if f.name in _POSITIVE_FLOAT:
                ok = v > 0
            elif isinstance(value, (tuple, list)):
                ok = v >= 1
                what = "a list of integers >= 1"
            else:
                ok = (lo is None or v >= lo) and (hi is None or v <= hi)
            if f.name in _DATA_SIZED and v == 0:
                ok = False
            if not ok:
                raise ConfigError(f"{f.name}={value!r}: must be {what}")


def field_help(cfg_cls) -> dict[str, str]:
    """One line of meaning for every field of a config dataclass, read from the comments in its
    class body: the comment on the field's line, continued by comment-only lines indented under
    it. A subclass that overrides a default keeps its base class's meaning and adds its own
    comment in parentheses (a model's note on why its default differs). Fields without any
    comment map to "" (the tests require one for every model's Config)."""
    out: dict[str, str] = {}
    for klass in type.mro(cfg_cls)[::-1]:
        if not dataclasses.is_dataclass(klass):
            continue
        for name, text in _class_comments(klass).items():
            base = out.get(name, "")
            out[name] = f"{base} ({text})" if base and text and text != base else (base or text)
    return {f.name: out.get(f.name, "") for f in dataclasses.fields(cfg_cls)}


def _class_comments(klass) -> dict[str, str]:
    """{field: comment} for the annotated names of one class body (see `field_help`)."""
    try:
        source = inspect.getsource(klass)
    except (OSError, TypeError):
        return {}
    found: dict[str, str] = {}
    body_col = None
    current, current_col = None, None     # the field whose comment may continue below it
    line_tokens: list[tokenize.TokenInfo] = []
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):
        return {}
    for tok in tokens:
        if tok.type in (tokenize.NEWLINE, tokenize.NL):
            code = [t for t in line_tokens if t.type not in (tokenize.COMMENT, tokenize.INDENT,
                                                               tokenize.DEDENT)]
            comments = [t for t in line_tokens if t.type == tokenize.COMMENT]
            text = " ".join(c.string.lstrip("#").strip() for c in comments)
            if (len(code) >= 2 and code[0].type == tokenize.NAME and code[1].string == ":"
                    and code[0].start[1] > 0):
                col = code[0].start[1]
                body_col = col if body_col is None else body_col
                if col == body_col:
                    found[code[0].string] = text
                    current, current_col = code[0].string, comments[0].start[1] if comments else None
                else:
                    current = None
            elif not code and comments and current is not None and current_col is not None \
                    and comments[0].start[1] >= current_col - 2 and found.get(current):
                found[current] += " " + text            # a comment continued on the next line
            else:
                current = None
            line_tokens = []
        else:
            line_tokens.append(tok)
    return found


def config_fields(cfg_cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cfg_cls)}


def to_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(cfg_cls, values: dict[str, Any], *, where: str = "config") -> Any:
    """Build `cfg_cls` from a dict, refusing unknown keys (a config of another model, a typo)."""
    known = config_fields(cfg_cls)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown hyperparameter(s) {unknown} for {cfg_cls.__qualname__}; "
                          f"known: {sorted(known)}")
    hints = typing.get_type_hints(cfg_cls)
    try:
        return cfg_cls(**{k: _coerce(v, hints[k], k, where) for k, v in values.items()})
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def split_hparams(text: str) -> list[tuple[str, str]]:
    """Split `k=v,k=[x,y],k2=v2` into (name, value) pairs at top-level commas."""
    pairs = []
    for item in split_top(text, where=f"--hparams {text!r}"):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            raise ConfigError(f"--hparams: {item!r} is not of the form name=value")
        k, v = item.split("=", 1)
        pairs.append((k.strip(), v.strip()))
    return pairs


def apply_hparams(cfg, text: str | None):
    """Return a copy of `cfg` with the `--hparams` overrides applied (types follow the dataclass)."""
    if not text:
        return cfg
    known = config_fields(type(cfg))
    hints = typing.get_type_hints(type(cfg))
    changes = {}
    for k, v in split_hparams(text):
        if k not in known:
            close = difflib.get_close_matches(k, list(known), n=3)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            raise ConfigError(f"--hparams: unknown hyperparameter {k!r}; {hint}`sketchlab train "
                              f"MODEL --list-hparams` lists every one with its default and meaning")
        changes[k] = _coerce(v, hints[k], k, "--hparams")
    try:
        return dataclasses.replace(cfg, **changes)
    except ConfigError as e:
        raise ConfigError(f"--hparams: {e}") from None


def _strip_quotes(s: str) -> str:
    s = s.strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"":
        return s[1:-1]
    return s


def _coerce(value: Any, hint, name: str, where: str):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
            return None
        # e.g. `int | str | None`: the first member type that takes the value wins.
        errors = []
        for member in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, member, name, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[-1])
    try:
        if origin in (list, tuple):
            if isinstance(value, str):
                inner = value.strip()
                if inner.startswith("[") or inner.startswith("("):
                    inner = inner[1:-1]
                parts = [p for p in (x.strip() for x in split_top(inner)) if p != ""]
            else:
                parts = list(value)
            elem = args[0] if args else str
            out = [_coerce(p, elem, name, where) for p in parts]
            return tuple(out) if origin is tuple else out
        if hint is bool:
            if isinstance(value, bool):
                return value
            s = _strip_quotes(str(value)).lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"not a boolean: {value!r}")
        if hint is int:
            if isinstance(value, bool):
                raise ValueError("boolean given for an integer")
            f = float(_strip_quotes(str(value)))
            if f != int(f):
                raise ValueError(f"not an integer: {value!r}")
            return int(f)
        if hint is float:
            return float(_strip_quotes(str(value)))
        if hint is str:
            return _strip_quotes(str(value))
    except (TypeError, ValueError, OverflowError) as e:   # OverflowError: an int of inf
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        raise ConfigError(f"{where}: {name}={shown}: {e}") from None
    return value


def split_top(text: str, where: str = "value") -> list[str]:
    """Split at commas that are not inside brackets or quotes."""
    out, depth, quote, cur = [], 0, None, []
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[({":
            depth += 1
        elif ch in "])}":
            depth -= 1
        if ch == "," and depth == 0 and not quote:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth != 0 or quote:
        raise ConfigError(f"{where}: unbalanced brackets or quotes")
    out.append("".join(cur))
    return out


__all__ = ["TrainingConfig", "apply_hparams", "check_values", "field_help", "from_dict", "to_dict",
           "split_hparams"]
