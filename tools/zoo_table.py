"""The README's table of the pretrained zoo, from the installed entries' cards.

    python tools/zoo_table.py            # Markdown on stdout
"""

from __future__ import annotations

from sketchlab import zoo


def main() -> None:
    print(zoo.markdown_table(), end="")


if __name__ == "__main__":
    main()
