"""Write study 2's curated vocabulary data/ontology_vocabulary.yaml (tracked by data.dvc) from its
canonical lists, or check that the file still loads (--check). Regenerate only on purpose."""
from pathlib import Path

from modules.core.stage import run, stage_args
from modules.studies.ontology.vocabulary import load_vocabulary, write_vocabulary

TARGET = Path("data/ontology_vocabulary.yaml")


def main() -> None:
    args = stage_args(__doc__, check={"action": "store_true", "help": "verify instead of writing"})
    if args.check:
        vocab = load_vocabulary(TARGET)
        print(f"{TARGET}: {len(vocab.concepts)} concepts, {len(vocab.adjectives)} adjectives in "
              f"{len(vocab.properties)} families, {len(vocab.entities)} entities")
    else:
        print(f"wrote {write_vocabulary(TARGET)}")


if __name__ == "__main__":
    run(main)
