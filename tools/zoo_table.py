"""The README's table of the pretrained zoo, from the installed entries' cards.

    python tools/zoo_table.py            # Markdown on stdout
"""

from __future__ import annotations

from sketchlab import zoo

def main() -> None:
    print("| entry | model | steps | train min* | weights | held-out metrics (bar) |")
    print("|---|---|---:|---:|---:|---|")
    for name in zoo.names():
        c = zoo.read_card(name)
        steps = str(c.get("steps", "-"))
        if c.get("step") and c.get("steps") and c["step"] != c["steps"]:
            steps += f" (best: {c['step']})"
        print(f"| `{name}` | {c['model']} | {steps} | {c.get('train_minutes', '-')} "
              f"| {c['weights']['bytes'] / 1e6:.1f} MB {c['weights']['dtype']} | {zoo.summary(c)} |")


if __name__ == "__main__":
    main()
