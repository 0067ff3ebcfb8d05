"""A small labelled task built honestly from the bundled corpus: which source is a passage from?

    .venv/bin/python assets/tasks/build_source_task.py

Labels are the provenance recorded by assets/build_corpus.py (`*.labels`, one per passage):
`bible` (King James Version) or `shakespeare`. Nothing is annotated by hand or by a model.
Fine-tuning data come from the corpus's training split (a class-balanced sample), evaluation
data from its evaluation split (all of it, with its natural class balance), so no passage is
in both. Passages are cut to their first 40 words to make the task less trivial and faster.
"""

import random
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE.parent / "corpus"
WORDS = 40
TRAIN_PER_CLASS = 1000


def rows(split: str) -> list[tuple[str, str]]:
    texts = (CORPUS / f"{split}.txt").read_text(encoding="utf-8").splitlines()
    labels = (CORPUS / f"{split}.labels").read_text(encoding="utf-8").splitlines()
    assert len(texts) == len(labels), split
    return [(" ".join(t.split()[:WORDS]), y) for t, y in zip(texts, labels)]


def write(path: Path, data: list[tuple[str, str]]) -> Counter:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("text\tlabel\n")
        for text, label in data:
            handle.write(f"{text.replace(chr(9), ' ')}\t{label}\n")
    return Counter(label for _, label in data)


def main() -> None:
    rng = random.Random(20240301)
    train = rows("train")
    by_class = {c: [r for r in train if r[1] == c] for c in sorted({r[1] for r in train})}
    sample = [r for c in by_class for r in rng.sample(by_class[c], TRAIN_PER_CLASS)]
    rng.shuffle(sample)
    counts = {"train": write(HERE / "source" / "train.tsv", sample), "eval": write(HERE / "source" / "eval.tsv", rows("eval"))}
    for split, c in counts.items():
        total = sum(c.values())
        print(split, total, {k: f"{v} ({100 * v / total:.1f}%)" for k, v in sorted(c.items())})


if __name__ == "__main__":
    main()
