"""The README's table of the pretrained zoo, from the installed entries' cards.

    python tools/zoo_table.py            # Markdown on stdout
"""

from __future__ import annotations

from sketchlab import zoo

SHOWN = ("rec@1", "ret@1", "heal10_rec@1", "heal30_rec@1", "ddpm_rec@1", "ddim30_rec@1",
         "test_accuracy", "live_components", "nmi_component_category", "valid_loss")


def cell(card: dict) -> str:
    metrics, bars = card.get("metrics", {}), card.get("bars", {})
    parts = []
    for key in SHOWN:
        if metrics.get(key) is None:
            continue
        value = metrics[key]
        text = f"{key} {value:.3f}" if isinstance(value, float) else f"{key} {value}"
        if key in bars:
            text += f" ({'meets' if bars[key]['met'] else 'below'} {bars[key]['bar']:g})"
        parts.append(text)
    return "; ".join(parts) or "-"


def main() -> None:
    print("| entry | model | steps | train min* | weights | held-out metrics (bar) |")
    print("|---|---|---:|---:|---:|---|")
    for name in zoo.names():
        c = zoo.read_card(name)
        steps = str(c.get("steps", "-"))
        if c.get("step") and c.get("steps") and c["step"] != c["steps"]:
            steps += f" (best: {c['step']})"
        print(f"| `{name}` | {c['model']} | {steps} | {c.get('train_minutes', '-')} "
              f"| {c['weights']['bytes'] / 1e6:.1f} MB {c['weights']['dtype']} | {cell(c)} |")


if __name__ == "__main__":
    main()
