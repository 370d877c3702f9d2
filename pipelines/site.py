"""The lab's front page: reports/index.html, each report rendered to HTML, the DVC plots page."""
from pathlib import Path

from modules.core.site import build_site
from modules.core.stage import run, stage_args


def main() -> None:
    args = stage_args(__doc__, "reports", repo={"default": ".", "help": "the repository (for dvc plots show)"})
    print(f"wrote {build_site(Path(args.repo), Path(args.reports))}")


if __name__ == "__main__":
    run(main)
