"""`sketchlab serve`: the studio, a local web app to draw with the models in a browser."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

from sketchlab.errors import ConfigError

EPILOG = """examples:
  sketchlab serve                                     # every pretrained model, http://127.0.0.1:8000
  sketchlab serve --models runs/sheep,sketch-rnn-spg5 --port 8080
  curl -s localhost:8000/api/models

Binds to 127.0.0.1 unless --host says otherwise: the studio has no accounts or passwords.
"""


def register_cli(sub) -> None:
    p = sub.add_parser("serve", help="the studio: draw with the models in a browser",
                       description="Serve the studio: a web page (and its JSON API) where you "
                                   "draw, and the models complete, redraw, heal, sample and "
                                   "interpolate your drawings.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", action="append", default=None, metavar="NAMES|RUN_DIRS",
                   help="comma-separated pretrained names and/or run directories (repeatable; "
                        "default: every pretrained model)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--workers", type=int, default=2,
                   help="model calls that run at once (default 2)")
    p.add_argument("--queue", type=int, default=8,
                   help="model calls that may wait for a worker; more are answered 429 (default 8)")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    p.set_defaults(func=cmd_serve)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def cmd_serve(args) -> int:
    # FastAPI and uvicorn are the optional `studio` extra: imported here so every other command
    # runs without them.
    try:
        import uvicorn
        from sketchlab import studio
    except ImportError as e:
        raise ConfigError(f"the studio needs its extra: pip install 'sketchlab[studio]' ({e})") from e
    import torch  # the thread count below; torch is loaded by the models anyway

    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port}: choose 1..65535")
    if args.workers < 1 or args.queue < 0:
        raise ConfigError(f"--workers {args.workers} / --queue {args.queue}: need >= 1 / >= 0")
    specs = None
    if args.models:
        specs = [s.strip() for item in args.models for s in item.split(",") if s.strip()]
        if not specs:
            raise ConfigError("--models: name at least one pretrained model or run directory")
    models = studio.load_models(specs, device=args.device)
    # Each worker thread gets its share of the cores: torch's own threads on top of ours would
    # oversubscribe a small machine.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.workers))
    # The event loop shares the GIL with the model threads (sampling loops are Python-heavy);
    # a short switch interval gives it the GIL back sooner after each of its socket calls, so
    # the page and the 429s are answered while models run.
    sys.setswitchinterval(0.0005)
    hosts = ("*",) if not _is_loopback(args.host) else \
        ("localhost", "127.0.0.1", "[::1]", "::1", args.host)
    settings = studio.StudioSettings(workers=args.workers, queue=args.queue, allowed_hosts=hosts)
    app = studio.create_app(studio.Studio(models, settings))
    if not _is_loopback(args.host):
        print(f"warning: --host {args.host} makes the studio reachable from other machines; it "
              f"has no authentication", file=sys.stderr)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"sketchlab studio: http://{shown}:{args.port}/  ({len(models)} models; Ctrl-C stops)",
          flush=True)
    # limit_concurrency bounds open connections (beyond it uvicorn answers 503 at once); the
    # studio's own gate answers 429 long before that for model calls. Idle connections are kept
    # 30 s: a shorter keep-alive raced clients that reuse a connection just as it is closed
    # ("server disconnected without a response" in the load check on a busy machine).
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                timeout_keep_alive=30, limit_concurrency=1000)
    return 0
